"""The feedback path, measured on one deployment (1 replica) of a demo model:

  1. throughput of durable single-event POST /feedback against the same deployment's GET /healthz, at the
     given concurrencies (each event a new event_id; acknowledged = committed with synchronous=FULL);
  2. batch ingest of a file (`aimass feedback ingest`'s path), events/s;
  3. acknowledgement -> visible: the time from an event's 2xx until the next /recommend's history contains
     it, for events posted to the endpoint (the replica applies its own at once) and for events committed by
     another process (what other replicas and `feedback ingest` write: they arrive by the log's poll).

The client is aiohttp with asyncio on the same machine (it shares the CPUs: numbers are a floor).

    python benchmarks/feedback.py                      # 3 interleaved rounds of 8 s per route and level (16, 64)
    python benchmarks/feedback.py --seconds 5 --rounds 5 --levels 1 16 64 --ingest-rows 500000
"""
from __future__ import annotations

import asyncio
import itertools
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving import client_session, cpu_line, demo_args, measured, prepare, warmed  # noqa: E402  (the serving benchmark's home and load loop)


async def throughput(s, d, key: str, users: list[int], items: list[int], levels: list[int], seconds: float,
                     rounds: int, cpu: bool = False):
    # aiohttp, not httpx: httpx's connection pool became the bottleneck at 64 connections (GET /healthz 173
    # req/s through httpx against 1,253 through aiohttp, same deployment, same run), which hid the server's cost.
    import aiohttp

    n = itertools.count()
    run = uuid.uuid4().hex[:8]  # once: uuid4 per request would cost the client (same CPUs) a urandom call each
    rows = []
    post_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=max(levels))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
        async def healthz(_user: int) -> bool:
            async with client.get(d.url + "/healthz") as r:
                await r.read()
                return r.status == 200

        async def feedback(user: int) -> bool:
            # The body is formatted, not json.dumps'd, and the answer checked as bytes: the client shares the
            # CPUs, and what it spends is taken from the server; GET /healthz costs it nearly nothing.
            i = next(n)
            body = (f'{{"event_id": "bench-{run}-{i}", "user_id": {user}, "item_id": {items[i % len(items)]}, '
                    f'"type": "play", "timestamp": {time.time()}, "value": 42}}').encode()
            async with client.post(d.url + "/feedback", data=body, headers=post_headers) as r:
                return r.status == 200 and b'"stored":1' in await r.read()

        for c in levels:
            for k in range(rounds):  # interleaved rounds: a drift of the machine's load hits both routes alike
                for name, call in (("GET /healthz", healthz), ("POST /feedback", feedback)):
                    r = await measured(call, users, c, seconds, cpu)
                    rows.append({"route": name, "concurrency": c, "round": k, **r})
                    print(f"{name:15} c={c:<3} round {k}  {r['rps']:8.1f} req/s  p50 {r['p50']:7.2f} ms  "
                          f"p99 {r['p99']:8.2f} ms  errors={r['errors']}", flush=True)
                    if cpu:
                        print(cpu_line(r), flush=True)
    return rows


def ingest(s, endpoint: str, rows: int, items: list[int]) -> dict:
    import pandas as pd

    from aimass import events

    rng = np.random.default_rng(0)
    path = s.home.parent / "events.parquet"
    pd.DataFrame({"event_id": [f"file-{i}" for i in range(rows)], "user_id": rng.integers(1, 10**6, rows),
                  "item_id": rng.choice(items, rows), "type": rng.choice(["play", "skip", "like"], rows),
                  "timestamp": time.time() - rng.integers(0, 86400, rows),
                  "value": rng.random(rows) * 300}).to_parquet(path)
    r = events.ingest(path, endpoint, settings=s)
    print(f"ingest: {r.stored} events in {r.seconds:.2f} s = {r.events_per_s:,.0f} events/s", flush=True)
    return r.model_dump()


def visibility(s, d, key: str, users: list[int], samples: int) -> dict:
    """Seconds from acknowledgement to the first /recommend whose history_length includes the event."""
    import httpx

    from aimass import events
    from aimass.catalog import FeedbackEventBase

    log = events.EventLog(s)
    headers = {"Authorization": f"Bearer {key}"}
    out: dict[str, list[float]] = {"posted to the endpoint": [], "committed by another process": []}
    with httpx.Client(timeout=30) as c:
        for i in range(samples):
            user = users[i % len(users)]
            before = c.post(d.url + "/recommend", json={"user_id": user, "k": 1}, headers=headers).json()
            e = {"event_id": f"vis-{i}-{uuid.uuid4().hex[:8]}", "user_id": user, "item_id": before["items"][0],
                 "type": "like", "timestamp": time.time()}
            how = "posted to the endpoint" if i % 2 == 0 else "committed by another process"
            if how == "posted to the endpoint":
                assert c.post(d.url + "/feedback", json=e, headers=headers).status_code == 200
            else:
                log.write(d.endpoint, [FeedbackEventBase(**e)])
            acked = time.perf_counter()
            while True:
                now = c.post(d.url + "/recommend", json={"user_id": user, "k": 1}, headers=headers).json()
                if now["history_length"] > before["history_length"]:
                    out[how].append(time.perf_counter() - acked)
                    break
                if time.perf_counter() - acked > 10:
                    out[how].append(float("inf"))
                    break
    return {k: {"n": len(v), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
                "max": float(np.max(v))} for k, v in out.items()}


