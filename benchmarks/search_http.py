"""The search endpoint over HTTP at concurrency 1: the Last.fm catalogue (17,632 artists) registered as a
dataset, the `search` family trained on it through Ray Train, registered, deployed on Ray Serve (HAProxy
ingress, 127.0.0.1), then queried one request at a time with tag words and misspelt artist names, per mode.

    .venv/bin/python benchmarks/search_http.py [--data ../shared/data/lastfm-2k] [--queries 300] [--workers 1]

Prints the build (training job) time and p50/p99 latency per mode, measured by the client (the whole HTTP
round trip: HAProxy, the replica, the gate and the answer). The query-vector cache is defeated: every query
is asked once."""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from aimass.serving._cluster import free_port

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lastfm-2k"


def _typo(name: str, rng: random.Random) -> str:
    if len(name) < 5:
        return name
    i = rng.randrange(1, len(name) - 1)
    return name[:i] + name[i + 1] + name[i] + name[i + 2:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--workers", type=int, default=1, help="Ray Train workers of the build (0: in this process)")
    a = ap.parse_args()

    import aimass
    from aimass import registry, serving
    from aimass.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(home=Path(tmp) / "home", serve_port=free_port())
        aimass.datasets.register("lastfm", a.data, "lastfm", settings=s)
        t0 = time.perf_counter()
        run = aimass.train("search", "lastfm@v1", workers=a.workers, progress=False, settings=s)
        build = time.perf_counter() - t0
        import ray

        ray.shutdown()
        v = registry.register(run.run_id, "lastfm-search", settings=s)
        key, _ = serving.create_key("bench", settings=s)
        try:
            d = serving.deploy(v.ref, "search", min_replicas=1, max_replicas=1, settings=s)
            tags = pd.read_csv(a.data / "tags.dat", sep="\t", encoding="latin-1")["tagValue"].astype(str).tolist()
            names = pd.read_csv(a.data / "artists.dat", sep="\t", quoting=3)["name"].astype(str).tolist()
            rng, n = random.Random(0), a.queries
            tag_qs, name_qs = rng.sample(tags, 3 * n), [_typo(x, rng) for x in rng.sample(names, 3 * n)]
            rows = []
            with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
                for q in ["warm up", "rock", "jazz piano", "beatles"]:
                    c.post(f"{d.url}/search", json={"query": q})
                for m, mode in enumerate(("bm25", "semantic", "hybrid")):  # other queries per mode: no cache hits
                    part = slice(m * n, (m + 1) * n)
                    for kind, qs in (("tags", tag_qs[part]), ("misspelt names", name_qs[part])):
                        lat, errors = [], 0
                        for q in qs:
                            t = time.perf_counter()
                            r = c.post(f"{d.url}/search", json={"query": q, "k": 10, "mode": mode})
                            lat.append((time.perf_counter() - t) * 1000)
                            errors += r.status_code != 200
                        rows.append((mode, kind, len(lat), np.percentile(lat, 50), np.percentile(lat, 99), errors))
        finally:
            serving.shutdown(settings=s)
    where = f"{a.workers} Ray Train worker(s)" if a.workers else "Ray Train's local mode, in process"
    print(f"index build (aimass train search, the whole job incl. MiniLM encoding, {where}): {build:.1f} s\n")
    print("| mode | queries | n | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for mode, kind, n, p50, p99, errors in rows:
        print(f"| {mode} | {kind} | {n} | {p50:.2f} | {p99:.2f} | {errors} |")


if __name__ == "__main__":
    main()
