"""The scheduler's bookkeeping of the retrains it starts, and the drift trigger's choice of report, on real
records, real deployment records and real processes; the clock is faked (hours pass in a test)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from sqlmodel import select

from aimass import retraining, serving
from aimass.catalog import Experiment, FeedbackEventBase, session
from aimass.events import EventLog
from aimass.retraining import RetrainResult, Scheduler, _records
from aimass.retraining._scheduler import LOOK_SHARE, RETRY_S
from aimass.settings import Settings

HOUR = 3600.0


def deployed(s: Settings, endpoint: str, created: float, version: int = 1) -> None:
    """What `aimass deploy m/VERSION --endpoint E` records, without starting Ray Serve (`serving.show` reads it,
    NOT_RUNNING). A canary's promotion rewrites model and version in place and keeps `created_at`."""
    d = serving.Deployment(endpoint=endpoint, url="", model="m", version=version, family="itemknn",
                           requested=f"m/{version}", dataset=None, proxy="default", min_replicas=1, max_replicas=1,
                           target_ongoing_requests=8.0, config="", created_at=datetime.fromtimestamp(created, UTC))
    folder = s.home / "serve" / "deployments"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{endpoint}.json").write_text(json.dumps({"deployment": d.model_dump(mode="json"), "args": {}}))


def drift_report(s: Settings, endpoint: str, name: str, *, version: int, window_end: float, created: float,
                 drifted: bool = True) -> None:
    """The fields of a drift report's summary.json (aimass.monitoring.DriftReport) the triggers read."""
    f = s.home / "monitoring" / endpoint / name / "summary.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"endpoint": endpoint, "model": "m", "version": version, "drifted": drifted,
                             "window_start": datetime.fromtimestamp(window_end - HOUR, UTC).isoformat(),
                             "window_end": datetime.fromtimestamp(window_end, UTC).isoformat(),
                             "created_at": datetime.fromtimestamp(created, UTC).isoformat()}))
    os.utime(f, (created, created))  # written when it was made: the newest is the last modified


def dies(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.mark.parametrize(("code", "said"), [
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "was killed by SIGKILL (signal 9)"),  # OOM killer
    ("import sys; sys.exit(9)", "exited with code 9"),
])
def test_a_retrain_that_dies_without_its_record_is_recorded_failed_and_waits_the_retry_time(settings, caplog,
                                                                                          code, said):
    s = settings.model_copy(update={"retrain_interval_s": 600.0, "monitor_interval_s": None})
    start = time.time()
    deployed(s, "e1", start - HOUR)
    clock, procs = [start], []

    def launch(endpoint: str, reason: str) -> subprocess.Popen:
        procs.append(dies(code))
        return procs[-1]

    sched = Scheduler(s, clock=lambda: clock[0], endpoints=lambda: ["e1"], launch=launch)
    assert sched.tick() == {"e1": ["retrain:schedule"]}
    procs[0].wait(timeout=60)
    clock[0] += 30
    with caplog.at_level(logging.ERROR, logger="aimass.retraining._scheduler"):
        assert sched.tick() == {"e1": []}
    log_path = str(s.home / "logs" / "retrain-e1.log")
    assert any(said in r.getMessage() and log_path in r.getMessage() for r in caplog.records)
    [failed] = retraining.history("e1", settings=s)
    assert (failed.status, failed.reason, failed.started_at.timestamp()) == ("failed", "schedule",
                                                                             pytest.approx(start, abs=1e-5))
    assert said in failed.error and log_path in failed.error
    assert failed.finished_at.timestamp() == pytest.approx(start + 30, abs=1e-5)
    clock[0] += RETRY_S  # the old floor: not relaunched, the triggers' wait applies
    assert sched.tick() == {"e1": []} and len(procs) == 1
    assert len(retraining.history("e1", settings=s)) == 1  # recorded once, not at every tick
    clock[0] = start + 30 + s.retrain_retry_s + 1
    assert sched.tick() == {"e1": ["retrain:schedule"]} and len(procs) == 2
    procs[1].wait(timeout=60)


