"""Traffic splits on a real Ray Serve: sticky arms named in every answer, a shadow that is logged and never
returned, bad changes refused with the split in force unchanged, and changes under steady load (split twice,
a version swap, a rollback, a broken version) that lose no request and answer no 5xx."""
from __future__ import annotations

import shutil
import threading
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from aimass import events, registry, serving
from aimass.errors import BackendError, ConflictError, InvalidInputError, NotFoundError
from aimass.serving import _traffic

pytestmark = pytest.mark.integration
USERS = list(range(1, 41))


@pytest.fixture(scope="module")
def ab(served, tmp_path_factory):
    """Endpoint 'ab' serving recs/1 (item-kNN), plus recs/2 (the same model, another version) and broken/1,
    a version whose weights were damaged after registration."""
    import mlflow

    s = served.settings
    one = registry.get("recs/1", settings=s)
    two = registry.register(one.run_id, "recs", settings=s)
    from aimass.tracking import client

    client(s)
    copy = Path(mlflow.artifacts.download_artifacts(f"models:/recs/{one.version}",
                                                    dst_path=str(tmp_path_factory.mktemp("broken"))))
    damaged = [p for p in copy.rglob("*") if p.is_file() and p.name != "MLmodel" and p.suffix != ".yaml"
               and "requirements" not in p.name and p.suffix != ".txt"]
    assert damaged, list(copy.rglob("*"))
    for p in damaged:
        p.write_bytes(b"not a model")
    broken = registry.register(one.run_id, "broken", model_uri=str(copy), settings=s)
    d = serving.deploy("recs/1", "ab", settings=s)
    yield {"url": d.url, "one": one.ref, "two": two.ref, "broken": broken.ref}
    shutil.rmtree(copy, ignore_errors=True)  # the endpoint goes with the package's cluster (a delete costs ~20 s)


