"""The model zoo: one self-contained module per family. Families share only losses (_losses), metrics
(aimass.evaluation) and this registry.

Every family is an estimator in scikit-learn's style (``__init__`` stores params, ``fit`` returns self,
learned state ends in ``_``) with ``score(histories) -> [n, n_items+1]``, ``save``/``load`` (no pickle), and
the hooks a distributed job drives:
- count families (``is_torch = False``): ``resolve_config``, ``sufficient_stats`` (additive over shards of
  users), ``adopt_stats``;
- neural families (``is_torch = True``): ``resolve_config``, ``build_module``, ``training_data``,
  ``make_optimizer``, ``train_step``, ``score_module``, ``adopt``; optionally ``batch_sampler(dataset, cfg,
  world, rank, seed)`` for the family's own batches of each rank (else shuffled batches of a
  DistributedSampler).
``resolve_config(n_items, sequence_lengths, time_budget_s=None)`` fills what the data (and the job's budget)
decide; the driver and every worker call it with the same arguments, so they build the same network.
Any family may also say one worker's peak memory, ``memory_bytes(cfg, n_items, sequence_lengths)``, when the
catalogue decides it (EASE, Mult-VAE): a job this machine cannot hold is refused before it starts.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated

from pydantic import Field

# Every family's ``seed``: numpy seeds a worker with seed + rank (np.random.seed takes [0, 2**32)) and
# SeedSequence / default_rng refuse negatives, so a seed outside this range would fail deep in a job with an
# error that does not name it.
Seed = Annotated[int, Field(ge=0, lt=2**32, description="Random seed, 0 <= seed < 2**32")]
# Upper bounds of the neural families' sizes: far above any useful value, they turn an absurd one (dim=1e20) into
# a refusal naming it before the run exists, not an overflow deep in the job that leaves a FAILED run behind.
MAX_DIM = 2**14  # a layer's width
MAX_LEN = 2**17  # positions of a history
MAX_SIZE = 2**24  # a batch, an epoch count, sampled negatives
MAX_STEPS = 2**40  # optimiser steps (warm-up, annealing), logits a step

_FAMILIES = {
    "popularity": "aimass.zoo.popularity:Popularity",
    "itemknn": "aimass.zoo.item_knn:ItemKNN",
    "ease": "aimass.zoo.ease:EASE",
    "sasrec": "aimass.zoo.sasrec:SASRec",
    "two-tower": "aimass.zoo.two_tower:TwoTower",
    "mult-vae": "aimass.zoo.mult_vae:MultVAE",
    "search": "aimass.zoo.search:Search",
}


def families() -> list[str]:
    return list(_FAMILIES)


def family_class(name: str):
    from aimass.errors import InvalidInputError

    if name not in _FAMILIES:
        raise InvalidInputError(f"unknown model family {name!r}; known families: {', '.join(_FAMILIES)}")
    module, cls = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_estimator(path: str | Path, family: str | None = None):
    """A fitted estimator from a folder written by its ``save``."""
    if family is None:
        family = json.loads((Path(path) / "config.json").read_text())["family"]
    return family_class(family).load(path)