def test_a_retrain_that_wrote_its_record_gets_no_other(settings, caplog):
    """`aimass retrain` refusing (nothing new: exit code 4) writes its own record on the way out."""
    s = settings.model_copy(update={"retrain_interval_s": 600.0, "monitor_interval_s": None})
    start = time.time()
    deployed(s, "e1", start - HOUR)
    writes_its_record = (
        "import sys; from datetime import UTC, datetime; from aimass.settings import Settings; "
        "from aimass.retraining import RetrainResult, _records; "
        f"_records.write(Settings(home={str(s.home)!r}), RetrainResult(endpoint='e1', reason='schedule', "
        "status='nothing-new', started_at=datetime.now(UTC), finished_at=datetime.now(UTC))); sys.exit(4)")
    procs = []

    def launch(endpoint: str, reason: str) -> subprocess.Popen:
        procs.append(dies(writes_its_record))
        return procs[-1]

    clock = [start]
    sched = Scheduler(s, clock=lambda: clock[0], endpoints=lambda: ["e1"], launch=launch)
    assert sched.tick() == {"e1": ["retrain:schedule"]}
    assert procs[0].wait(timeout=120) == 4
    clock[0] += 30
    with caplog.at_level(logging.ERROR, logger="aimass.retraining._scheduler"):
        assert sched.tick() == {"e1": []}  # the attempt counts from its start: the schedule is not due again
    assert [h.status for h in retraining.history("e1", settings=s)] == ["nothing-new"]
    assert not caplog.records


def test_a_retrain_refused_before_it_started_is_no_failed_attempt(settings, caplog):
    """Another retrain holds the endpoint (a person's `aimass retrain E`): the scheduler's process exits 4
    without a record, which is no attempt of its own to record failed (it would delay the next by the retry
    time, and stand in the history as the newest attempt)."""
    s = settings.model_copy(update={"retrain_interval_s": 600.0, "monitor_interval_s": None})
    start = time.time()
    deployed(s, "e1", start - HOUR)
    procs = []

    def launch(endpoint: str, reason: str) -> subprocess.Popen:
        procs.append(dies("import sys; sys.exit(4)"))
        return procs[-1]

    sched = Scheduler(s, clock=lambda: start, endpoints=lambda: ["e1"], launch=launch)
    assert sched.tick() == {"e1": ["retrain:schedule"]}
    assert procs[0].wait(timeout=120) == 4
    with caplog.at_level(logging.ERROR, logger="aimass.retraining._scheduler"):
        sched.tick()
    assert retraining.history("e1", settings=s) == [] and not caplog.records


def test_a_retrain_that_cannot_start_is_recorded_failed(settings):
    s = settings.model_copy(update={"retrain_interval_s": 600.0, "monitor_interval_s": None})
    start = time.time()
    deployed(s, "e1", start - HOUR)

    def cannot_start(endpoint: str, reason: str) -> subprocess.Popen:
        raise OSError("no space left on device")

    sched = Scheduler(s, clock=lambda: start, endpoints=lambda: ["e1"], launch=cannot_start)
    assert sched.tick() == {"e1": []}
    [failed] = retraining.history("e1", settings=s)
    assert failed.status == "failed" and failed.error == "the retrain process did not start: no space left on device"
    assert retraining.due("e1", settings=s, now=start + RETRY_S) is None


def test_only_running_endpoints_are_scheduled(settings, monkeypatch):
    """A deployment record outlives its cluster (NOT_RUNNING): a scheduler of a new cluster leaves it be."""
    deployed(settings, "e1", time.time() - HOUR)
    deployed(settings, "e2", time.time() - HOUR)
    sched = Scheduler(settings)
    assert [d.status for d in serving.deployments(settings=settings)] == ["NOT_RUNNING"] * 2  # no cluster here
    assert sched._deployed() == []
    # Serve's answer in a cluster that runs e2 only (e1 failed to deploy)
    monkeypatch.setattr(serving, "_live_status", lambda s: {"e1": "DEPLOY_FAILED", "e2": "RUNNING"})
    assert sched._deployed() == ["e2"]


