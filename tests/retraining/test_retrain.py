"""The retrain loop end to end on real parts (git+DVC data registry, MLflow store, Ray Train on a local Ray):
feedback events -> a new dataset version with lineage -> a challenger -> the gate's decision, recorded; and
from a served answer back to the dataset version and the events in it. Much of the feedback is on items the
champion itself served (exposed), the rest organic: the gate must not let the first kind decide."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

import aimass
from aimass import datasets, registry, retraining, serving
from aimass.errors import ConflictError, NotFoundError
from aimass.events import EventLog, FeedbackEventBase, ServedLog
from aimass.settings import Settings

pytestmark = pytest.mark.integration
PARAMS = {"window": 5, "neighbors": 50}  # not the defaults: the challenger must get the champion's own


def served_record(s: Settings, endpoint: str, ref: str) -> None:
    """What `aimass deploy` records for an endpoint, without starting Ray Serve: `serving.show` reads it
    (status NOT_RUNNING). The record's layout is serving's; this writes it through serving's own model."""
    info = registry.get(ref, settings=s)
    d = serving.Deployment(endpoint=endpoint, url=f"http://127.0.0.1:1/{endpoint}", model=info.name,
                           version=info.version, family=info.family, requested=ref, dataset=info.dataset,
                           proxy="default", min_replicas=1, max_replicas=1, target_ongoing_requests=8.0,
                           config="", created_at=datetime.now(UTC) - timedelta(hours=1))
    folder = s.home / "serve" / "deployments"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{endpoint}.json").write_text(json.dumps({"deployment": d.model_dump(mode="json"), "args": {}}))


def event(eid: str, user: int, item: int, type_: str, value: float | None = None, ago_s: int = 600,
          request_id: str | None = None):
    return FeedbackEventBase(event_id=eid, user_id=user, item_id=item, type=type_, value=value,
                             timestamp=datetime.now(UTC) - timedelta(seconds=ago_s), request_id=request_id)


def served(s: Settings, engine, request_id: str, user: int, items: list[int] | None = None) -> list[int]:
    """One answer of the endpoint to `user`, in the served-answer log as serving writes it: the champion's own
    top 10 for the user, unless `items` says what was shown."""
    out = engine.recommend(user_id=user, history=None, k=10)
    items = out["items"] if items is None else items
    log = ServedLog(s)
    log.record("recs", request_id, "recommend", engine.info.name, engine.info.version, user, None, items,
               [1.0] * len(items))
    log.flush()
    return items


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    s = Settings(home=tmp_path_factory.mktemp("retrain") / "home")
    inter, items = datasets.generate_demo(s.home.parent / "demo", datasets.DemoConfig(users=100, tracks=120, seed=4))
    datasets.register("demo", inter, "csv", items=items, settings=s)
    run = aimass.train("itemknn", "demo@v1", PARAMS, workers=0, progress=False, settings=s)
    import ray

    ray.shutdown()
    v = registry.register(run.run_id, "recs", settings=s)
    registry.promote("recs", v.version, force=True, settings=s)  # forced: the latency check measures this machine
    served_record(s, "recs", "recs@champion")
    seen = datasets.load("demo@v1", settings=s).interactions
    unseen = lambda u: sorted(set(range(1, 121)) - set(seen.loc[seen.user_id == u, "item_id"]))  # noqa: E731
    a, b, c = unseen(1)[:3]
    positive = [event("p1", 1, a, "play", 0.9, 900), event("p2", 1, b, "like", None, 800),
                event("p3", 2, 9001, "play", 0.7, 700),  # an item the catalogue never had
                event("p4", 777, a, "play", 1.0, 600), event("p5", 777, b, "play", 1.0, 500),
                event("p6", 777, c, "click", None, 400),  # a new user, with enough history to be evaluated
                event("p7", 3, unseen(3)[0], "rating", 5.0, 300)]
    other = [event("n1", 1, c, "skip", 0.1, 850), event("n2", 3, unseen(3)[1], "rating", 1.0, 350),
             event("z1", 2, unseen(2)[0], "impression", None, 650), event("z2", 4, unseen(4)[0], "rating", 3.0)]
    EventLog(s).write("recs", positive + other)
    # What the champion served afterwards: to user 1 the items of p1, p2 (shown after those events: organic
    # still); to users 10-29 their top 10, clicked at the top through the answer's request_id; to 30-34 their
    # top 10, the top one played later without a request_id; user 35 clicked through an answer on an item it
    # did not show (organic); user 36's click names an answer the log lost, on an item an earlier one showed.
    engine = serving.Engine("recs/1", s)
    served(s, engine, "late-1", 1, [a, b, c])
    exposed = [event(f"r{u}", u, served(s, engine, f"req-{u}", u)[0], "click", ago_s=0, request_id=f"req-{u}")
               for u in range(10, 30)]
    exposed += [event(f"e{u}", u, served(s, engine, f"req-{u}", u)[0], "play", 1.0, ago_s=0) for u in range(30, 35)]
    shown35 = served(s, engine, "req-35", 35)
    organic = event("o35", 35, next(i for i in unseen(35) if i not in shown35), "click", ago_s=0, request_id="req-35")
    exposed.append(event("e36", 36, served(s, engine, "req-36", 36)[0], "click", ago_s=0, request_id="req-lost"))
    EventLog(s).write("recs", [*exposed, organic])
    positive += [*exposed, organic]
    result = retraining.retrain("recs", settings=s)
    ray.shutdown()
    yield s, result, positive, other


