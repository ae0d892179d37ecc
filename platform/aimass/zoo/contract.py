"""The executable contract every family passes (scikit-learn's ``check_estimator``): ``check_family(cls)``
raises AssertionError naming the first broken promise, and returns the names of the checks it ran.

It asks only what serving, training jobs, the registry and compression rely on, so a ranking or search
family that keeps the estimator interface of ``aimass.zoo`` passes it too: construct with params, ``fit``
(sequences of dense item ids, ``n_items``) returns self, ``score(histories) -> [n, n_items + 1]``,
``save``/``load`` with no pickle."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

N_ITEMS = 30


def contract_data(n_users: int = 80, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train sequences, held-out histories) on a catalogue of N_ITEMS where item i is followed by i + 1:
    tiny, learnable, and with empty and single-item histories among the held-out ones."""
    rng = np.random.default_rng(seed)
    seqs = [(rng.integers(0, N_ITEMS) + np.arange(rng.integers(3, 12))) % N_ITEMS + 1 for _ in range(n_users)]
    held = [s[:-1] for s in seqs[:12]] + [np.zeros(0, np.int64), np.array([5])]
    return seqs, held


class _Untouchable(list):
    """Training data that must not be read: a fit with bad params has to refuse before any work."""

    def _touched(self, *_):
        raise AssertionError("fit read its training data before refusing invalid params")

    __iter__ = __len__ = __getitem__ = _touched


def check_family(cls, params: dict | None = None, *, time_budget_s: float = 1.0) -> list[str]:
    """Run every check on family ``cls`` with ``params`` (keep them small: the checks fit several times)."""
    from aimass.zoo import family_class

    params = dict(params or {})
    train, held = contract_data()
    done = []

    def fit(**extra):
        return cls(**{**params, **extra}).fit(train, N_ITEMS, progress=False)

    # registered under its name, with a typed config that refuses unknown keys
    assert family_class(cls.family) is cls, f"{cls.__name__} is not the zoo's {cls.family!r}"
    assert cls.Config.model_config.get("extra") == "forbid", "Config must refuse unknown params"
    assert "seed" in cls.Config.model_fields, "Config must take a seed"
    done.append("registered")

    est = cls(**params)
    assert est.get_params() == params, "get_params must return the constructor's params"
    assert not _learned(est), f"learned state before fit: {_learned(est)}"
    assert est.fit(train, N_ITEMS, progress=False) is est, "fit must return self"
    assert _learned(est), "fit left no learned state (attributes ending in '_')"
    done += ["fit returns self", "learned state only after fit"]

    scores = est.score(held)
    assert isinstance(scores, np.ndarray) and scores.shape == (len(held), N_ITEMS + 1), \
        f"score shape {getattr(scores, 'shape', None)}, expected {(len(held), N_ITEMS + 1)}"
    assert np.isneginf(scores[:, 0]).all(), "column 0 (padding) must score -inf"
    assert np.isfinite(scores[:, 1:]).all(), "item scores must be finite"
    done.append("score shape, column 0 at -inf")

    alone = np.stack([est.score([h])[0] for h in held])
    reordered = est.score(held[::-1])[::-1]
    np.testing.assert_allclose(alone, scores, rtol=1e-5, atol=1e-5, err_msg="scores depend on the batch")
    np.testing.assert_allclose(reordered, scores, rtol=1e-5, atol=1e-5, err_msg="scores depend on the batch")
    done.append("scores independent of the batch")

    if hasattr(est, "item_table"):  # a vector family: serving may score it with a (nearest-neighbour) index
        table, users = est.item_table(), est.user_vectors(held)
        assert table.shape[0] == N_ITEMS + 1 and users.shape == (len(held), table.shape[1]), \
            f"item_table {table.shape} and user_vectors {users.shape} do not fit {N_ITEMS} items"
        np.testing.assert_allclose((users @ table.T)[:, 1:], scores[:, 1:], rtol=1e-4, atol=1e-4,
                                   err_msg="score must equal user_vectors @ item_table.T")
        done.append("scores are user vectors times the item table")

    again, other = fit(seed=7).score(held), fit(seed=7).score(held)
    np.testing.assert_array_equal(again, other, err_msg="the same seed must give the same scores")
    done.append("same seed, same scores")

    with tempfile.TemporaryDirectory() as d:
        est.save(Path(d) / "model")
        assert not list(Path(d).rglob("*.pkl")) and not list(Path(d).rglob("*.pickle")), "save must not pickle"
        loaded = cls.load(Path(d) / "model")
    np.testing.assert_array_equal(loaded.score(held), scores, err_msg="save/load changed the scores")
    done.append("save/load gives identical scores")

    if "time_budget_s" in cls.Config.model_fields:
        many = {"epochs": 10**6} if "epochs" in cls.Config.model_fields else {}
        t0 = time.perf_counter()
        fit(time_budget_s=time_budget_s, **many)
        took = time.perf_counter() - t0
        # the budget is checked before every step: past it by one step and one validation at most
        assert took < time_budget_s * 1.5 + 2.0, f"time budget {time_budget_s}s, fit took {took:.1f}s"
        done.append("time budget respected")
    else:
        assert not getattr(cls, "is_torch", False), "an iterative family must take time_budget_s"

    for bad in ({"no_such_param": 1}, {"seed": "not a number"}):
        try:  # _Untouchable raises AssertionError, which is no ValueError: reading the data fails the check
            cls(**{**params, **bad}).fit(_Untouchable(), N_ITEMS, progress=False)
        except ValueError:  # pydantic's ValidationError and aimass's InvalidInputError are ValueErrors
            continue
        raise AssertionError(f"fit accepted invalid params {bad}")
    done.append("invalid params refused before any work")
    return done


def _learned(est) -> list[str]:
    return sorted(k for k in vars(est) if k.endswith("_") and not k.startswith("_"))
