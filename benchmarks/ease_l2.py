"""EASE's regulariser and recency decay on a registered-from-path dataset: validation and test NDCG@10 (full
ranking, seen items excluded) of an in-process fit for each `l2_scale` x `decay`, with the fit's time.

    .venv/bin/python benchmarks/ease_l2.py --data ../shared/data/ml-1m-seq --format ml1m-seq
    .venv/bin/python benchmarks/ease_l2.py --data ../shared/data/lastfm-2k --format lastfm --scales 1 20 100

The data is read from its path (research licence: never copied into the repository)."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import aimass
from aimass.evaluation import evaluate, make_splits
from aimass.zoo.ease import EASE

ap = argparse.ArgumentParser()
ap.add_argument("--data", type=Path, required=True)
ap.add_argument("--format", required=True)
ap.add_argument("--scales", type=float, nargs="+", default=[0.05, 0.25, 1.0, 4.0])
ap.add_argument("--decays", type=float, nargs="+", default=[1.0])
a = ap.parse_args()

with tempfile.TemporaryDirectory() as d:
    s = aimass.Settings(home=Path(d) / "home")
    aimass.datasets.register("bench", a.data.expanduser().resolve(), a.format, settings=s)
    sp = make_splits(aimass.datasets.load("bench", settings=s).interactions, seed=0)
print(f"{a.data.name}: {sp.n_items} items, {len(sp.train_sequences)} users\n")
print("| l2_scale | decay | lambda | fit s | val NDCG@10 | test NDCG@10 | test HR@10 |\n|---|---|---|---|---|---|---|")
for scale in a.scales:
    for decay in a.decays:
        t0 = time.perf_counter()
        est = EASE(l2_scale=scale, decay=decay).fit(sp.train_sequences, sp.n_items)
        took = time.perf_counter() - t0
        v = evaluate(est.score, list(sp.val_histories), np.asarray(sp.val_targets), sp.n_items, ks=(10,))
        t = evaluate(est.score, list(sp.test_histories), np.asarray(sp.test_targets), sp.n_items, ks=(10,))
        print(f"| {scale} | {decay} | {est.l2_:.1f} | {took:.1f} | {v['ndcg@10']:.4f} | {t['ndcg@10']:.4f} | "
              f"{t['recall@10']:.4f} |", flush=True)