def test_events_become_a_new_dataset_version_with_lineage(loop):
    s, r, positive, other = loop
    last = EventLog(s).last_seq("recs")
    assert (r.parent_dataset, r.dataset, r.events_after_seq, r.events_through_seq) == ("demo@v1", "demo@v2", 0, last)
    assert (r.events, r.positive, r.negative, r.neutral) == (38, 34, 2, 2)
    link = datasets.lineage("demo@v2", settings=s)
    assert (link.parent, link.endpoint, link.after_seq, link.through_seq, link.events, link.positive) == (
        "demo@v1", "recs", 0, last, 38, 34)
    assert datasets.lineage("demo@v1", settings=s) is None
    meta = json.loads((datasets.pull("demo@v2", settings=s) / "meta.json").read_text())
    assert meta["lineage"]["through_seq"] == last and meta["lineage"]["parent"] == "demo@v1"
    # exactly the positive events were added, as interactions at their own time
    old, new = (datasets.load(f"demo@v{i}", settings=s).interactions for i in (1, 2))
    key = ["user_id", "item_id", "timestamp", "event", "value"]
    added = pd.concat([new[key], old[key], old[key]]).drop_duplicates(keep=False)
    want = {(e.user_id, e.item_id, int(e.timestamp.timestamp()), e.type, 1.0 if e.value is None else e.value)
            for e in positive}
    assert set(map(tuple, added.astype(object).itertuples(index=False))) == want
    assert len(new) == len(old) + len(positive)
    assert datasets.load("demo@v2", settings=s).items.equals(datasets.load("demo@v1", settings=s).items)


def test_the_challenger_is_the_champions_recipe_on_the_new_version(loop):
    s, r, *_ = loop
    assert (r.champion, r.served, r.challenger, r.family) == ("recs/1", "recs/1", "recs/2", "itemknn")
    challenger = registry.get("recs@challenger", settings=s)
    assert challenger.ref == "recs/2" and challenger.dataset == "demo@v2"
    assert aimass.runs.show(r.run_id, settings=s)["job"]["params"] == PARAMS == r.params
    assert json.loads(challenger.tags["aimass.retrain"])["gate_passed"] == r.gate_passed


