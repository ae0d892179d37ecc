"""How long a live event's commit waits while a large file is ingested into the same catalog: one process runs
`aimass.events.ingest` of a generated Parquet file, this one writes a single event every 100 ms meanwhile
(`EventLog.write`, the group commit `/feedback` uses) and reports the waits. No Ray, no serving.

    python benchmarks/ingest_live.py                    # 1,000,000 events
    python benchmarks/ingest_live.py --events 3000000
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    a = ap.parse_args()

    from aimass.catalog import FeedbackEventBase
    from aimass.events import EventLog
    from aimass.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="aimass-ingest-live-"))
    rng = np.random.default_rng(0)
    path = root / "events.parquet"
    pd.DataFrame({"event_id": [f"file-{i}" for i in range(a.events)], "user_id": rng.integers(1, 10**6, a.events),
                  "item_id": rng.integers(1, 5000, a.events), "type": rng.choice(["play", "skip", "like"], a.events),
                  "timestamp": time.time() - rng.integers(0, 86400, a.events),
                  "value": rng.random(a.events) * 300}).to_parquet(path)
    s = Settings(home=root / "home")
    log = EventLog(s)

    def live(i: int) -> None:
        log.write("live", [FeedbackEventBase(event_id=f"live-{i}", user_id=1, item_id=2, type="play",
                                             timestamp=time.time())])

    live(-1)  # the catalog exists before the ingest starts
    code = ("import sys; from pathlib import Path; from aimass import events; from aimass.settings import Settings; "
            "r = events.ingest(Path(sys.argv[1]), 'bench', settings=Settings(home=Path(sys.argv[2]))); "
            "print(f'{r.stored} {r.seconds}')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(s.home)], stdout=subprocess.PIPE, text=True)
    waits, failed, i = [], 0, 0
    while proc.poll() is None:
        t = time.perf_counter()
        try:
            live(i)
            waits.append(time.perf_counter() - t)
        except Exception:  # noqa: BLE001 - a commit that gave up is what this counts
            failed += 1
        i += 1
        time.sleep(0.1)
    stored, seconds = proc.stdout.read().split()
    shutil.rmtree(root, ignore_errors=True)
    w = np.array(waits) * 1000
    print(f"| file events | ingest s | events/s | live writes | failed | live p50 ms | live max ms |\n"
          f"|---|---|---|---|---|---|---|\n| {int(stored):,} | {float(seconds):.1f} | "
          f"{int(stored) / float(seconds):,.0f} | {len(w)} | {failed} | {np.median(w):.0f} | {w.max():.0f} |")


if __name__ == "__main__":
    main()
