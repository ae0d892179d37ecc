"""Seconds of a full-ranking test (`aimass.evaluation.evaluate`, coverage included) of a popularity model over a
Zipf catalogue of 135,000 items (or ITEMS), scaled to 150,000 users: what a job's final test costs on a large
sparse log. Run it with PYTHONPATH at an older platform folder to compare.

    python benchmarks/evaluation_large.py [USERS] [ITEMS]     # users timed (default 4096), items (135000)
"""
from __future__ import annotations

import sys
import time

import numpy as np


def main() -> None:
    from aimass.evaluation import evaluate
    from aimass.zoo.popularity import Popularity

    users = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 135_000
    rng = np.random.default_rng(0)
    p = 1 / np.arange(1, n + 1)
    p /= p.sum()
    est = Popularity()
    est.fit([rng.choice(n, 7, p=p) + 1 for _ in range(3000)], n)
    histories = [rng.choice(n, 6, p=p) + 1 for _ in range(users)]
    targets = rng.choice(n, users, p=p) + 1
    t = time.perf_counter()
    evaluate(est.score, histories, targets, n)
    took = time.perf_counter() - t
    print(f"| items | users timed | seconds | scaled to 150,000 users |\n|---|---|---|---|\n| {n:,} | {users:,} | "
          f"{took:.2f} | {took * 150_000 / users:.0f} s |")


if __name__ == "__main__":
    main()