def test_the_gate_compares_on_the_new_versions_test_split(loop):
    s, r, *_ = loop
    checks = {c.check: c for c in r.gate}
    assert set(checks) == {"dataset", "quality", "latency"}
    assert checks["dataset"].passed and checks["dataset"].detail == (
        "compared on demo@v2's test split (candidate trained on it; champion re-scored; trained on demo@v1)")
    assert "vs champion re-scored" in checks["quality"].detail
    assert "champion's own test_ndcg_at_10 on demo@v1" in checks["quality"].detail
    # the re-scoring is training's own protocol: each model scored this way on its own data gives its metric
    from aimass.registry._gate import rescore

    for ref, ds in (("recs/1", "demo@v1"), ("recs/2", "demo@v2")):
        info = registry.get(ref, settings=s)
        assert rescore(info, ds, settings=s) == pytest.approx(info.metrics["test_ndcg_at_10"], abs=1e-12)
    champ = registry.get("recs/1", settings=s)
    assert checks["quality"].values["champion_whole"] == pytest.approx(rescore(champ, "demo@v2", settings=s))
    assert r.gate_passed == all(c.passed for c in r.gate) and r.promoted == r.gate_passed
    assert r.status == ("promoted" if r.promoted else "kept")
    assert registry.get("recs@champion", settings=s).version == (2 if r.promoted else 1)
    assert ("aimass deploy recs@champion --endpoint recs" if r.promoted else "refuses recs/2") in r.next_step


def test_each_folded_event_is_marked_exposed_or_organic(loop):
    s, r, positive, _ = loop
    marks = retraining.exposure("demo@v2", settings=s)
    by_event = dict(zip(marks["seq"], marks["via"], strict=True))
    seq = dict(zip(*EventLog(s).frame("recs")[["event_id", "seq"]].to_numpy().T, strict=True))
    via = {e.event_id: by_event[seq[e.event_id]] for e in positive}
    assert via == {**{f"r{u}": "request" for u in range(10, 30)},
                   **{f"e{u}": "earlier" for u in (30, 31, 32, 33, 34, 36)},
                   **{e: "" for e in ("p1", "p2", "p3", "p4", "p5", "p6", "p7", "o35")}}
    assert (r.exposed, r.organic) == (26, 8) and r.exposure_record and (marks["exposed"] == (marks["via"] != "")).all()
    assert json.loads(registry.get(r.challenger, settings=s).tags["aimass.retrain"])["exposed"] == 26
    # the marks name the version's own rows: every one is an interaction of demo@v2
    rows = datasets.load("demo@v2", settings=s).interactions[["user_id", "item_id", "timestamp"]]
    assert len(marks[["user_id", "item_id", "timestamp"]].merge(rows)) == len(positive)
    assert retraining.exposure("demo@v1", settings=s) is None


def test_the_gate_decides_on_the_unexposed_test_split(loop):
    """Every exposed target is the champion's own top item: on the whole split the re-scored champion is far
    ahead. The quality check must compare the two on the other users, and say so with both figures."""
    from aimass.registry._gate import rescore, run_gate

    s, r, *_ = loop
    q = {c.check: c for c in r.gate}["quality"]
    v = q.values
    assert (v["users"], v["exposed_users"], v["unexposed_users"], v["on_unexposed"]) == (101, 26, 75, 1.0)
    assert q.detail.startswith("on demo@v2's unexposed test split (75 of 101 users; targets the served model had "
                               "shown were left out: they favour it): test_ndcg_at_10 ")
    assert f"; whole split: {v['candidate_whole']:.4f} vs {v['champion_whole']:.4f}" in q.detail
    # the numbers compared are the unexposed users', recomputed here from the record and the version's rows
    inter = datasets.load("demo@v2", settings=s).interactions  # in time order: a user's last row is the target
    last = inter[inter.groupby("user_id")["item_id"].transform("size") >= 3].groupby("user_id").tail(1)
    marks = retraining.exposure("demo@v2", settings=s)
    hit = last.merge(marks.loc[marks["exposed"], ["user_id", "item_id", "timestamp"]], how="left", indicator=True)
    users = hit.loc[hit["_merge"] == "left_only", "user_id"].to_numpy()
    champ, chall = (registry.get(ref, settings=s) for ref in ("recs/1", "recs/2"))
    assert len(users) == 75
    assert v["champion"] == v["champion_unexposed"] == pytest.approx(rescore(champ, "demo@v2", settings=s,
                                                                             users=users), abs=1e-12)
    assert v["candidate"] == v["candidate_unexposed"] == pytest.approx(rescore(chall, "demo@v2", settings=s,
                                                                               users=users), abs=1e-12)
    assert v["candidate_whole"] == chall.metrics["test_ndcg_at_10"]
    assert q.passed == (v["candidate"] >= v["champion"] * 0.99)
    # the loop at work: every exposed target is the champion's own top pick, a hit at rank 1 for it
    assert rescore(champ, "demo@v2", settings=s, users=hit.loc[hit["_merge"] == "both", "user_id"]) == 1.0
    whole, part = v["candidate_whole"] / v["champion_whole"], v["candidate"] / v["champion"]
    assert whole < min(part, 1.0)
    # a tolerance between the two: the unexposed split passes the challenger, the whole split would not
    tolerance = 1 - (whole + min(part, 1.0)) / 2

    def quality(**kw):
        checks = run_gate(chall, champ, tolerance, 1e9, "test_ndcg_at_10", settings=s, **kw)
        return next(c for c in checks if c.check == "quality")

    on_part, on_whole = quality(), quality(min_unexposed_users=76)
    assert on_part.passed and on_part.values["on_unexposed"] == 1.0
    assert not on_whole.passed and on_whole.values["on_unexposed"] == 0.0
    assert on_whole.detail.startswith("on demo@v2's whole test split (only 75 of 101 users' targets were "
                                      "unexposed, fewer than 76): ")
    assert f"; unexposed split: {v['candidate']:.4f} vs {v['champion']:.4f}" in on_whole.detail