def group_commits(d, admin: str) -> tuple[float, float]:
    """(group commits, events they stored) so far, from the replica's /metrics."""
    import httpx

    text = httpx.get(d.url + "/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=30).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("aimass_feedback_commits_total", "aimass_feedback_committed_events_total"))}
    return values.get("aimass_feedback_commits_total", 0.0), values.get("aimass_feedback_committed_events_total", 0.0)


async def _warm_first(url: str, admin: str, want: int) -> None:
    """The replica's answer-cache warm-up (a background thread at load) must not take CPU from the measurements."""
    if want:
        async with client_session(1) as client:
            await warmed(client, url, admin, want, reads=2)


def main() -> None:
    ap = demo_args(__doc__, [16, 64])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved healthz/feedback rounds per level")
    ap.add_argument("--ingest-rows", type=int, default=500_000)
    ap.add_argument("--samples", type=int, default=200, help="events timed from ack to visible")
    ap.add_argument("--cpu", action="store_true", help="also the CPU time per request of each part (client, "
                    "HAProxy, replica, the rest of Ray, other processes)")
    a = ap.parse_args()
    from aimass import serving

    with tempfile.TemporaryDirectory(prefix="aimass-bench-") as tmp:
        s, ref = prepare(Path(tmp) / "home", a.family, a.users, a.tracks)
        key, _ = serving.create_key("benchmark", settings=s)
        admin, _ = serving.create_key("benchmark-admin", "admin", settings=s)
        engine = serving.Engine(ref, s)
        users, items = list(engine.histories), engine.item_ids.tolist()
        try:  # a failed deploy may have started the cluster: shut it down either way
            d = serving.deploy(ref, "bench", min_replicas=1, max_replicas=1, settings=s)
            asyncio.run(_warm_first(d.url, admin, min(len(users), s.serve_cache_warm_users, s.serve_cache_users)))
            rows = asyncio.run(throughput(s, d, key, users, items, a.levels, a.seconds, a.rounds, a.cpu))
            commits, committed = group_commits(d, admin)
            vis = visibility(s, d, key, users, a.samples)
            ing = ingest(s, "bench", a.ingest_rows, items)
        finally:
            serving.shutdown(settings=s)
    print(f"\nfeedback, {a.family} on demo ({a.users} users, {a.tracks} tracks), Serve proxy: {d.proxy}, "
          f"{os.cpu_count()} CPUs, client on the same machine\n")
    print("| concurrency | GET /healthz req/s (median) | POST /feedback req/s (median) | feedback / healthz | "
          "per round | feedback p50 / p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for c in a.levels:
        h = [r for r in rows if r["concurrency"] == c and r["route"] == "GET /healthz"]
        f = [r for r in rows if r["concurrency"] == c and r["route"] == "POST /feedback"]
        hm, fm = np.median([r["rps"] for r in h]), np.median([r["rps"] for r in f])
        per = " ".join(f"{y['rps'] / x['rps']:.0%}" for x, y in zip(h, f, strict=True))
        print(f"| {c} | {hm:.0f} | {fm:.0f} | **{fm / hm:.0%}** | {per} | {np.median([r['p50'] for r in f]):.1f} / "
              f"{np.median([r['p99'] for r in f]):.0f} | {sum(r['errors'] for r in h + f)} |")
    print(f"\ngroup commits during the throughput rounds: {commits:,.0f} for {committed:,.0f} events "
          f"({committed / max(commits, 1):.1f} events per commit)")
    print(f"\n| batch ingest | rows | seconds | events/s |\n|---|---|---|---|\n| parquet file | {ing['rows']} | "
          f"{ing['seconds']:.2f} | {ing['events_per_s']:,.0f} |")
    print("\n| ack -> in the next /recommend's history | n | p50 s | p99 s | max s |\n|---|---|---|---|---|")
    for k, v in vis.items():
        print(f"| {k} | {v['n']} | {v['p50']:.3f} | {v['p99']:.3f} | {v['max']:.3f} |")


if __name__ == "__main__":
    main()
