"""Starting and ending experiments through the real split machinery (catalog, registry, set_traffic's two
phases) on an endpoint that has a deployment record and no replica running (scaled to zero, so a split is
activated at once): a stop under way against the scheduler's decision, failures before and after the traffic
moved, and the weights a ramp sets."""
from __future__ import annotations

import json
import threading
import time

import pytest

import aimass
from aimass import experiments, registry, serving
from aimass.errors import ConflictError, InvalidInputError
from aimass.events import ServedLog
from aimass.serving import _traffic
from aimass.settings import Settings


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Settings:
    """Two registered versions of one itemknn model, recs/1 the champion."""
    s = Settings(home=tmp_path_factory.mktemp("stop") / "home")
    inter, items = aimass.datasets.generate_demo(s.home.parent / "demo",
                                                 aimass.datasets.DemoConfig(users=60, tracks=120, seed=4))
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    run = aimass.train("itemknn", "demo@v1", None, workers=0, progress=False, settings=s).run_id
    for _ in range(2):
        registry.register(run, "recs", settings=s)
    registry.promote("recs", 1, force=True, settings=s)
    return s


@pytest.fixture(autouse=True)
def no_replicas(monkeypatch):
    """Serve's view of the endpoints: every deployed one running with no replica up."""
    monkeypatch.setattr("aimass.serving._live_status",
                        lambda s: dict.fromkeys(serving.endpoints(settings=s), "RUNNING"))
    monkeypatch.setattr("aimass.serving._running_replicas", lambda s, endpoint: 0)


def _deployed(s: Settings, endpoint: str) -> str:
    """A deployment record of `endpoint` serving recs/1 with its first split, as `deploy` leaves them."""
    record = s.home / "serve" / "deployments" / f"{endpoint}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"args": {"family": "itemknn"}, "deployment": {}}))
    _traffic.activate_initial(s, endpoint, "recs/1")
    return endpoint


def _in_force(s: Settings, endpoint: str) -> list[tuple[str, int]]:
    return [(a["ref"], a["weight"]) for a in _traffic.current(s, endpoint).arms]