def test_a_fold_without_an_exposure_record_is_left_out_of_the_unexposed_split(loop):
    """A version derived by hand (or before records were kept) cannot tell exposed from organic: its folded
    targets are all left out, and the check says which version lacks the record."""
    from aimass.registry._gate import run_gate

    s, r, *_ = loop
    path = s.home / "exposure" / "demo" / "v2.parquet"
    assert str(path) == r.exposure_record
    aside = path.with_name("aside.parquet")
    path.rename(aside)
    try:
        champ, chall = (registry.get(ref, settings=s) for ref in ("recs/1", "recs/2"))
        q = next(c for c in run_gate(chall, champ, 0.01, 1e9, "test_ndcg_at_10", settings=s) if c.check == "quality")
    finally:
        aside.rename(path)
    # folded targets: users 1, 2, 3, 777 and 10-36; the other 70 never sent a positive event
    assert (q.values["unknown_users"], q.values["exposed_users"], q.values["unexposed_users"]) == (31, 0, 70)
    assert q.detail.startswith("on demo@v2's unexposed test split (70 of 101 users; targets the served model had "
                               "shown were left out: they favour it; 31 targets of unknown exposure counted as exposed "
                               "(no exposure record for demo@v2)): ")


def test_every_retrain_is_recorded(loop):
    s, r, *_ = loop
    [h] = retraining.history("recs", settings=s)
    assert h == r and h.record and json.loads(open(h.record).read())["dataset"] == "demo@v2"


def test_lineage_leads_from_a_served_answer_to_the_events(loop):
    s, r, positive, other = loop
    engine = serving.Engine(r.challenger, s)
    answer = {**engine.recommend(user_id=777, history=None, k=5), **engine.card()}
    assert answer["strategy"] == "model" and len(answer["items"]) == 5  # the new user is known now
    link = datasets.lineage(answer["dataset"], settings=s)
    events = EventLog(s).frame(link.endpoint, after_seq=link.after_seq, through_seq=link.through_seq)
    assert set(events["event_id"]) == {e.event_id for e in positive + other}
    assert 9001 in engine.item_ids  # a new item joined the catalogue


def test_a_retrain_without_new_events_refuses_and_changes_nothing(loop):
    s, r, *_ = loop
    before = ([v.ref for v in datasets.versions("demo", settings=s)],
              [(v.version, v.aliases) for v in registry.versions("recs", settings=s)])
    with pytest.raises(ConflictError, match=r"no new events for endpoint 'recs' after seq 38 \("):
        retraining.retrain("recs", reason="schedule", settings=s)
    EventLog(s).write("recs", [event("n3", 5, 7, "skip", 0.1), event("z3", 5, 8, "impression")])
    with pytest.raises(ConflictError, match=r"no new positive events for endpoint 'recs' after seq 38 .*: 2 new "
                                            r"events \(seq 39\.\.40\), 0 positive, 1 negative, 1 neutral"):
        retraining.retrain("recs", reason="volume", settings=s)
    after = ([v.ref for v in datasets.versions("demo", settings=s)],
             [(v.version, v.aliases) for v in registry.versions("recs", settings=s)])
    assert after == before
    h = retraining.history("recs", settings=s)
    assert [x.status for x in h] == ["nothing-new", "nothing-new", r.status] and h[0].reason == "volume"
    with pytest.raises(NotFoundError, match="no deployment named 'ghost'"):
        retraining.retrain("ghost", settings=s)


