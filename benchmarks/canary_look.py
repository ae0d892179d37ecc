"""Seconds one look at a running canary takes (`aimass.experiments.show`, what the scheduler's look reads)
against the answers the experiment has served: 5 answers a user, a play on one answer in 20, in a fresh
home under /tmp. The scheduler spaces its looks by their cost (retraining._scheduler.LOOK_SHARE).

    python benchmarks/canary_look.py [ANSWERS ...]     # default: 50000 200000
"""
from __future__ import annotations

import sys
import tempfile
import time


def look_seconds(n: int) -> float:
    import numpy as np

    import aimass.serving
    from aimass import experiments
    from aimass.catalog import Experiment, FeedbackEventBase, session
    from aimass.events import EventLog, ServedLog
    from aimass.settings import Settings

    aimass.serving.check_deployed = lambda endpoint, settings=None: None  # no cluster: the logs are what is read
    s = Settings(home=tempfile.mkdtemp(prefix="aimass-canary-") + "/home")
    with session(s) as db:
        db.add(Experiment(endpoint="recs", experiment_id="x1", metric="play_rate", auto=True,
                          arms=[{"ref": "m/1", "weight": 50}, {"ref": "m/2", "weight": 50}]))
        db.commit()
    log = ServedLog(s)
    users = np.random.default_rng(0).integers(1, n // 5 + 2, n)
    for i, u in enumerate(users.tolist()):
        log.record("recs", f"r{i}", "recommend", "m", 1 + u % 2, u, [5, 6, 7], list(range(10)), [1.0] * 10,
                   arm=f"m/{1 + u % 2}", experiment_id="x1", latency_ms=1.0)
        if i % 10_000 == 0:
            log.flush()
    log.flush()
    EventLog(s).write("recs", [FeedbackEventBase(event_id=f"e{i}", user_id=int(users[i]), item_id=7, type="play",
                                                 timestamp=time.time(), request_id=f"r{i}") for i in range(0, n, 20)])
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        experiments.show("recs", settings=s)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [50_000, 200_000]
    print("| answers | look (s), best of 3 |\n|---|---|")
    for n in sizes:
        print(f"| {n:,} | {look_seconds(n):.2f} |")


if __name__ == "__main__":
    main()
