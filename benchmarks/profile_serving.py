"""Where a replica's time goes on a route: one endpoint (item-kNN on the demo data, one replica, the answer
cache off so that every request takes the whole path) under load at a fixed concurrency, its replica process
sampled by py-spy. Prints the functions with the most samples, inclusive and by themselves.

    .venv/bin/python benchmarks/profile_serving.py [--route recommend|feedback|healthz] [--concurrency 16]
        [--seconds 15] [--top 25] [--gil]

--gil keeps only the samples of the thread holding the GIL: on 2 cores the replica is bound by it, so this
is where throughput goes.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import load, prepare  # noqa: E402  (the serving benchmark's own setup and load)


def replica_pid(endpoint: str) -> int:
    """The Serve replica process of `endpoint`'s deployment (Ray names it in its command line)."""
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if line.startswith("ray::ServeReplica") and endpoint in line:
            return p.pid
    raise RuntimeError(f"no Serve replica of {endpoint!r} found")


def summarize(raw: Path, top: int) -> None:
    """py-spy's collapsed stacks ('frame;frame;... count') into inclusive and self sample counts."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        for f in set(frames):
            inclusive[f] += n
        if frames:
            own[frames[-1]] += n
    print(f"\n{total} samples\n\n| inclusive % | function |\n|---|---|")
    for f, n in inclusive.most_common(top):
        print(f"| {100 * n / total:.1f} | `{f[:140]}` |")
    print("\n| self % | function |\n|---|---|")
    for f, n in own.most_common(top):
        print(f"| {100 * n / total:.1f} | `{f[:140]}` |")


async def drive(url: str, route: str, key: str, users: list[int], items: list[int], concurrency: int,
                seconds: float) -> dict:
    # aiohttp: httpx's connection pool is the bottleneck at high concurrency (benchmarks/feedback.py)
    import aiohttp

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    n = itertools.count()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=aiohttp.ClientTimeout(total=30)) as client:
        async def call(user: int) -> bool:
            if route == "healthz":
                async with client.get(f"{url}/healthz") as r:
                    await r.read()
                    return r.status == 200
            if route == "feedback":
                i = next(n)
                body = (f'{{"event_id": "p-{i}", "user_id": {user}, "item_id": {items[i % len(items)]}, '
                        f'"type": "play", "timestamp": {time.time()}}}')
            else:
                body = f'{{"user_id": {user}, "k": 10}}'
            async with client.post(f"{url}/{route}", data=body.encode(), headers=headers) as r:
                await r.read()
                return r.status == 200

        return await load(call, users, concurrency, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--route", default="recommend", choices=["recommend", "feedback", "healthz"])
    ap.add_argument("--gil", action="store_true", help="only samples that hold the GIL")
    ap.add_argument("--idle", action="store_true",
                    help="keep idle samples too, each stack under its thread (where a thread waits)")
    ap.add_argument("--save", type=Path, help="also keep py-spy's collapsed stacks in this file")
    a = ap.parse_args()
    from aimass import serving

    with tempfile.TemporaryDirectory(prefix="aimass-profile-") as tmp:
        s, ref = prepare(Path(tmp) / "home", "itemknn", 1000, 2000)
        s = s.model_copy(update={"serve_cache_users": 0})
        key, _ = serving.create_key("profile", settings=s)
        engine = serving.Engine(ref, s)
        users, items = list(engine.histories), engine.item_ids.tolist()
        try:
            d = serving.deploy(ref, "profiled", min_replicas=1, max_replicas=1, settings=s)
            raw = Path(tmp) / "stacks.txt"
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw",
                                    "-o", str(raw), "-d", str(int(a.seconds)), "-r", "200", "--nonblocking",
                                    "-p", str(replica_pid("profiled")), *(["--gil"] if a.gil else []),
                                    *(["--idle", "--threads"] if a.idle else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = asyncio.run(drive(d.url, a.route, key, users, items, a.concurrency, a.seconds))
            spy.wait(timeout=60)
            print(f"/{a.route} at concurrency {a.concurrency}: {r['rps']:.0f} req/s, p50 {r['p50']:.1f} ms, "
                  f"p99 {r['p99']:.1f} ms")
            summarize(raw, a.top)
            if a.save:
                a.save.write_text(raw.read_text())
        finally:
            serving.shutdown(settings=s)


if __name__ == "__main__":
    main()