def test_a_failed_retrain_records_its_error_with_passwords_masked(loop, monkeypatch):
    """A store's client names the URL it called, password included; the record keeps the line, masked."""
    s, *_ = loop

    def unreachable(*args, **kwargs):
        raise ConnectionError("API request to https://ops:s3cret-pw@mlflow.example/api/2.0/runs failed\nmore")

    monkeypatch.setattr(retraining, "_run", unreachable)
    with pytest.raises(ConnectionError):
        retraining.retrain("recs", reason="schedule", settings=s)
    h = retraining.history("recs", settings=s)[0]
    assert h.status == "failed" and "https://ops:***@mlflow.example" in h.error and h.error.endswith("failed")
    assert "s3cret-pw" not in Path(h.record).read_text()


def test_triggers_and_the_scheduler_tick(settings):
    """No Ray, no training: a deployment record, events, drift reports and a fake clock and launcher."""
    from aimass.retraining import Scheduler
    from aimass.retraining._scheduler import Launched

    inter, items = datasets.generate_demo(settings.home.parent / "d", datasets.DemoConfig(users=10, tracks=20))
    datasets.register("demo", inter, "csv", items=items, settings=settings)
    deployed = datetime.now(UTC) - timedelta(hours=1)
    served = serving.Deployment(endpoint="e1", url="", model="m", version=1, family="itemknn", requested="m/1",
                                dataset="demo@v1", proxy="default", min_replicas=1, max_replicas=1,
                                target_ongoing_requests=8.0, config="", created_at=deployed)
    (settings.home / "serve" / "deployments").mkdir(parents=True)
    (settings.home / "serve" / "deployments" / "e1.json").write_text(json.dumps(
        {"deployment": served.model_dump(mode="json"), "args": {}}))
    now = deployed.timestamp() + 3600
    off = settings.model_copy()
    assert retraining.due("e1", settings=off, now=now) is None
    s = settings.model_copy(update={"retrain_min_events": 3, "retrain_interval_s": 7200.0, "retrain_on_drift": True,
                                    "monitor_interval_s": 600.0})
    EventLog(s).write("e1", [event(f"x{i}", 1, i, "play") for i in range(2)])
    assert retraining.due("e1", settings=s, now=now) is None
    assert retraining.due("e1", settings=s, now=now + 3600) == "schedule"
    EventLog(s).write("e1", [event("x9", 1, 9, "skip"), event("x8", 1, 8, "impression")])
    assert retraining.due("e1", settings=s, now=now) is None  # they fold to no row: no volume of new data
    EventLog(s).write("e1", [event("x10", 1, 10, "like")])
    assert retraining.due("e1", settings=s, now=now) == "volume"
    report = s.home / "monitoring" / "e1" / "r1" / "summary.json"
    report.parent.mkdir(parents=True)

    def drift_summary(drifted: bool, at: datetime, version: int = 1) -> None:
        """The fields of a drift report's summary.json (aimass.monitoring.DriftReport) the triggers read."""
        report.write_text(json.dumps({"model": "m", "version": version, "drifted": drifted,
                                      "window_end": at.isoformat(), "created_at": at.isoformat()}))

    drift_summary(True, deployed - timedelta(minutes=1))
    assert retraining.due("e1", settings=s, now=now) == "volume"  # a report older than the deployment
    drift_summary(True, datetime.now(UTC))
    assert retraining.due("e1", settings=s, now=now) == "drift"

    clock, drifts, launched = [now], [], []

    class Proc:
        code = None

        def poll(self):
            return self.code

    def launch(endpoint, reason):
        launched.append((endpoint, reason))
        return Proc()

    sched = Scheduler(s, clock=lambda: clock[0], endpoints=lambda: ["e1"], drift=drifts.append, launch=launch)
    assert sched.tick() == {"e1": ["drift-report", "retrain:drift"]}
    clock[0] += 60
    assert sched.tick() == {"e1": []}  # the report is not due yet, and one retrain runs at a time
    sched.launched["e1"].proc.code = 0  # it ended without a record (it could not start): recorded as failed
    clock[0] += 60
    assert sched.tick() == {"e1": []}
    lost = retraining.history("e1", settings=s)[0]
    assert lost.status == "failed" and "exited with code 0 without writing its record" in lost.error
    clock[0] += 600
    assert sched.tick() == {"e1": ["drift-report"]}  # retried after retrain_retry_s, not sooner
    clock[0] = lost.finished_at.timestamp() + s.retrain_retry_s + 1
    assert sched.tick() == {"e1": ["drift-report", "retrain:drift"]}
    assert drifts == ["e1", "e1", "e1"] and launched == [("e1", "drift")] * 2

    def no_traffic(endpoint):
        raise NotFoundError(f"no traffic at {endpoint}")

    quiet = Scheduler(s, clock=lambda: clock[0], endpoints=lambda: ["e1"], drift=no_traffic, launch=launch)
    quiet.launched["e1"] = Launched(clock[0], Proc(), "drift")
    assert quiet.tick() == {"e1": []}  # skipped quietly, and the running retrain is left alone

    def cannot_start(endpoint, reason):
        raise OSError("no space left on device")

    broken = Scheduler(s, clock=lambda: clock[0], endpoints=lambda: ["e1"], drift=drifts.append,
                       launch=cannot_start)
    assert broken.tick() == {"e1": ["drift-report"]}  # logged; the tick goes on to the next endpoint
    assert retraining.history("e1", settings=s)[0].error == \
        "the retrain process did not start: no space left on device"
    clock[0] += 60
    assert broken.tick() == {"e1": []} and drifts.pop() == "e1"  # and waits before trying again

    # An attempt that failed after it read the 3 new events: their count still holds (they were not folded),
    # so it is retried, after retrain_retry_s, not at every tick.
    from aimass.retraining import RetrainResult, _records

    failed_at = clock[0]
    _records.write(s, RetrainResult(endpoint="e1", reason="volume", status="failed", served="m/1",
                                    events_through_seq=3, started_at=datetime.fromtimestamp(failed_at, UTC),
                                    error="out of memory"))
    assert retraining.due("e1", settings=s, now=failed_at + 60) is None
    # one that failed after training longer than the wait waits as long from its end
    long = _records.write(s, RetrainResult(endpoint="e1", reason="volume", status="failed", served="m/1",
                                           events_through_seq=3, error="out of memory",
                                           started_at=datetime.fromtimestamp(failed_at + 1, UTC),
                                           finished_at=datetime.fromtimestamp(failed_at + 2 * s.retrain_retry_s,
                                                                              UTC)))
    assert retraining.due("e1", settings=s, now=failed_at + 2 * s.retrain_retry_s + 60) is None
    long.unlink()
    # after it, every cause that held still holds: the drift report it did not answer, and the 3 events
    assert retraining.due("e1", settings=s, now=failed_at + s.retrain_retry_s + 1) == "drift"
    drift_summary(False, datetime.now(UTC))
    assert retraining.due("e1", settings=s, now=failed_at + s.retrain_retry_s + 1) == "volume"
    # An attempt that retrained the served m/1 (kept: the gate refused): a later report about m/1, which
    # still serves, does not start another one; once m/2 is deployed, its own drift does.
    done_at = failed_at + s.retrain_retry_s + 10
    _records.write(s, RetrainResult(endpoint="e1", reason="drift", status="kept", served="m/1", challenger="m/2",
                                    events_through_seq=3, started_at=datetime.fromtimestamp(done_at, UTC)))
    # ... and a later attempt on m/1 that found nothing new does not undo that answer
    _records.write(s, RetrainResult(endpoint="e1", reason="schedule", status="nothing-new", served="m/1",
                                    events_through_seq=3, started_at=datetime.fromtimestamp(done_at + 5, UTC)))
    drift_summary(True, datetime.fromtimestamp(done_at + 30, UTC))
    assert retraining.due("e1", settings=s, now=done_at + 60) is None
    redeployed = served.model_copy(update={"version": 2, "requested": "m/2",
                                           "created_at": datetime.fromtimestamp(done_at + 20, UTC)})
    (settings.home / "serve" / "deployments" / "e1.json").write_text(json.dumps(
        {"deployment": redeployed.model_dump(mode="json"), "args": {}}))
    assert retraining.due("e1", settings=s, now=done_at + 60) is None  # that report is about m/1
    drift_summary(True, datetime.fromtimestamp(done_at + 30, UTC), version=2)
    assert retraining.due("e1", settings=s, now=done_at + 60) == "drift"
    # An attempt about m/2 that found nothing new to fold did not answer its drift: a later report starts one.
    _records.write(s, RetrainResult(endpoint="e1", reason="drift", status="nothing-new", served="m/2",
                                    events_through_seq=3, started_at=datetime.fromtimestamp(done_at + 40, UTC)))
    assert retraining.due("e1", settings=s, now=done_at + 60) is None  # the report predates that attempt
    drift_summary(True, datetime.fromtimestamp(done_at + 50, UTC), version=2)
    assert retraining.due("e1", settings=s, now=done_at + 60) == "drift"
    # While a canary runs on the endpoint, its decision comes first: nothing is due, and a retrain refuses.
    from aimass.catalog import Experiment, session

    with session(s) as db:
        db.add(Experiment(endpoint="e1", experiment_id="x1", arms=[{"ref": "m/2", "weight": 90},
                                                                   {"ref": "m/3", "weight": 10}],
                          metric="positive_rate", auto=True))
        db.commit()
    assert retraining.due("e1", settings=s, now=done_at + 60) is None
    attempts = len(retraining.history("e1", settings=s))
    with pytest.raises(ConflictError, match=r"a canary runs on endpoint 'e1' \(experiment x1\)"):
        retraining.retrain("e1", settings=s)
    assert len(retraining.history("e1", settings=s)) == attempts


