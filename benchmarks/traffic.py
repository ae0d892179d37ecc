"""What traffic splits cost on the request path, on one deployment (1 replica) of a demo model:

  1. /recommend throughput and latency with one arm, with a 50/50 split of two versions, and with one arm plus a
     shadow of the same model (the shadow does as much work as the live answer, in a process of its own: a Ray
     actor the replica owns, on the same cores);
  2. how long a split change takes end to end (written, every replica loaded it, switched), and a rollback.

The deployment runs with the answer cache off (AIMASS_SERVE_CACHE_USERS=0, for the live arms and the shadow alike),
so every request computes the model: the rows compare what a split or a shadow costs, not cache lookups.

The client is aiohttp on the same 2 cores (it shares the CPUs: numbers are a floor).

    python benchmarks/traffic.py                              # item-kNN, 8 s per level, levels 1 and 16
    python benchmarks/traffic.py --family sasrec --levels 1 16 64 --seconds 5
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving import demo_args, load, prepare  # noqa: E402  (the serving benchmark's home and load loop)


async def measure(url: str, key: str, users: list[int], levels: list[int], seconds: float) -> list[dict]:
    import aiohttp

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(levels))) as client:
        async def call(user: int) -> bool:
            async with client.post(url + "/recommend", data=f'{{"user_id": {user}, "k": 10}}', headers=headers) as r:
                await r.read()
                return r.status == 200

        for c in levels:
            out.append({"concurrency": c, **await load(call, users, c, seconds)})
    return out


def main() -> None:
    a = demo_args(__doc__, [1, 16]).parse_args()
    from aimass import registry, serving

    rows, changes = [], []
    with tempfile.TemporaryDirectory(prefix="aimass-bench-") as tmp:
        s, ref = prepare(Path(tmp) / "home", a.family, a.users, a.tracks)
        # no answer cache: every request (and every shadow copy: the shadow's engine reads the replica's settings)
        # computes the model, as the README's table was measured
        s = s.model_copy(update={"serve_cache_users": 0})
        other = registry.register(registry.get(ref, settings=s).run_id, "bench", settings=s).ref  # same model
        key, _ = serving.create_key("benchmark", settings=s)
        users = list(serving.Engine(ref, s).histories)
        try:  # a failed deploy may have started the cluster: shut it down either way
            d = serving.deploy(ref, "bench", min_replicas=1, max_replicas=1, settings=s)
            for name, arms, shadow in (("one arm", [f"{ref}=100"], None),
                                       ("50/50 split of two versions", [f"{ref}=50", f"{other}=50"], None),
                                       ("one arm + shadow", [f"{ref}=100"], other)):
                t0 = time.perf_counter()
                serving.set_traffic("bench", arms, shadow, settings=s)
                changes.append((name, time.perf_counter() - t0))
                for r in asyncio.run(measure(d.url, key, users, a.levels, a.seconds)):
                    rows.append({"setup": name, **r})
                    print(f"{name:28} c={r['concurrency']:<3} {r['rps']:8.1f} req/s  p50 {r['p50']:7.2f} ms  "
                          f"p99 {r['p99']:8.2f} ms  errors={r['errors']}", flush=True)
            t0 = time.perf_counter()
            serving.rollback("bench", settings=s)
            changes.append(("rollback", time.perf_counter() - t0))
            shadowed = _shadow_log(s)
        finally:
            serving.shutdown(settings=s)
    print(f"\ntraffic, {a.family} on demo ({a.users} users, {a.tracks} tracks), one replica, answer cache off, "
          f"{os.cpu_count()} CPUs, client on the same machine\n")
    print("| setup | concurrency | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setup']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
              f"{r['errors']} |")
    print("\n| change | seconds (written -> every replica loaded it -> switched) |\n|---|---|")
    for name, sec in changes:
        print(f"| {name} | {sec:.2f} |")
    print(f"\nshadow answers logged: {shadowed['n']} (overlap with the live list: mean {shadowed['overlap']:.2f}; "
          f"shadow latency p50 {shadowed['p50']:.2f} ms)")


def _shadow_log(s) -> dict:
    from aimass.events import ServedLog

    f = ServedLog(s).frame("bench", shadow=True)
    lat = f["latency_ms"].dropna().to_numpy(dtype=float)
    return {"n": len(f), "overlap": float(f["overlap"].mean()) if len(f) else float("nan"),
            "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan")}


if __name__ == "__main__":
    main()
