"""Seconds of one validation pass (`aimass.evaluation.evaluate`) over random scores, with and without the top-K
lists that only coverage needs (a training loop's validation and the promotion gate read NDCG and recall).

    python benchmarks/validation_cost.py                     # 512 users x 300,000 items
    python benchmarks/validation_cost.py --items 50000
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=300_000)
    ap.add_argument("--users", type=int, default=512)
    a = ap.parse_args()
    import torch  # noqa: F401 - loaded in every training process, and top_k uses it when it is

    from aimass.evaluation import evaluate

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((256, a.items + 1)).astype(np.float32)  # one batch's, reused for each batch
    histories = [rng.integers(1, a.items + 1, 20) for _ in range(a.users)]
    targets = rng.integers(1, a.items + 1, a.users)
    print("| coverage | seconds (3 runs) |\n|---|---|")
    for coverage in (True, False):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            evaluate(lambda h: scores[: len(h)], histories, targets, a.items, coverage=coverage)
            times.append(time.perf_counter() - t)
        print(f"| {'on' if coverage else 'off'} | {', '.join(f'{x:.2f}' for x in times)} |")


if __name__ == "__main__":
    main()