def test_the_retrain_of_an_endpoint_no_longer_listed_is_still_looked_after(settings, caplog):
    """Deleted (or stopped) while its retrain runs: that retrain is polled until it ends, a death without a
    record is recorded, and then it is forgotten."""
    s = settings.model_copy(update={"retrain_interval_s": 600.0, "monitor_interval_s": None})
    start = time.time()
    for e in ("e1", "e2"):
        deployed(s, e, start - HOUR)
    listed, procs = ["e1", "e2"], {}

    def launch(endpoint: str, reason: str) -> subprocess.Popen:
        procs[endpoint] = dies("import time; time.sleep(120)")
        return procs[endpoint]

    clock = [start]
    sched = Scheduler(s, clock=lambda: clock[0], endpoints=lambda: list(listed), launch=launch)
    try:
        assert sched.tick() == {"e1": ["retrain:schedule"], "e2": ["retrain:schedule"]}
        listed.remove("e2")
        clock[0] += 30
        assert sched.tick() == {"e1": []}
        assert "e2" in sched.launched  # still running: kept
        procs["e2"].kill()  # a crash
        procs["e2"].wait(timeout=60)
        clock[0] += 30
        with caplog.at_level(logging.ERROR, logger="aimass.retraining._scheduler"):
            assert sched.tick() == {"e1": []}
        assert "e2" not in sched.launched and "e1" in sched.launched
        assert any("e2" in r.getMessage() and "SIGKILL" in r.getMessage() for r in caplog.records)
        assert [h.status for h in retraining.history("e2", settings=s)] == ["failed"]
        assert retraining.history("e1", settings=s) == []
    finally:
        for p in procs.values():
            p.kill()
            p.wait(timeout=60)


def test_drift_counts_only_a_report_about_the_served_version_over_a_window_after_the_last_attempt(settings):
    """A canary of m/2 beside m/1, promoted: the endpoint serves m/2 now (its record rewritten in place, its
    created_at kept). The hourly reports of the canary's time were about m/1, which served 90% of the answers."""
    s = settings.model_copy(update={"retrain_on_drift": True, "monitor_interval_s": HOUR})
    t0 = time.time() - 10 * HOUR
    deployed(s, "e1", t0, version=2)
    _records.write(s, RetrainResult(endpoint="e1", reason="schedule", status="canary", served="m/1",
                                    challenger="m/2", canary="x1", started_at=datetime.fromtimestamp(t0 + HOUR, UTC),
                                    finished_at=datetime.fromtimestamp(t0 + 2 * HOUR, UTC)))
    for h in (3, 4, 5):  # during the canary
        drift_report(s, "e1", f"c{h}", version=1, window_end=t0 + h * HOUR, created=t0 + h * HOUR + 60)
    now = t0 + 6 * HOUR
    assert retraining.due("e1", settings=s, now=now) is None
    # a report about m/2 made after the attempt, over a window that ended before it: not news about m/2
    drift_report(s, "e1", "late", version=2, window_end=t0 + HOUR - 60, created=t0 + 5 * HOUR + 120)
    assert retraining.due("e1", settings=s, now=now) is None
    drift_report(s, "e1", "m2", version=2, window_end=t0 + 5 * HOUR + 600, created=t0 + 5 * HOUR + 660)
    assert retraining.due("e1", settings=s, now=now) == "drift"
    # the newest report about m/2 decides, not an older one that flagged
    drift_report(s, "e1", "m2-ok", version=2, window_end=t0 + 5 * HOUR + 900, created=t0 + 5 * HOUR + 960,
                 drifted=False)
    assert retraining.due("e1", settings=s, now=now) is None


