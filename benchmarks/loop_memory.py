"""Time and peak memory of the loop's bulk reads, on a log larger than a busy hour: `aimass feedback stats` (counted
in the database), `aimass feedback ingest` of a Parquet and a CSV file (read, checked and written a chunk at a
time) and `aimass monitor metrics` (online metrics; a window beyond 100,000 answers is measured on a sample).

Each operation runs in a fresh process, after its imports, so its peak resident memory is its own: "peak RSS" is
the process's high-water mark (VmHWM), "added" what the operation put on top of the imports. No Ray, no
serving: the logs are written as replicas write them.

    python benchmarks/loop_memory.py                       # 1,000,000 events, 400,000 answers
    python benchmarks/loop_memory.py --events 200000 --answers 100000
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mib() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss carries the parent's peak across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(home: Path, events: int, answers: int) -> None:
    """The endpoint "shop": `answers` served answers (50 items of history, 10 listed) and `events` feedback
    events (a third naming an answer); and the same events as files to ingest elsewhere."""
    from datetime import UTC, datetime

    import numpy as np
    import pandas as pd

    from aimass.events import EventLog, ServedLog
    from aimass.settings import Settings

    s = Settings(home=home)
    log = ServedLog(s)
    for i in range(answers):
        log.record("shop", f"r{i}", "recommend", "recs", 1, i % 5000, list(range(50)),
                   list(range(100 + i % 50, 110 + i % 50)), [0.5] * 10)
        if i % 20_000 == 0:
            log.flush()
    log.flush()
    rng = np.random.default_rng(0)
    f = pd.DataFrame({"event_id": [f"e{i}" for i in range(events)], "user_id": rng.integers(0, 5000, events),
                      "item_id": rng.integers(100, 160, events),
                      "type": rng.choice(["click", "impression", "play", "skip"], events),
                      "timestamp": datetime.now(UTC), "value": rng.uniform(0, 60, events),
                      "request_id": [f"r{i % answers}" if i % 3 == 0 else None for i in range(events)]})
    EventLog(s).ingest("shop", f)
    f.to_parquet(home.parent / "events.parquet", index=False)
    f.assign(timestamp=f["timestamp"].map(lambda t: t.isoformat())).to_csv(home.parent / "events.csv", index=False)


def child(op: str, home: Path) -> dict:
    from aimass import events, monitoring
    from aimass.settings import Settings

    s = Settings(home=home)
    events.count("shop", settings=s)  # the catalog opened: its engine is part of the imports' cost
    base = _rss_mib()
    t0 = time.perf_counter()
    if op == "feedback stats":
        n = events.stats("shop", settings=s)["events"]
    elif op.startswith("feedback ingest"):
        fresh = Settings(home=home.parent / f"ingest-{op.split('.')[-1]}")
        n = events.ingest(home.parent / op.split(" ")[-1], "shop", settings=fresh).rows
    else:
        m = monitoring.online_metrics("shop", settings=s)
        n = getattr(m[0], "sampled_from", None) or sum(x.answers for x in m)  # (older aimass: no such field)
    return {"operation": op, "rows": n, "seconds": round(time.perf_counter() - t0, 2),
            "peak_rss_mib": round(_rss_mib()), "added_mib": round(_rss_mib() - base)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--answers", type=int, default=400_000)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        make(home, a.events, a.answers)
        print(f"logs written in {time.perf_counter() - t0:.0f} s: {a.events:,} events, {a.answers:,} answers\n")
        print("| operation | rows | seconds | peak RSS MiB | added by the operation MiB |\n|---|---|---|---|---|")
        for op in ("feedback stats", "feedback ingest events.parquet", "feedback ingest events.csv",
                   "monitor metrics"):
            out = subprocess.run([sys.executable, __file__, "--child", op, str(home)], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(f"| {r['operation']} | {r['rows']:,} | {r['seconds']} | {r['peak_rss_mib']:,} | "
                  f"{r['added_mib']:,} |", flush=True)


if __name__ == "__main__":
    main()