def _until(what, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_stop_under_way_holds_off_the_schedulers_decision(home):
    """An operator's `stop --promote recs/2` moved the traffic and waits for the model's lock; the scheduler's
    tick meanwhile saw the canary still running with a broken guardrail and rolled it back to recs/1 (accepted:
    a change ending the experiment), then the operator's stop recorded 'promoted recs/2' over it. The stop's
    claim makes the tick leave it alone and a second stop refused, and the traffic stays where the stop put it."""
    s = home
    ep = _deployed(s, "race")
    e = experiments.start(ep, ["recs/1=90", "recs/2=10"], metric="play_rate", auto=True,
                          guardrails={"min_answers": 5}, settings=s)
    log = ServedLog(s)
    for user in range(20):  # each user sticks to one arm; recs/2 answers ten times slower
        arm = "recs/1" if user < 10 else "recs/2"
        log.record(ep, f"r{user}", "recommend", "recs", int(arm[-1]), user, [1], [2], [1.0], arm=arm,
                   experiment_id=e.experiment_id, latency_ms=10.0 if arm == "recs/1" else 100.0)
    log.flush()
    assert experiments.show(ep, settings=s).guardrails_broken  # what the scheduler rolls back on
    out: dict = {}

    def operator() -> None:
        try:
            out["e"] = experiments.stop(ep, promote="recs/2", actor="alice", wait_s=120, settings=s)
        except BaseException as err:
            out["error"] = err

    with registry._lock(s, "recs", 0):  # another promotion of the model runs: the operator's stop waits for it
        t = threading.Thread(target=operator, daemon=True)
        t.start()
        _until(lambda: _in_force(s, ep) == [("recs/2", 100)] or not t.is_alive())
        assert experiments.check(ep, settings=s) is None  # the scheduler's tick
        with pytest.raises(ConflictError, match=f"experiment {e.experiment_id} on 'race' is being stopped or "
                                                "decided elsewhere \\(promote recs/2 \\(by alice"):
            experiments.stop(ep, promote="recs/1", settings=s)
        claimed = experiments.get(ep, settings=s)
        assert claimed.state == "running" and claimed.decision.startswith("stopping: promote recs/2 (by alice")
        with pytest.raises(ConflictError, match="is being stopped"):  # a ramp under its id would undo the stop
            serving.set_traffic(ep, ["recs/1=50", "recs/2=50"], experiment_id=e.experiment_id, settings=s)
        assert _in_force(s, ep) == [("recs/2", 100)]
    t.join(timeout=120)
    assert "error" not in out, out
    assert out["e"].state == "stopped" and out["e"].decision == "promoted recs/2"
    assert _in_force(s, ep) == [("recs/2", 100)]
    assert registry.get("recs@champion", settings=s).version == 2


def test_a_stop_refused_before_the_traffic_moved_leaves_the_experiment_running_and_unclaimed(home):
    s = home
    ep = _deployed(s, "busy")
    e = experiments.start(ep, ["recs/1=50", "recs/2=50"], metric="play_rate", settings=s)
    with pytest.raises(InvalidInputError, match="wait_s must be a number of seconds"):
        experiments.stop(ep, promote="recs/2", wait_s=10**6, settings=s)
    ramp = _traffic.propose(s, ep, [_traffic.Arm(ref="recs/1", weight=60), _traffic.Arm(ref="recs/2", weight=40)],
                            None, experiment_id=e.experiment_id)  # a ramp being applied holds the endpoint
    with pytest.raises(ConflictError, match="another change to 'busy' is in progress"):
        experiments.stop(ep, promote="recs/2", settings=s)
    after = experiments.get(ep, settings=s)
    assert (after.state, after.decision, after.stopped_at) == ("running", None, None)
    assert _in_force(s, ep) == [("recs/1", 50), ("recs/2", 50)]
    _traffic.decide(s, ramp.id, "failed", "a replica could not load it")
    assert experiments.stop(ep, promote="recs/2", settings=s).decision == "promoted recs/2"


def test_a_stop_interrupted_after_the_traffic_moved_is_recorded_stopped(home, monkeypatch):
    """A Ctrl-C in set_traffic's last step: the split is recs/2=100 (a new experiment id), so the experiment
    gets no more traffic; left running, the scheduler would go on judging it and could roll it back."""
    s = home
    ep = _deployed(s, "cut")
    experiments.start(ep, ["recs/1=50", "recs/2=50"], metric="play_rate", auto=True, settings=s)

    def crash(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr("aimass.serving._retarget", crash)
    with pytest.raises(KeyboardInterrupt):
        experiments.stop(ep, promote="recs/2", settings=s)
    assert _in_force(s, ep) == [("recs/2", 100)]
    e = experiments.get(ep, settings=s)
    assert e.state == "stopped"
    assert e.decision == ("promoted recs/2 (the traffic moved, then: KeyboardInterrupt; champion alias not "
                          "moved)")


def test_a_start_interrupted_after_its_split_went_active_keeps_the_experiment(home, monkeypatch):
    """Deleted, the experiment left its split in force (users assigned under its id) with nothing to judge or
    stop it."""
    s = home
    ep = _deployed(s, "late")

    def crash(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr("aimass.serving._retarget", crash)
    with pytest.raises(KeyboardInterrupt):
        experiments.start(ep, ["recs/1=90", "recs/2=10"], metric="play_rate", settings=s)
    split = _traffic.current(s, ep)
    e = experiments.get(ep, settings=s)
    assert e is not None and e.state == "running" and e.experiment_id == split.experiment_id
    assert e.arms == [{"ref": "recs/1", "weight": 90}, {"ref": "recs/2", "weight": 10}]
    assert [a.arm for a in experiments.show(ep, settings=s).arms] == ["recs/1", "recs/2"]
    assert experiments.stop(ep, settings=s).state == "stopped"


def test_a_start_failing_before_its_split_went_active_leaves_no_experiment(home, monkeypatch):
    s = home
    ep = _deployed(s, "early")
    before = _traffic.current(s, ep)

    def gone(s, endpoint):
        raise RuntimeError("the cluster went away")

    monkeypatch.setattr("aimass.serving._running_replicas", gone)
    with pytest.raises(RuntimeError, match="the cluster went away"):
        experiments.start(ep, ["recs/1=90", "recs/2=10"], metric="play_rate", settings=s)
    assert experiments.get(ep, settings=s) is None
    assert _traffic.current(s, ep).id == before.id


def test_a_stop_while_the_split_of_a_start_is_applied_is_refused(home, monkeypatch):
    """The stop marked the row without arms stopped; the start's split then went in force with nothing judging
    it, and the start wrote its arms onto the stopped row and reported success."""
    s = home
    ep = _deployed(s, "starting")
    real, out = serving.set_traffic, {}

    def applying(*a, **kw):  # set_traffic can take minutes: a stop comes in meanwhile
        try:
            out["stopped"] = experiments.stop(ep, settings=s)
        except ConflictError as err:
            out["refused"] = str(err)
        return real(*a, **kw)

    monkeypatch.setattr(serving, "set_traffic", applying)
    e = experiments.start(ep, ["recs/1=90", "recs/2=10"], metric="play_rate", settings=s)
    assert "stopped" not in out and "is starting (its split is being applied): try again in a moment" in out[
        "refused"], out
    assert e.state == "running" and [a["ref"] for a in e.arms] == ["recs/1", "recs/2"]
    assert _traffic.current(s, ep).experiment_id == e.experiment_id
    monkeypatch.setattr(serving, "set_traffic", real)
    assert experiments.stop(ep, settings=s).state == "stopped"


def test_a_start_whose_experiment_was_ended_meanwhile_rolls_its_split_back(home, monkeypatch):
    """A stop that got in anyway (one that took over the row of a start thought dead): the start must not
    report success with its split in force and the experiment stopped."""
    from datetime import UTC, datetime

    from sqlalchemy import update

    from aimass.catalog import Experiment, engine_for

    s = home
    ep = _deployed(s, "ended")
    before = _traffic.current(s, ep)
    real, calls = serving.set_traffic, []

    def applied_then_ended(*a, **kw):
        split = real(*a, **kw)
        calls.append(split.id)
        if len(calls) == 1:  # the start's own split: the stop lands as it goes in force
            t = Experiment.__table__
            with engine_for(s.catalog).begin() as conn:
                conn.execute(update(t).where(t.c.endpoint == ep, t.c.state == "running")
                             .values(state="stopped", decision="stopped", stopped_at=datetime.now(UTC)))
        return split

    monkeypatch.setattr(serving, "set_traffic", applied_then_ended)
    with pytest.raises(ConflictError, match="was ended while it started") as err:
        experiments.start(ep, ["recs/1=90", "recs/2=10"], metric="play_rate", settings=s)
    assert f"(stopped): its split #{calls[0]} is rolled back to #{before.id}" in str(err.value)
    now = _traffic.current(s, ep)
    assert _in_force(s, ep) == [("recs/1", 100)] and now.experiment_id == before.experiment_id  # its users too
    e = experiments.get(ep, settings=s)
    assert e.state == "stopped" and e.arms == []


def test_a_start_failing_with_the_catalog_away_reports_its_own_failure_and_holds_nothing(home, monkeypatch):
    """The cleanup read the split in force unguarded: its error replaced the start's, and the row without arms
    stayed running, holding the endpoint against every change."""
    s = home
    ep = _deployed(s, "away")
    real = _traffic.current

    def catalog_away(s_, endpoint):
        raise RuntimeError("the catalog went away")

    def fails(*a, **kw):
        monkeypatch.setattr(_traffic, "current", catalog_away)
        raise RuntimeError("the cluster went away")

    monkeypatch.setattr(serving, "set_traffic", fails)
    with pytest.raises(RuntimeError, match="the cluster went away"):
        experiments.start(ep, ["recs/1=90", "recs/2=10"], metric="play_rate", settings=s)
    monkeypatch.setattr(_traffic, "current", real)
    assert experiments.get(ep, settings=s) is None


def test_a_starting_experiment_can_be_stopped_once_its_start_is_past_any_lifetime(settings, monkeypatch):
    """A start killed before it wrote its arms left a row that holds the endpoint: refused while a start could
    still be running, a stop ends it once none could."""
    from datetime import UTC, datetime, timedelta

    from aimass.catalog import Experiment, session

    monkeypatch.setattr("aimass.serving.check_deployed", lambda endpoint, settings=None: None)
    with session(settings) as db:
        row = Experiment(endpoint="dead", experiment_id="d1", metric="play_rate", arms=[])
        db.add(row)
        db.commit()
        rid = row.id
    with pytest.raises(ConflictError, match="experiment d1 on 'dead' is starting"):
        experiments.stop("dead", settings=settings)
    from aimass.experiments import _start_lifetime_s

    with session(settings) as db:
        row = db.get(Experiment, rid)
        row.started_at = datetime.now(UTC) - timedelta(seconds=_start_lifetime_s(settings) + 60)
        db.add(row)
        db.commit()
    assert experiments.stop("dead", settings=settings).state == "stopped"


def test_show_gives_the_weights_of_a_ramp(home):
    s = home
    ep = _deployed(s, "ramp")
    e = experiments.start(ep, ["recs/1=90", "recs/2=10"], metric="play_rate", settings=s)
    serving.set_traffic(ep, ["recs/1=50", "recs/2=50"], experiment_id=e.experiment_id, settings=s)
    assert [(a.arm, a.weight) for a in experiments.show(ep, settings=s).arms] == [("recs/1", 50), ("recs/2", 50)]
    experiments.stop(ep, promote="recs/1", settings=s)  # the split is no longer the experiment's: as started
    assert [(a.arm, a.weight) for a in experiments.show(ep, settings=s).arms] == [("recs/1", 90), ("recs/2", 10)]


def test_a_claim_shows_as_a_stop_under_way_and_is_taken_over_only_once_stale(settings, monkeypatch):
    """A stop whose process died (a kill) leaves its claim: the endpoint must not stay held by it forever, and
    a live one must not be taken over."""
    from datetime import UTC, datetime, timedelta

    from aimass.catalog import Experiment, session
    from aimass.cli.experiments import view_lines
    from aimass.experiments import _claim_lifetime_s, _stale

    monkeypatch.setattr("aimass.serving.check_deployed", lambda endpoint, settings=None: None)
    claim = "stopping: promote m/2 (by bob, since 2026-01-01 00:00:00 UTC)"
    with session(settings) as db:
        row = Experiment(endpoint="held", experiment_id="h1", metric="play_rate", decision=claim,
                         arms=[{"ref": "m/1", "weight": 50}, {"ref": "m/2", "weight": 50}],
                         stopped_at=datetime.now(UTC) - timedelta(seconds=60))
        db.add(row)
        db.commit()
        rid = row.id
    head = view_lines(experiments.show("held", settings=settings))[0]
    assert head.startswith("experiment h1 on held: running since") and head.endswith(f"UTC; {claim}")
    with pytest.raises(ConflictError, match="being stopped or decided elsewhere \\(promote m/2 \\(by bob"):
        experiments.stop("held", settings=settings)
    assert experiments.get("held", settings=settings).decision == claim
    assert not _stale(settings, experiments.get("held", settings=settings))  # the scheduler's check leaves it
    with session(settings) as db:
        row = db.get(Experiment, rid)
        row.stopped_at = datetime.now(UTC) - timedelta(seconds=_claim_lifetime_s(settings) + 60)
        db.add(row)
        db.commit()
    assert _stale(settings, experiments.get("held", settings=settings))  # the scheduler's check looks again
    e = experiments.stop("held", actor="carol", settings=settings)
    assert (e.state, e.decision) == ("stopped", "stopped")


def test_a_split_in_force_before_a_failure_is_reported_in_force_and_one_still_pending_is_failed(home, monkeypatch):
    """set_traffic's wait can fail after the split went active (the cluster stopped while the replicas' reports
    were awaited): the change was made, so it is reported and the deployment record names what answers. One
    that fails before it was decided is marked failed at once, not left pending to hold the endpoint."""
    s = home
    ep = _deployed(s, "late")
    real = _traffic.wait

    def then_fails(s_, split, running, timeout=None):
        real(s_, split, running, timeout)  # activated (no replica: at once)
        raise ConflictError("the serving cluster stopped")

    monkeypatch.setattr(_traffic, "wait", then_fails)
    assert [(a["ref"], a["weight"]) for a in serving.set_traffic(ep, ["recs/2=100"], settings=s).arms] == [
        ("recs/2", 100)]
    record = json.loads((s.home / "serve" / "deployments" / "late.json").read_text())["deployment"]
    assert (record["model"], record["version"]) == ("recs", 2)

    def fails_first(s_, split, running, timeout=None):
        raise ConflictError("the serving cluster stopped")

    monkeypatch.setattr(_traffic, "wait", fails_first)
    with pytest.raises(ConflictError, match="cluster stopped"):
        serving.set_traffic(ep, ["recs/1=100"], settings=s)
    active, pending = _traffic.newest(s, ep)
    assert pending is None and _in_force(s, ep) == [("recs/2", 100)]


def test_counts_too_large_for_the_catalog_are_refused_or_read_as_all(home):
    """--min-samples 1e20 failed with an OverflowError from SQLite; a history or decision count beyond any table
    is all of it."""
    s = home
    ep = _deployed(s, "counts")
    before = _traffic.current(s, ep)
    with pytest.raises(InvalidInputError, match="min_samples must be a whole number of users from 1 to 1e9"):
        experiments.start(ep, ["recs/1=90", "recs/2=10"], metric="play_rate", min_samples=10**20, settings=s)
    assert experiments.get(ep, settings=s) is None and _traffic.current(s, ep).id == before.id
    assert [h.id for h in serving.traffic(ep, history=10**20, settings=s).history] == [before.id]
    assert serving.scaling(ep, limit=10**20, settings=s)["decisions"] == []
    with pytest.raises(InvalidInputError, match="history must be a whole number"):
        serving.traffic(ep, history=-1, settings=s)


def test_a_person_promoting_an_arm_the_offline_gate_refuses_is_told_so_in_the_decision(home):
    """The arm that a person promotes becomes the champion whatever the offline gate says (it won online, or
    the person decided): the decision they read says it went past the gate, and why the gate refused it."""
    s = home
    run = aimass.train("popularity", "demo@v1", None, workers=0, progress=False, settings=s).run_id
    worse = registry.register(run, "recs", settings=s).version
    ep = _deployed(s, "forced")
    experiments.start(ep, ["recs/1=50", f"recs/{worse}=50"], metric="play_rate", settings=s)
    e = experiments.stop(ep, promote=f"recs/{worse}", settings=s)
    assert e.decision.startswith(f"promoted recs/{worse} (champion past the offline gate, which refused it: quality")
    assert registry.get("recs@champion", settings=s).version == worse
