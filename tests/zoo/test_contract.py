"""Every family of the zoo passes the executable family contract (aimass.zoo.check_family)."""
from __future__ import annotations

import pytest

from aimass.zoo import families, family_class
from aimass.zoo.contract import check_family

# small enough that the contract's several fits take seconds; every other param is the family's default
SMALL = {"sasrec": {"dim": 16, "n_blocks": 1, "max_len": 12, "epochs": 2, "batch_size": 32},
         "two-tower": {"dim": 16, "max_len": 12, "epochs": 2, "batch_size": 32},
         "mult-vae": {"hidden": 32, "latent": 8, "epochs": 2, "batch_size": 32}}


@pytest.mark.parametrize("family", families())
def test_family_passes_the_contract(family):
    done = check_family(family_class(family), SMALL.get(family))
    assert "save/load gives identical scores" in done and "invalid params refused before any work" in done
    assert ("time budget respected" in done) == family_class(family).is_torch


def test_a_sasrec_ensemble_passes_the_contract():
    done = check_family(family_class("sasrec"), {**SMALL["sasrec"], "members": 2})
    assert "save/load gives identical scores" in done and "time budget respected" in done


def test_the_contract_catches_a_family_that_breaks_it(monkeypatch):
    """The contract can fail: a family whose scores depend on the rest of the batch is caught and named."""
    import aimass.zoo as zoo

    class Leaky(family_class("popularity")):
        def score(self, histories):
            s = super().score(histories)
            s[:, 1:] += len(histories)  # what else is in the batch leaks into every user's scores
            return s

    with pytest.raises(AssertionError, match="is not the zoo's 'popularity'"):
        check_family(Leaky)  # not registered under its name
    original = zoo.family_class
    monkeypatch.setattr(zoo, "family_class", lambda name: Leaky if name == "popularity" else original(name))
    with pytest.raises(AssertionError, match="scores depend on the batch"):
        check_family(Leaky)
