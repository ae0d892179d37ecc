"""Every model family on MovieLens-1M under the `ml1m-seq` protocol, trained through Ray Train and tracked in
MLflow exactly as users run it. Prints one table.

    .venv/bin/python benchmarks/zoo_ml1m.py --data ../shared/data --families popularity itemknn sasrec two-tower \
        --workers 1 --time-budget-min 60
    .venv/bin/python benchmarks/zoo_ml1m.py --families sasrec --workers 1 2 --epochs 15   # 1 vs 2 workers

The data is read from its path (research licence: never copied into the repository)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import aimass

p = argparse.ArgumentParser()
p.add_argument("--data", default=os.environ.get("AIMASS_BENCH_DATA", "../shared/data"))
p.add_argument("--home", default=".aimass-bench")
p.add_argument("--families", nargs="+", default=["popularity", "itemknn", "sasrec", "two-tower"])
p.add_argument("--workers", type=int, nargs="+", default=[1])
p.add_argument("--time-budget-min", type=float, default=60.0)
p.add_argument("--epochs", type=int, default=None, help="a fixed number of epochs (e.g. to compare 1 and 2 "
               "workers on the same optimisation path); the time budget still applies")
p.add_argument("--param", action="append", default=[], help="family.key=value")
p.add_argument("--json-out", default=None)
args = p.parse_args()

settings = aimass.Settings(home=args.home)
data = Path(args.data)
aimass.datasets.register("ml1m", data / "ml-1m-seq", "ml1m-seq", items=data / "ml-1m-meta" / "movies.dat",
                         settings=settings)
overrides: dict[str, dict] = {}
for kv in args.param:
    key, _, value = kv.partition("=")
    fam, _, name = key.partition(".")
    overrides.setdefault(fam, {})[name] = json.loads(value) if value[:1].isdigit() or value in (
        "true", "false", "null") else value

rows = []
for family in args.families:
    for workers in args.workers:
        r = aimass.train(family, "ml1m", overrides.get(family, {}), workers=workers, epochs=args.epochs,
                         time_budget_min=args.time_budget_min, progress=True, settings=settings)
        m = r.metrics
        rows.append({"family": family, "workers": workers, "val_ndcg@10": m["best_val_ndcg@10"],
                     "val_recall@10": m["best_val_recall@10"], "test_ndcg@10": m["test_ndcg@10"],
                     "test_recall@10": m["test_recall@10"], "wall_s": r.wall_time_s, "epochs": r.epochs,
                     "best_epoch": r.best_epoch, "params": r.n_parameters, "samples_per_s": r.samples_per_s,
                     "run_id": r.run_id})

cols = ["family", "workers", "val_ndcg@10", "val_recall@10", "test_ndcg@10", "test_recall@10", "wall_s",
        "epochs", "best_epoch", "params", "samples_per_s", "run_id"]
fmt = {float: "{:.4f}"}
print("| " + " | ".join(cols) + " |")
print("|" + "---|" * len(cols))
for r in rows:
    cells = [f"{r[c]:.4f}" if isinstance(r[c], float) and c not in ("wall_s", "samples_per_s")
             else f"{r[c]:.0f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
    print("| " + " | ".join(cells) + " |")
if args.json_out:
    Path(args.json_out).write_text(json.dumps(rows, indent=2))
