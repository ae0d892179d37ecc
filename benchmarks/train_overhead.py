"""What a training job costs beyond its own work: the same tiny jobs (the demo dataset, 60 users and 120 tracks)
in this process (Ray Train's local mode, `workers=0`) and on 1 and 2 Ray Train workers of a local cluster.
The first Ray job also pays the cluster's start, reported apart.

    .venv/bin/python benchmarks/train_overhead.py [--repeats 3] [--workers 0 1 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

TINY = {"dim": 16, "max_len": 20, "epochs": 2, "batch_size": 32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()

    import aimass
    from aimass.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(home=Path(tmp) / "home")
        cfg = aimass.datasets.DemoConfig(users=60, tracks=120)
        inter, items = aimass.datasets.generate_demo(Path(tmp) / "demo", cfg)
        aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
        rows, first = [], None
        for workers in a.workers:
            for family in ("popularity", "sasrec"):
                times = []
                for _ in range(a.repeats + (1 if workers and first is None else 0)):
                    t0 = time.perf_counter()
                    aimass.train(family, "demo@v1", TINY if family == "sasrec" else None, workers=workers,
                                 progress=False, settings=s)
                    took = time.perf_counter() - t0
                    if workers and first is None:
                        first = took  # the cluster's start included
                        continue
                    times.append(took)
                rows.append((workers, family, np.median(times), min(times), max(times)))
        import ray

        ray.shutdown()
    print(f"first Ray job (local cluster start included): {first:.1f} s\n" if first else "")
    print("| workers | family | median s | min s | max s |\n|---|---|---|---|---|")
    for workers, family, med, lo, hi in rows:
        where = "0 (in process)" if workers == 0 else str(workers)
        print(f"| {where} | {family} | {med:.2f} | {lo:.2f} | {hi:.2f} |")


if __name__ == "__main__":
    main()
