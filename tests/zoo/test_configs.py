"""What every family's Config refuses before any work: seeds numpy cannot take, and infinite or NaN numbers
(which pass a field's bounds: gt=0 lets inf through). And what a job's worker and an in-process fit do with
the seeds and the NaN models that pass."""
from __future__ import annotations

import sys
import types
import typing

import numpy as np
import pydantic
import pytest

from aimass.errors import BackendError
from aimass.zoo import family_class
from aimass.zoo.contract import N_ITEMS, _Untouchable, contract_data

FAMILIES = ["popularity", "itemknn", "ease", "sasrec", "two-tower", "mult-vae"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_numpy_cannot_take_is_refused_naming_seed_before_any_work(family, seed):
    cls = family_class(family)
    with pytest.raises(pydantic.ValidationError, match="seed"):
        cls.Config(seed=seed)
    with pytest.raises(ValueError, match="seed"):  # _Untouchable fails the test if fit reads the data first
        cls(seed=seed).fit(_Untouchable(), N_ITEMS, progress=False)
    assert cls.Config(seed=2**32 - 1).seed == 2**32 - 1


def _float_fields(cls) -> list[str]:
    def is_float(ann) -> bool:
        return ann is float or float in typing.get_args(ann)

    return [name for name, f in cls.Config.model_fields.items() if is_float(f.annotation)]


@pytest.mark.parametrize("family", FAMILIES)
def test_infinite_and_nan_numbers_are_refused_by_every_config(family):
    cls = family_class(family)
    assert cls.Config.model_config.get("extra") == "forbid"
    fields = _float_fields(cls)
    if cls.is_torch:
        assert {"lr", "time_budget_s"} <= set(fields)
    for name in fields:
        for bad in (float("inf"), float("nan")):
            with pytest.raises(pydantic.ValidationError, match=name):
                cls.Config(**{name: bad})


@pytest.mark.parametrize("family", ["sasrec", "two-tower", "mult-vae"])
def test_an_infinite_budget_or_learning_rate_is_refused_by_fit(family):
    cls = family_class(family)
    for bad in ({"lr": float("inf")}, {"time_budget_s": float("inf")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            cls(**bad).fit(_Untouchable(), N_ITEMS, progress=False)


def test_a_fit_whose_every_validation_diverged_fails_saying_so():
    """lr=inf once gave a NaN model without a word: with validation NaN at every epoch no epoch was ever
    the best, and the fit refuses as a job does rather than return the last (NaN) weights."""
    cls = family_class("sasrec")
    train, held = contract_data()
    est = cls(dim=16, n_blocks=1, max_len=12, epochs=2, batch_size=32)

    def nan_scores(module, histories, cfg, batch_size=256):
        s = np.full((len(histories), N_ITEMS + 1), np.nan, dtype=np.float32)
        s[:, 0] = -np.inf
        return s

    est.score_module = nan_scores
    valid = (held[:12], np.array([int(s[-1]) for s in train[:12]]))
    with pytest.raises(BackendError, match="sasrec diverged: its validation figures were NaN at every one of its 2"):
        est.fit(train, N_ITEMS, valid=valid)
    assert not hasattr(est, "module_")


def test_a_worker_seeds_numpy_with_the_largest_seed_on_any_rank(monkeypatch):
    """np.random.seed takes [0, 2**32): rank 1 of a job seeded 2**32 - 1 must not fail there."""
    import torch

    from aimass.training import _loop

    class Seeded(Exception):
        pass

    def reached(*_):
        raise Seeded

    ray_train = types.ModuleType("ray.train")
    ray_train.get_context = lambda: types.SimpleNamespace(get_world_rank=lambda: 1, get_world_size=lambda: 2)
    ray_train.get_checkpoint = reached  # called right after the seeding: where this test stops the worker
    ray = types.ModuleType("ray")
    ray.train = ray_train
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.train", ray_train)
    seqs, _ = contract_data()
    config = {"data": {"n_items": N_ITEMS, "train": seqs}, "seed": 2**32 - 1, "family": "popularity",
              "params": {"seed": 2**32 - 1}, "threads_per_worker": torch.get_num_threads()}
    state = np.random.get_state()
    try:
        with pytest.raises(Seeded):
            _loop.worker_loop(config)
    finally:
        np.random.set_state(state)