def _ask(served, url: str, user: int) -> dict:
    r = served.client.post(url + "/recommend", json={"user_id": user, "k": 5},
                           headers={"Authorization": f"Bearer {served.keys['consumer']}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_split_is_sticky_per_user_and_named_in_every_answer(served, ab):
    s = served.settings
    split = serving.set_traffic("ab", [f"{ab['one']}=50", "ranker/1=50"], settings=s)  # across families
    assert [a["ref"] for a in split.arms] == [ab["one"], "ranker/1"] and split.state == "active"
    first = {u: _ask(served, ab["url"], u) for u in USERS}
    again = {u: _ask(served, ab["url"], u) for u in USERS}
    assert {a["arm"] for a in first.values()} == {ab["one"], "ranker/1"}  # both arms serve
    for u in USERS:
        assert first[u]["arm"] == again[u]["arm"] == _arm_of(split, u)  # sticky, and by the documented hash
        assert first[u]["experiment_id"] == split.experiment_id
        assert f"{first[u]['model']}/{first[u]['version']}" == first[u]["arm"]
    view = serving.traffic("ab", settings=s)
    assert view.split.id == split.id and view.replicas and all(r["state"] == "active" for r in view.replicas)

    ramp = serving.set_traffic("ab", [f"{ab['one']}=20", "ranker/1=80"], settings=s)  # weights only: a ramp
    assert ramp.experiment_id == split.experiment_id
    for u in USERS:
        if first[u]["arm"] == "ranker/1":  # the growing arm keeps every user it had
            assert _ask(served, ab["url"], u)["arm"] == "ranker/1"
    # the ramp's end: the deployment names the arm that answers, not the first one listed (with no traffic)
    serving.set_traffic("ab", [f"{ab['one']}=0", "ranker/1=100"], settings=s)
    assert (serving.show("ab", settings=s).model, _ask(served, ab["url"], USERS[0])["arm"]) == ("ranker", "ranker/1")


def _arm_of(split, user: int) -> str:
    b = _traffic.bucket(split.experiment_id, user)
    return next(ref for ref, upper in _traffic.bounds(split.arms) if b < upper)


def test_bad_changes_are_refused_and_the_split_stays(served, ab):
    s = served.settings
    before = serving.set_traffic("ab", [f"{ab['one']}=100"], settings=s)
    cases = [
        (InvalidInputError, "sum to 100", dict(arms=[f"{ab['one']}=60", "ranker/1=30"])),
        (NotFoundError, "99", dict(arms=["recs/99=100"])),
        (InvalidInputError, "also a live arm", dict(arms=[f"{ab['one']}=100"], shadow=ab["one"])),
        (InvalidInputError, "REF=WEIGHT", dict(arms=["recs/1:100"])),
        (InvalidInputError, "named twice", dict(arms=[f"{ab['one']}=50", f"{ab['one']}=50"])),
    ]
    for err, words, kw in cases:
        with pytest.raises(err, match=words):
            serving.set_traffic("ab", settings=s, **kw)
    with pytest.raises(NotFoundError, match="no deployment named 'nowhere'"):
        serving.set_traffic("nowhere", [f"{ab['one']}=100"], settings=s)
    with pytest.raises(InvalidInputError, match="single-model"):
        serving.set_traffic("multi", ["ranker/1=100"], settings=s)
    # two changes at once: the second is refused while the first is pending
    pending = _traffic.propose(s, "ab", [_traffic.Arm(ref="ranker/1", weight=100)], None)
    try:
        with pytest.raises(ConflictError, match="in progress"):
            serving.set_traffic("ab", [f"{ab['one']}=50", "ranker/1=50"], settings=s)
    finally:
        _traffic.decide(s, pending.id, "failed", "test")
    assert serving.traffic("ab", settings=s).split.id == before.id
    assert {_ask(served, ab["url"], u)["arm"] for u in USERS[:10]} == {ab["one"]}


def test_a_broken_model_is_refused_at_its_first_deploy_even_with_no_replica_to_start(served, ab):
    """With --min-replicas 0 no replica would load the model before a first request: a replica is tried aside,
    and a model that cannot load is refused with nothing deployed, no split and no record."""
    from ray import serve

    s = served.settings
    with pytest.raises(BackendError, match="did not start"):
        serving.deploy(ab["broken"], "lazy", min_replicas=0, settings=s)
    assert "lazy" not in [d.endpoint for d in serving.deployments(settings=s)]
    assert _traffic.current(s, "lazy") is None
    assert not {"lazy", "lazy.preflight"} & set(serve.status().applications)


def test_shadow_is_logged_and_never_returned(served, ab):
    s = served.settings
    split = serving.set_traffic("ab", [f"{ab['one']}=100"], shadow="ranker/1", settings=s)
    answers = [_ask(served, ab["url"], u) for u in USERS]
    assert {a["arm"] for a in answers} == {ab["one"]}
    log = events.ServedLog(s)
    rids = {a["request_id"] for a in answers}
    for _ in range(100):  # written off the request path: wait (bounded) for the log
        shadow = log.frame("ab", shadow=True, experiment_id=split.experiment_id)
        if rids <= set(shadow["request_id"]):
            break
        threading.Event().wait(0.1)
    shadow = shadow[shadow["request_id"].isin(rids)]
    assert set(shadow["request_id"]) == rids and set(shadow["arm"]) == {"ranker/1"}
    assert shadow["overlap"].between(0, 1).all() and (shadow["latency_ms"] > 0).all()
    live = log.frame("ab", experiment_id=split.experiment_id)
    assert not live["shadow"].any() and rids <= set(live["request_id"])


def test_a_cached_answer_never_outlives_a_version_change(served, ab):
    """The replica's answer cache (aimass.serving._cache) is per version: a split that moves a user to another
    version answers from that version at once."""
    s = served.settings
    serving.set_traffic("ab", [f"{ab['one']}=100"], settings=s)
    user = USERS[0]
    first, again = _ask(served, ab["url"], user), _ask(served, ab["url"], user)  # the second from the cache
    assert again["items"] == first["items"] and again["arm"] == ab["one"]
    serving.set_traffic("ab", [f"{ab['two']}=100"], settings=s)
    moved = _ask(served, ab["url"], user)
    assert moved["arm"] == ab["two"] and f"{moved['model']}/{moved['version']}" == ab["two"]
    serving.set_traffic("ab", ["ranker/1=100"], settings=s)
    other = _ask(served, ab["url"], user)
    assert other["arm"] == "ranker/1" and (other["model"], other["version"]) == ("ranker", 1)


def test_changes_under_load_lose_no_request(served, ab):
    """Steady load on 127.0.0.1 while the split changes twice, the version is swapped by a deploy, rolled back,
    and a broken version is refused: every request answered 200, each user one arm per experiment."""
    s = served.settings
    serving.set_traffic("ab", [f"{ab['one']}=100"], settings=s)
    stop = threading.Event()
    results: list[tuple[int, int, str | None, str | None]] = []

    def client(users: list[int]) -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                for u in users:
                    try:
                        r = c.post(ab["url"] + "/recommend", json={"user_id": u, "k": 5},
                                   headers={"Authorization": f"Bearer {served.keys['consumer']}"})
                        body = r.json() if r.status_code == 200 else {}
                        results.append((u, r.status_code, body.get("arm"), body.get("experiment_id")))
                    except httpx.HTTPError as e:
                        results.append((u, 0, type(e).__name__, None))

    threads = [threading.Thread(target=client, args=(USERS[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        serving.set_traffic("ab", [f"{ab['one']}=90", f"{ab['two']}=10"], settings=s)
        serving.set_traffic("ab", [f"{ab['one']}=50", "ranker/1=50"], settings=s)
        d = serving.deploy(ab["two"], "ab", settings=s)  # a swap: through the split, the replicas stay
        assert (d.model, d.version) == ("recs", int(ab["two"].split("/")[1]))
        back = serving.rollback("ab", settings=s)
        assert [a["ref"] for a in back.arms] == [ab["one"], "ranker/1"]
        # new code: other replica settings restart every replica (Serve's rolling update), the split stays
        serving.deploy(ab["one"], "ab", settings=s.model_copy(update={"serve_max_body_bytes": 70_000}))
        assert serving.traffic("ab", settings=s).split.id > back.id
        with pytest.raises(BackendError, match="could not load"):
            serving.set_traffic("ab", [f"{ab['one']}=50", f"{ab['broken']}=50"], settings=s)
        # new code whose replicas cannot start (here: settings they refuse): refused, the running ones stay
        with pytest.raises(BackendError, match="did not start"):
            serving.deploy(ab["one"], "ab", settings=s.model_copy(update={"feedback_positive": ["play>>3"]}))
        assert serving.show("ab", settings=s).status == "RUNNING"
        threading.Event().wait(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    bad = [r for r in results if r[1] != 200]
    assert not bad, bad[:5]
    assert len(results) > 100
    arms = defaultdict(set)
    for u, _, arm, exp in results:
        arms[(u, exp)].add(arm)
    assert all(len(v) == 1 for v in arms.values()), {k: v for k, v in arms.items() if len(v) > 1}
    assert ab["broken"] not in {r[2] for r in results}
    assert len({exp for _, _, _, exp in results}) >= 3  # the load really spanned the changes


@pytest.fixture(scope="module")
def loop(served):
    """Endpoint 'loop' serving recs/1, with plays of items it did not show (organic, for at least the gate's
    50 users: the gate decides on them): what a retrain folds in."""
    s = served.settings
    d = serving.deploy("recs/1", "loop", settings=s)
    for u in range(1, 56):
        shown = _ask(served, d.url, u)["items"]
        played = _feedback(served, d.url, f"seed-{u}", u, next(i for i in range(1, 121) if i not in shown), None)
        assert played.status_code == 200, played.text
    return d  # stopped with the package's cluster


def _feedback(served, url: str, eid: str, user: int, item: int, request_id: str | None) -> httpx.Response:
    import time

    return served.client.post(url + "/feedback", json={"event_id": eid, "user_id": user, "item_id": item,
                                                       "type": "play", "timestamp": time.time(),
                                                       "request_id": request_id},
                              headers={"Authorization": f"Bearer {served.keys['consumer']}"})


def _traffic_with_plays(served, url: str, rates: dict[str, float], tag: str, endpoint: str = "loop") -> None:
    """300 users ask once each (the 60 of the demo data and 240 new ones: users are the experiment's unit, 100
    per arm at least); an answer from arm A is played with probability rates[A]."""
    import random
    import time

    rng = random.Random(7)
    asked = set()
    for u in [*range(1, 61), *range(1001, 1241)]:
        a = _ask(served, url, u)
        asked.add(a["request_id"])
        if rng.random() < rates.get(a["arm"], 0.0):
            assert _feedback(served, url, f"{tag}-{u}", u, a["items"][0], a["request_id"]).status_code == 200
    log, deadline = events.ServedLog(served.settings), time.monotonic() + 30
    # answers are logged off the request path: every one of them in the log before the experiment is read
    while not asked <= set(log.frame(endpoint, columns=["request_id"])["request_id"]):
        assert time.monotonic() < deadline, "the answers were not all logged within 30 s"
        time.sleep(0.1)


def _decision(experiments, s, timeout: float = 30.0) -> str | None:
    """The decision of the loop's experiment once another look (the scheduler's) has finished making it."""
    import time

    deadline = time.monotonic() + timeout
    while (e := experiments.get("loop", settings=s)).state == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    return e.decision


def test_a_retrained_challenger_goes_out_as_a_canary_and_wins(served, loop):
    """retrain -> canary (half the users) -> the challenger's answers are played far more -> the check the
    scheduler runs promotes it: all the traffic, and champion."""
    from aimass import experiments, retraining

    # half the users, and a gate that tolerates the noise of a 60-user test split (the canary is the test here)
    s = served.settings.model_copy(update={"canary_percent": 50, "gate_tolerance": 0.2})
    r = retraining.retrain("loop", settings=s)
    import ray

    ray.shutdown()  # the retrain's training cluster
    assert r.gate_passed, [c.detail for c in r.gate]
    assert r.status == "canary" and r.canary, r
    split = serving.traffic("loop", settings=s).split
    assert [a["ref"] for a in split.arms] == ["recs/1", r.challenger] and split.experiment_id == r.canary
    assert experiments.check("loop", settings=s) is None  # nothing served yet: still collecting
    _traffic_with_plays(served, loop.url, {r.challenger: 0.6, "recs/1": 0.1}, tag="win")
    view = experiments.show("loop", settings=s)
    assert view.comparisons[0].state == "significant", view.comparisons[0]
    # the call is kept: a later look whose rates cross by noise does not turn it around
    assert experiments.get("loop", settings=s).winners == {r.challenger: r.challenger}
    # the check the scheduler runs (a scheduler started by another test in this cluster may be first)
    decision = experiments.check("loop", settings=s) or _decision(experiments, s)
    assert decision.startswith(f"promoted {r.challenger}"), decision
    assert [a["ref"] for a in serving.traffic("loop", settings=s).split.arms] == [r.challenger]
    assert registry.get("recs@champion", settings=s).ref == r.challenger
    assert experiments.get("loop", settings=s).state == "stopped"
    assert {_ask(served, loop.url, u)["arm"] for u in range(1, 21)} == {r.challenger}


def test_a_slow_canary_is_rolled_back(served, loop):
    """The same loop with a challenger made slow (a fault-injection delay): the latency guardrail breaks and
    the check rolls it back, whatever its play rate."""
    from aimass import experiments

    s = served.settings
    control = serving.traffic("loop", settings=s).split.arms[0]["ref"]
    experiments.start("loop", [f"{control}=50", "recs/1=50"], auto=True, faults={"recs/1": {"delay_ms": 40}},
                      settings=s)
    _traffic_with_plays(served, loop.url, {"recs/1": 0.5, control: 0.1}, tag="slow")
    view = experiments.show("loop", settings=s)
    assert any("p99 latency" in g for g in view.guardrails_broken), view
    decision = experiments.check("loop", settings=s) or _decision(experiments, s)
    assert decision.startswith("rolled back: recs/1: p99 latency"), decision
    assert [a["ref"] for a in serving.traffic("loop", settings=s).split.arms] == [control]
    assert experiments.get("loop", settings=s).decision.startswith("rolled back")


def test_a_retrain_beside_a_split_of_several_arms_moves_no_alias(served, loop):
    """A manual experiment or a ramp in force: no canary runs beside it, so a challenger the offline gate passes
    stays the challenger instead of becoming champion unseen (the events of the tests above are new to it)."""
    import ray

    from aimass import retraining

    s = served.settings.model_copy(update={"gate_tolerance": 0.2})
    control = serving.traffic("loop", settings=s).split.arms[0]["ref"]
    serving.set_traffic("loop", [f"{control}=50", "recs/1=50"], settings=s)
    champion = registry.get("recs@champion", settings=s).ref
    r = retraining.retrain("loop", settings=s)
    ray.shutdown()  # the retrain's training cluster
    assert not r.promoted and not r.canary and r.status in ("challenger", "kept"), r
    assert registry.get("recs@champion", settings=s).ref == champion
    assert "serves a split of 2 arms" in r.next_step or not r.gate_passed, r.next_step


def test_a_bare_serve_answers_with_its_version_and_leaves_the_endpoints_split_alone(served, monkeypatch):
    """`bentoml serve` of recs/1 with no endpoint set names its feedback's endpoint after the model, "recs":
    the deployed endpoint's split (another process's) must neither choose its answers nor hear its votes."""
    from aimass.serving import services
    from aimass.serving._arms import Arms

    s = served.settings
    monkeypatch.setenv("AIMASS_HOME", str(s.home))
    monkeypatch.setenv("AIMASS_SERVE_MODEL", "recs/1")
    monkeypatch.delenv("AIMASS_SERVE_ENDPOINT", raising=False)
    bare, deployed = services._settings()
    assert bare.serve_endpoint == "recs" and not deployed
    assert _traffic.current(s, "recs") is not None  # the deployment's split, which the bare serve ignores
    arms = Arms(bare, "recs", "recs/1", lambda *a: None, follow=deployed)
    try:
        assert arms.table.split_id is None and arms.table.bounds == (("recs/1", _traffic.BUCKETS),)
        # what a pending split loaded is released once it is no longer pending (it failed, or was replaced)
        from types import SimpleNamespace

        pending = SimpleNamespace(id=-1, experiment_id="x", shadow=None, faults=None,
                                  arms=[{"ref": "recs/1", "weight": 50}, {"ref": "closed/1", "weight": 50}])
        arms._prepare(pending)
        extra = arms.engines["closed/1"]
        arms._release(pending)
        assert "closed/1" in arms.engines  # still pending: kept
        arms._release(None)
        assert "closed/1" not in arms.engines and extra._closed.is_set() and "recs/1" in arms.engines
    finally:
        for engine in arms.engines.values():
            engine.close()
