"""One two-tower training step (sampled softmax, 1,024 shared negatives, batch 256, histories of 8) with the item
table's gradients dense (every step writes and updates the whole table, as before) and sparse (the family's
default for sampled losses: only the rows the step read), at several catalogue sizes.

    .venv/bin/python benchmarks/two_tower_step.py
    .venv/bin/python benchmarks/two_tower_step.py --items 100000 1000000 --steps 12
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from aimass.zoo.two_tower import TwoTower, TwoTowerConfig


def step_ms(n_items: int, sparse: bool, steps: int) -> float:
    cfg = TwoTowerConfig(max_len=8, loss="sampled_softmax")
    torch.manual_seed(0)
    module = TwoTower.build_module(cfg, n_items)
    module.item_emb.sparse = sparse  # dense: the table's gradient is a full [n_items + 1, D] tensor
    optimizer = TwoTower.make_optimizer(module, cfg)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps):
        batch = (torch.randint(1, n_items + 1, (256, 8), generator=g),
                 torch.randint(1, n_items + 1, (256,), generator=g))
        t = time.perf_counter()
        TwoTower.train_step(module, batch, cfg, optimizer, step=i, generator=g)
        times.append(time.perf_counter() - t)
    return float(np.median(times[2:]) * 1000)  # the first steps allocate the optimizer's state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--steps", type=int, default=12)
    a = ap.parse_args()
    print(f"\ntwo-tower train step, {torch.get_num_threads()} torch threads, median of {a.steps - 2} steps\n")
    print("| items | dense gradients ms/step | sparse gradients ms/step | speed-up |")
    print("|---|---|---|---|")
    for n in a.items:
        dense, sparse = step_ms(n, False, a.steps), step_ms(n, True, a.steps)
        print(f"| {n:,} | {dense:.1f} | {sparse:.1f} | {dense / sparse:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