def test_events_that_only_repeat_rows_the_dataset_holds_are_nothing_new(loop):
    """A re-sent play of a user's last item (stamped at or before it) is the same row as the one the dataset
    holds: the derived content was the parent itself, and the retrain trained on unchanged data and could
    promote it, with no lineage recorded (so the next fold took the same events again)."""
    s, *_ = loop
    champion = registry.get("recs@champion", settings=s)
    rows = datasets.load(champion.dataset, settings=s).interactions
    plays = rows[rows["event"] == "play"]
    last = plays.loc[plays.groupby("user_id")["timestamp"].idxmax()].iloc[0]  # a play that is its user's latest
    last = rows[rows["user_id"] == last["user_id"]].iloc[-1]
    before = ([v.ref for v in datasets.versions("demo", settings=s)],
              [(v.version, v.aliases) for v in registry.versions("recs", settings=s)])
    at = datetime.fromtimestamp(int(last["timestamp"]), UTC)
    EventLog(s).write("recs", [FeedbackEventBase(event_id="again-1", user_id=int(last["user_id"]),
                                                 item_id=int(last["item_id"]), type=str(last["event"]),
                                                 value=float(last["value"]), timestamp=at)])
    with pytest.raises(ConflictError, match="add no interaction that .* does not hold already"):
        retraining.retrain("recs", reason="volume", settings=s)
    after = ([v.ref for v in datasets.versions("demo", settings=s)],
             [(v.version, v.aliases) for v in registry.versions("recs", settings=s)])
    assert after == before and retraining.history("recs", settings=s)[0].status == "nothing-new"


