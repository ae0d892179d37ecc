"""Test NDCG@10 of item-kNN and EASE on one generated date-only export (2,000 users rating 8 of a 300-item
catalogue whose ids follow popularity, several ratings a day), registered from two files that differ only in row
order: sorted by user then item (as MovieLens-10M and later are), and shuffled. Run it with PYTHONPATH at an
older platform folder to compare how registration orders a user's rows of one timestamp.

    python benchmarks/tied_times.py
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    warnings.filterwarnings("ignore")
    from aimass.datasets._formats import read
    from aimass.evaluation import evaluate, make_splits
    from aimass.zoo.ease import EASE
    from aimass.zoo.item_knn import ItemKNN

    rng = np.random.default_rng(0)
    p = 1 / np.arange(1, 301)
    p /= p.sum()
    rows = [(u, int(i), 1_600_000_000 + 86_400 * int(d))
            for u in range(1, 2001)
            for i, d in zip(rng.choice(300, 8, replace=False, p=p) + 1, np.sort(rng.integers(0, 4, 8)), strict=True)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    tmp = Path(tempfile.mkdtemp())
    print("| file order | item-kNN test NDCG@10 | EASE test NDCG@10 |\n|---|---|---|")
    for name, frame in (("by user, then item", df.sort_values(["user_id", "item_id"])),
                        ("shuffled", df.sample(frac=1, random_state=0))):
        frame.to_csv(tmp / "x.csv", index=False)
        sp = make_splits(read(tmp / "x.csv", "csv").interactions)
        got = []
        for est in (ItemKNN(), EASE()):
            est.fit(sp.train_sequences, sp.n_items)
            got.append(evaluate(est.score, sp.test_histories, sp.test_targets, sp.n_items)["ndcg@10"])
        print(f"| {name} | {got[0]:.4f} | {got[1]:.4f} |")


if __name__ == "__main__":
    main()
