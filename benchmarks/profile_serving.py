"""Where a replica's time goes on POST /recommend: one endpoint (item-kNN on the demo data, one replica, the
answer cache off so that every request takes the whole path) under load at a fixed concurrency, its replica
process sampled by py-spy. Prints the functions with the most samples, inclusive and by themselves.

    .venv/bin/python benchmarks/profile_serving.py [--concurrency 16] [--seconds 15] [--top 25]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import http_caller, load, prepare  # noqa: E402  (the serving benchmark's own setup and load)


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


async def drive(url: str, key: str, users: list[int], concurrency: int, seconds: float) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await load(http_caller(client, url, key), users, concurrency, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    from aimass import serving

    with tempfile.TemporaryDirectory(prefix="aimass-profile-") as tmp:
        s, ref = prepare(Path(tmp) / "home", "itemknn", 1000, 2000)
        s = s.model_copy(update={"serve_cache_users": 0})
        key, _ = serving.create_key("profile", settings=s)
        users = list(serving.Engine(ref, s).histories)
        try:
            d = serving.deploy(ref, "profiled", min_replicas=1, max_replicas=1, settings=s)
            raw = Path(tmp) / "stacks.txt"
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw",
                                    "-o", str(raw), "-d", str(int(a.seconds)), "-r", "200", "--nonblocking",
                                    "-p", str(replica_pid("profiled"))], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            r = asyncio.run(drive(d.url + "/recommend", key, users, a.concurrency, a.seconds))
            spy.wait(timeout=60)
            print(f"/recommend at concurrency {a.concurrency}: {r['rps']:.0f} req/s, p50 {r['p50']:.1f} ms, "
                  f"p99 {r['p99']:.1f} ms")
            summarize(raw, a.top)
        finally:
            serving.shutdown(settings=s)


if __name__ == "__main__":
    main()
