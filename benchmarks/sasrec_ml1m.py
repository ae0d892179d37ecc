"""SASRec on MovieLens-1M under the ml1m-seq protocol (see ../shared/data/README.md).

    PYTHONPATH=platform python benchmarks/sasrec_ml1m.py [DATA_DIR] [--time-budget-min 60] [--param dim=128]

DATA_DIR is the ml-1m-seq folder itself; it defaults to $AIMASS_BENCH_DATA/ml-1m-seq, AIMASS_BENCH_DATA being the
shared-data root (as for the tests and the other ml1m benchmarks), else ../shared/data/ml-1m-seq relative to the
repository root.
The data are licensed for research only: they are read from there, never copied.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Passive OpenMP waits: when another process holds one of the 2 cores, spinning threads made a training
# step 3.5x slower (3.0 s vs 0.87 s measured); must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from aimass.evaluation import evaluate  # noqa: E402
from aimass.zoo.sasrec import SASRec, SASRecConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# AIMASS_BENCH_DATA is the shared-data root (tests/conftest.py, compress_ml1m.py, zoo_ml1m.py): ml-1m-seq is in it
DEFAULT_DATA = Path(os.environ.get("AIMASS_BENCH_DATA", ROOT.parent / "shared" / "data")) / "ml-1m-seq"


def read_lines(path: Path) -> list[np.ndarray]:
    return [np.array(line.split(), dtype=np.int64) for line in path.read_text().splitlines()]


def load(data_dir: Path):
    train = read_lines(data_dir / "train_input.txt")
    val_in = read_lines(data_dir / "val_input.txt")
    val_out = np.array([int(x) for x in (data_dir / "val_output.txt").read_text().split()])
    test_out = np.array([int(x) for x in (data_dir / "test_output.txt").read_text().split()])
    index = {tuple(s): u for u, s in enumerate(train)}
    val_users = [index[tuple(s[:-1])] for s in val_in]  # README: each matches exactly one train line
    test_hist = list(train)
    for u, s, o in zip(val_users, val_in, val_out, strict=True):
        test_hist[u] = np.append(s, o)
    n_items = int(max(s.max() for s in train + val_in))
    return train, (val_in, val_out), (test_hist, test_out), n_items


def ndcg_hr(model, histories, targets, n_items: int) -> tuple[float, float]:
    """The platform's own metric (aimass.evaluation): full ranking, history excluded, ties against the target."""
    m = evaluate(model.score, histories, targets, n_items)
    return m["ndcg@10"], m["recall@10"]


def parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(DEFAULT_DATA),
                    help="the ml-1m-seq folder (default: $AIMASS_BENCH_DATA/ml-1m-seq, else ../shared/data/ml-1m-seq)")
    ap.add_argument("--time-budget-min", type=float, default=60.0)
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a SASRecConfig default, e.g. --param dim=128 (JSON values)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", help="directory to save the trained model to")
    ap.add_argument("--json", help="write the result row to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    data_dir = Path(args.data)
    if not (data_dir / "train_input.txt").exists():
        sys.exit(f"ml1m-seq not found at {data_dir} (pass the ml-1m-seq folder, or set AIMASS_BENCH_DATA to the "
                 "shared-data folder that holds it)")
    train, (val_in, val_out), (test_hist, test_out), n_items = load(data_dir)
    params = {k: parse_value(v) for k, v in (p.split("=", 1) for p in args.param)}
    params["time_budget_s"] = args.time_budget_min * 60
    cfg = SASRecConfig(**params).resolve(n_items, [len(s) for s in train])
    print(f"users={len(train)} items={n_items} config={cfg.model_dump_json()}", flush=True)

    t0 = time.perf_counter()
    model = SASRec(**params).fit(train, n_items, valid=(val_in, val_out), progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    v_ndcg, v_hr = ndcg_hr(model, val_in, val_out, n_items)
    t_ndcg, t_hr = ndcg_hr(model, test_hist, test_out, n_items)
    n_params = sum(p.numel() for p in model.module_.parameters())
    epochs = len(model.history_)
    train_s = sum(h["train_time_s"] for h in model.history_)
    row = {"val_ndcg10": v_ndcg, "val_hr10": v_hr, "test_ndcg10": t_ndcg, "test_hr10": t_hr,
           "epochs": epochs, "best_epoch": model.best_epoch_, "wall_s": wall, "params": n_params,
           "samples_per_s": epochs * len(train) / train_s, "overrides": {k: v for k, v in params.items()}}
    print("\n| val NDCG@10 | val HR@10 | test NDCG@10 | test HR@10 | epochs (best) | wall time | params "
          "| samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {v_ndcg:.4f} | {v_hr:.4f} | {t_ndcg:.4f} | {t_hr:.4f} | {epochs} ({model.best_epoch_}) "
          f"| {wall / 60:.1f} min | {n_params:,} | {row['samples_per_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))
    if args.save:
        model.save(args.save)
    return row


if __name__ == "__main__":
    main()
