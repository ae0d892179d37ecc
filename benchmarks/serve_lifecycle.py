"""How long the serving cluster's lifecycle operations take: the first deploy (starting the cluster), a second
endpoint, deleting it, a rolling update of the first (new replica settings: a preflight app, then every replica
replaced) and the shutdown. An item-kNN model on a small demo dataset, so the model's own load time is nothing.

    .venv/bin/python benchmarks/serve_lifecycle.py [--drain 3] [--drain 30]

Each `--drain` value is one run: how long a stopping replica keeps answering (AIMASS_SERVE_DRAIN_S; Ray's own
default is 30 s). Prints one row per run, seconds of wall time per operation."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from aimass.serving._cluster import free_port


def one(drain: float) -> dict[str, float]:
    import ray

    import aimass
    from aimass import registry, serving
    from aimass.settings import Settings

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(home=Path(tmp) / "home", serve_port=free_port(), serve_drain_s=drain)
        inter, items = aimass.datasets.generate_demo(Path(tmp) / "demo", aimass.datasets.DemoConfig(users=60,
                                                                                                     tracks=120))
        aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
        run = aimass.train("itemknn", "demo@v1", workers=1, progress=False, settings=s).run_id
        ray.shutdown()
        v = registry.register(run, "recs", settings=s)
        steps = [("first deploy (starts the cluster)", lambda: serving.deploy(v.ref, "a", settings=s)),
                 ("second endpoint", lambda: serving.deploy(v.ref, "b", settings=s)),
                 ("delete it", lambda: serving.delete("b", settings=s)),
                 ("rolling update", lambda: serving.deploy(
                     v.ref, "a", settings=s.model_copy(update={"serve_max_body_bytes": 70_000}))),
                 ("shutdown", lambda: serving.shutdown(settings=s))]
        try:
            for name, step in steps:
                t0 = time.perf_counter()
                step()
                out[name] = time.perf_counter() - t0
        finally:
            if "shutdown" not in out:
                serving.shutdown(settings=s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drain", type=float, action="append", help="replica drain seconds (repeatable)")
    a = ap.parse_args()
    rows = [(d, one(d)) for d in (a.drain or [3.0, 30.0])]
    names = list(rows[0][1])
    print("| drain s | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for d, r in rows:
        print(f"| {d:g} | " + " | ".join(f"{r[n]:.1f}" for n in names) + " |")


if __name__ == "__main__":
    main()
