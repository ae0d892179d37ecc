"""Test NDCG@10 of the count families on a generated repeat-heavy log (grocery-like: 1,500 users of 20 events, 60%
of them re-buys of the user's own past items, the rest drawn from a Zipf catalogue of 2,000), as
`aimass.evaluation` reports it. Run it with PYTHONPATH at an older platform folder to compare evaluation rules.

    python benchmarks/repeat_targets.py
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def main() -> None:
    warnings.filterwarnings("ignore")
    from aimass.evaluation import evaluate, make_splits
    from aimass.zoo.ease import EASE
    from aimass.zoo.item_knn import ItemKNN
    from aimass.zoo.popularity import Popularity

    rng = np.random.default_rng(0)
    p = 1 / np.arange(1, 2001) ** 0.8
    p /= p.sum()
    rows = []
    for u in range(1500):
        seq: list[int] = []
        for t in range(20):
            item = seq[rng.integers(len(seq))] if seq and rng.random() < 0.6 else int(rng.choice(2000, p=p)) + 1
            seq.append(item)
            rows.append((u, item, t))
    sp = make_splits(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))
    repeat = np.mean([t in set(h.tolist()) for h, t in zip(sp.test_histories, sp.test_targets, strict=True)])
    print(f"test targets already in the user's history: {repeat:.2f}\n\n| family | test NDCG@10 |\n|---|---|")
    for est in (Popularity(), ItemKNN(), EASE()):
        est.fit(sp.train_sequences, sp.n_items)
        got = evaluate(est.score, sp.test_histories, sp.test_targets, sp.n_items)
        print(f"| {est.family} | {got['ndcg@10']:.4f} |")


if __name__ == "__main__":
    main()
