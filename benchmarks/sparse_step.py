"""One training step of each family whose item table takes sparse gradients under a sampled loss (sampled
softmax, 1,024 shared negatives) with that table's gradients dense (every step writes and updates the whole
table, as before) and sparse (the families' default for sampled losses: only the rows the step read), at several
catalogue sizes. Two-tower: batch 256, histories of 8; SASRec: its default batch of 64 users, 20 positions each,
one network (no budget: no ensemble), fp32.

    .venv/bin/python benchmarks/sparse_step.py
    .venv/bin/python benchmarks/sparse_step.py --items 100000 1000000 --steps 12 --families sasrec
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from aimass.zoo.sasrec import SASRec
from aimass.zoo.two_tower import TwoTower

FAMILIES = {"two-tower": TwoTower, "sasrec": SASRec}


def _config(family: str, n_items: int):
    if family == "two-tower":
        return TwoTower.Config(max_len=8, loss="sampled_softmax").resolve(n_items, [9])
    return SASRec.Config(max_len=20, loss="sampled_softmax", bf16=False).resolve(n_items, [21])


def _batch(family: str, n_items: int, cfg, g: torch.Generator):
    if family == "two-tower":
        return (torch.randint(1, n_items + 1, (256, 8), generator=g),
                torch.randint(1, n_items + 1, (256,), generator=g))
    seq = torch.randint(1, n_items + 1, (cfg.batch_size, cfg.max_len + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def step_ms(family: str, n_items: int, sparse: bool, steps: int) -> float:
    est, cfg = FAMILIES[family], _config(family, n_items)
    torch.manual_seed(0)
    module = est.build_module(cfg, n_items)
    module.item_emb.sparse = sparse  # dense: the table's gradient is a full [n_items + 1, D] tensor
    optimizer = est.make_optimizer(module, cfg)
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps):
        batch = _batch(family, n_items, cfg, g)
        t = time.perf_counter()
        est.train_step(module, batch, cfg, optimizer, step=i, generator=g)
        times.append(time.perf_counter() - t)
    return float(np.median(times[2:]) * 1000)  # the first steps allocate the optimizer's state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    a = ap.parse_args()
    print(f"\ntrain step with a sampled softmax, {torch.get_num_threads()} torch threads, median of {a.steps - 2} "
          "steps\n")
    print("| family | items | dense gradients ms/step | sparse gradients ms/step | speed-up |")
    print("|---|---|---|---|---|")
    for family in a.families:
        for n in a.items:
            dense, sparse = step_ms(family, n, False, a.steps), step_ms(family, n, True, a.steps)
            print(f"| {family} | {n:,} | {dense:.1f} | {sparse:.1f} | {dense / sparse:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