def test_drift_about_a_version_whose_challenger_lost_starts_another_retrain_on_later_traffic_and_new_events(settings):
    """m/1 drifted, a retrain trained m/2 against it, m/2 lost its canary and was rolled back: m/1 serves on. Its
    drift starts another retrain once a report measured wholly after that attempt flags and new positive events
    came (the same model on the same data would drift the same), not never."""
    s = settings.model_copy(update={"retrain_on_drift": True, "monitor_interval_s": HOUR})
    t0 = time.time() - 10 * HOUR
    deployed(s, "e1", t0, version=1)
    log = EventLog(s)

    def event(i: int, kind: str) -> None:
        log.write("e1", [FeedbackEventBase(event_id=f"ev{i}", user_id=1, item_id=i, type=kind, timestamp=t0)])

    event(1, "play")
    _records.write(s, RetrainResult(endpoint="e1", reason="drift", status="canary", served="m/1", challenger="m/2",
                                    canary="x1", started_at=datetime.fromtimestamp(t0 + HOUR, UTC),
                                    finished_at=datetime.fromtimestamp(t0 + 2 * HOUR, UTC), events_through_seq=1))
    now = t0 + 6 * HOUR
    # over a window that began before the attempt finished: what it answered
    drift_report(s, "e1", "overlap", version=1, window_end=t0 + 2.5 * HOUR, created=t0 + 2.5 * HOUR + 60)
    event(2, "play")
    assert retraining.due("e1", settings=s, now=now) is None
    # wholly after it, with a play that attempt never saw
    drift_report(s, "e1", "later", version=1, window_end=t0 + 4 * HOUR, created=t0 + 4 * HOUR + 60)
    assert retraining.due("e1", settings=s, now=now) == "drift"  # event 2 is new since the attempt
    _records.write(s, RetrainResult(endpoint="e1", reason="drift", status="canary", served="m/1", challenger="m/3",
                                    canary="x2", started_at=datetime.fromtimestamp(t0 + 4.1 * HOUR, UTC),
                                    finished_at=datetime.fromtimestamp(t0 + 4.5 * HOUR, UTC), events_through_seq=2))
    event(3, "impression")
    drift_report(s, "e1", "after-2", version=1, window_end=t0 + 5.6 * HOUR, created=t0 + 5.6 * HOUR + 60)
    assert retraining.due("e1", settings=s, now=now) is None  # only an impression since the second attempt
    event(4, "like")
    assert retraining.due("e1", settings=s, now=now) == "drift"
    # each attempt that answered it doubles the wait after the last (retrain_retry_s, then twice it, ...): a drift
    # no challenger fixes retrains ever more rarely
    slow = s.model_copy(update={"retrain_retry_s": 2 * HOUR})
    assert retraining.due("e1", settings=slow, now=now) is None  # 1.5 h after the second attempt, not 4
    assert retraining.due("e1", settings=slow, now=t0 + 9 * HOUR) == "drift"


def test_a_canary_whose_look_is_costly_is_looked_at_less_often_and_a_cheap_one_every_tick(settings):
    """A look reads the experiment's answers whole: one that took 10 s waits 10 / LOOK_SHARE s for the next,
    so a long canary cannot keep the scheduler (and the serving cluster it shares) busy."""
    with session(settings) as db:
        for endpoint in ("big", "small"):
            db.add(Experiment(endpoint=endpoint, experiment_id=f"x-{endpoint}", metric="play_rate", auto=True,
                              arms=[{"ref": "m/1", "weight": 90}, {"ref": "m/2", "weight": 10}]))
        db.commit()
    clock, looked = [time.time()], []

    def look(endpoint: str) -> str | None:
        looked.append(endpoint)
        clock[0] += 10.0 if endpoint == "big" else 0.0
        return "promoted m/2" if endpoint == "small" and looked.count("small") == 3 else None

    sched = Scheduler(settings, clock=lambda: clock[0], endpoints=lambda: [], look=look)
    first = clock[0]
    ticks, waits = [], []
    while clock[0] < first + 10 / LOOK_SHARE + 30:
        ticks.append(sched.tick())
        waits.append(dict(sched.next_look))
        clock[0] += 30
    assert looked.count("small") == len(ticks)  # every tick
    assert looked.count("big") == 2  # at the first tick, and the first one 100 s after it began
    assert ticks[2] == {"small": ["experiment:promoted m/2"]}
    # a decision's time went on deciding (a promotion's gate): no wait after it; an experiment that ended
    # leaves none behind for the next one on its endpoint
    assert "small" in waits[1] and "small" not in waits[2]
    with session(settings) as db:
        big = db.exec(select(Experiment).where(Experiment.endpoint == "big")).one()
        big.state = "stopped"
        db.add(big)
        db.commit()
    sched.tick()
    assert "big" not in sched.next_look