def test_a_champion_trained_on_gpus_is_retrained_on_cpu_where_there_is_none(loop):
    """A model trained on a GPU machine, served and retrained in a home without one: the unattended loop would
    fail at every trigger; the same recipe trains on CPU and the attempt says so."""
    import torch

    from aimass.tracking import TAG, client

    s, *_ = loop
    champion = registry.get("recs@champion", settings=s)
    info = champion
    while info.method != "original" and info.parent_version is not None:
        info = registry.get(f"{info.name}/{info.parent_version}", settings=s)
    job = json.loads(client(s).get_run(info.run_id).data.tags[f"{TAG}job"])
    client(s).set_tag(info.run_id, f"{TAG}job", json.dumps({**job, "gpu": True}))
    try:
        rows = datasets.load(champion.dataset, settings=s).interactions
        new = sorted(set(range(1, 121)) - set(rows.loc[rows.user_id == 7, "item_id"]))[:2]
        EventLog(s).write("recs", [event(f"gpu{i}", 7, item, "like") for i, item in enumerate(new)])
        r = retraining.retrain("recs", reason="volume", promote=False, settings=s)
    finally:
        client(s).set_tag(info.run_id, f"{TAG}job", json.dumps(job))
    assert r.status == "challenger" and r.challenger is not None, (r.status, r.error)
    if torch.cuda.device_count() == 0:
        assert r.notes == ["the champion's job asked for GPU workers; a GPU asked for but this process sees none: "
                           "retrained on CPU"]
        assert aimass.runs.show(r.run_id, settings=s)["job"]["gpu"] is False
    else:  # a machine with a GPU trains the recipe as it was
        assert r.notes == [] and aimass.runs.show(r.run_id, settings=s)["job"]["gpu"] is True
    assert retraining.history("recs", settings=s)[0].notes == r.notes


def test_a_retry_after_a_failure_past_the_fold_trains_on_the_version_it_derived(loop, monkeypatch):
    """The first attempt derived a version and failed in training; an impression came before the retry. The
    retry's rows are the same, so the same version: it was refused as "nothing new" (and the scheduler took
    the events as done), the positives never trained on."""
    import aimass.training

    s, *_ = loop
    rows = datasets.load(registry.get("recs@champion", settings=s).dataset, settings=s).interactions
    new = sorted(set(range(1, 121)) - set(rows.loc[rows.user_id == 8, "item_id"]))[:2]
    EventLog(s).write("recs", [event(f"retry{i}", 8, item, "play", 1.0) for i, item in enumerate(new)])

    def broken(*args, **kwargs):
        raise RuntimeError("worker lost")

    with monkeypatch.context() as m:
        m.setattr(aimass.training, "train", broken)
        with pytest.raises(RuntimeError, match="worker lost"):
            retraining.retrain("recs", reason="volume", promote=False, settings=s)
    failed = retraining.history("recs", settings=s)[0]
    derived = datasets.versions("demo", settings=s)[-1]
    assert failed.status == "failed" and failed.dataset == derived.ref
    EventLog(s).write("recs", [event("retry-imp", 8, new[0], "impression")])
    r = retraining.retrain("recs", reason="volume", promote=False, settings=s)
    assert r.status == "challenger" and r.dataset == derived.ref, (r.status, r.error)
    lin = datasets.lineage(derived.ref, settings=s)
    assert r.events_through_seq == lin.through_seq == failed.events_through_seq < EventLog(s).last_seq("recs")
    assert [v.ref for v in datasets.versions("demo", settings=s)][-1] == derived.ref  # no version more


def test_a_champion_on_a_dataset_with_its_own_split_is_refused_before_the_events_are_read(settings, tmp_path,
                                                                                          monkeypatch):
    """An ml1m-seq dataset's roles are fixed by its source: derive refuses new rows, and the retrain read the
    endpoint's whole event log first, at every trigger."""
    from types import SimpleNamespace

    from aimass.errors import InvalidInputError
    from aimass.retraining import _fold

    folder = tmp_path / "seq"
    folder.mkdir()
    for name, text in {"train_input.txt": "1 2\n2 3\n", "val_input.txt": "1 2 3\n", "val_output.txt": "1\n",
                       "test_output.txt": "2\n1\n"}.items():
        (folder / name).write_text(text)
    datasets.register("seq", folder, "ml1m-seq", settings=settings)
    monkeypatch.setattr(retraining, "_champion", lambda d, s: SimpleNamespace(ref="m/1", dataset="seq@v1"))
    monkeypatch.setattr(retraining, "_training_job", lambda info, s: {"family": "itemknn", "params": {}})
    monkeypatch.setattr(_fold, "collect", lambda *a: pytest.fail("the events were read"))
    r = retraining.RetrainResult(endpoint="e", reason="manual", started_at=datetime.now(UTC), served="m/1")
    with pytest.raises(InvalidInputError, match=r"m/1 was trained on seq@v1, which has its own evaluation split"):
        retraining._run(r, SimpleNamespace(endpoint="e"), False, False, settings, None)
