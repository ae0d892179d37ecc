"""The replica's cache of /recommend answers (aimass.serving._cache) over real HTTP: a repeated request is a hit
counted in /metrics and answers the same; the user's feedback is never answered from it (a version change:
tests/serving/test_traffic.py)."""
from __future__ import annotations

import re
import time
import uuid

import pytest

from aimass import datasets
from aimass.events import ServedLog

pytestmark = pytest.mark.integration


def _cache(served) -> dict[str, float]:
    text = served.get("recs", "/metrics", key="admin").text
    return {m[1]: float(m[2]) for m in re.finditer(r'^aimass_answer_cache_total\{result="(\w+)"\} (\S+)$', text,
                                                   re.M)}


def _ask(served, user: int) -> dict:
    r = served.post("recs", "/recommend", {"user_id": user, "k": 5})
    assert r.status_code == 200, r.text
    return r.json()


def _same(a: dict, b: dict) -> bool:
    return all(a[f] == b[f] for f in ("items", "scores", "history_length", "model", "version", "strategy"))


def test_a_repeated_request_is_a_counted_hit_and_the_users_feedback_is_never_answered_stale(served):
    inter = datasets.load("demo@v1", settings=served.settings).interactions
    user = int(inter["user_id"].drop_duplicates().iloc[7])
    first = _ask(served, user)
    before = _cache(served)
    again = _ask(served, user)
    after = _cache(served)
    assert _same(first, again) and again["request_id"] != first["request_id"]
    assert after["hit"] == before["hit"] + 1 and after["miss"] == before["miss"]
    # the user's own feedback: the next answer reads it (a longer history, the played item gone)
    played = first["items"][0]
    ack = served.post("recs", "/feedback", {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": played,
                                            "type": "play", "timestamp": time.time()})
    assert ack.status_code == 200, ack.text
    fresh = _ask(served, user)
    assert fresh["history_length"] == first["history_length"] + 1 and played not in fresh["items"]
    assert _cache(served)["miss"] == after["miss"] + 1
    # the answer log says which answers were lookups (an experiment's latency guardrail leaves them out)
    assert _logged_cached(served, {again["request_id"], fresh["request_id"]}) == {
        again["request_id"]: True, fresh["request_id"]: False}


def _logged_cached(served, wanted: set[str]) -> dict[str, bool]:
    log, deadline = ServedLog(served.settings), time.time() + 30
    while len(rows := log.frame("recs", columns=["request_id", "user_id", "cached"], request_ids=wanted)) < len(wanted):
        assert time.time() < deadline, rows
        time.sleep(0.2)
    return dict(zip(rows["request_id"], rows["cached"].astype(bool), strict=True))


def test_an_answer_the_cache_held_is_logged_as_a_lookup_on_the_v2_route_too(served):
    user = int(datasets.load("demo@v1", settings=served.settings).interactions["user_id"].drop_duplicates().iloc[9])
    body = {"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [user]},
                       {"name": "k", "shape": [1], "datatype": "INT64", "data": [4]}]}  # a k no other test asks
    rids = []
    for _ in range(2):
        r = served.client.post(f"{served.urls['recs']}/v2/models/recs/infer", json=body,
                               headers={"Authorization": f"Bearer {served.keys['consumer']}"})
        assert r.status_code == 200, r.text
        (rid,) = next(o["data"] for o in r.json()["outputs"] if o["name"] == "request_id")
        rids.append(rid)
    assert _logged_cached(served, set(rids)) == {rids[0]: False, rids[1]: True}


def test_a_loaded_version_warms_the_default_answers_of_its_most_active_users_as_recommend_computes_them(served):
    from aimass.serving import Engine

    plain = served.settings.model_copy(update={"serve_endpoint": None})
    engine, fresh = Engine("recs/1", plain), Engine("recs/1", plain.model_copy(update={"serve_cache_users": 0}))
    counts = datasets.load("demo@v1", settings=served.settings).interactions["user_id"].value_counts()
    active = sorted(counts.index, key=lambda u: (-counts[u], u))  # the most active first, ties by id
    engine.warm(5)
    deadline = time.monotonic() + 60
    while engine.warmed < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.warmed == 5
    top, rest = [int(u) for u in active[:5]], [int(u) for u in active[5:]]
    assert all(engine.cached(u, None, 10) for u in top) and not any(engine.cached(u, None, 10) for u in rest)
    assert not engine.cached(top[0], None, 5) and not engine.cached(top[0], None, 10, exclude_seen=False)
    hits = engine.cache.hits
    for u in top:  # a warmed answer is the one a cache-less engine computes, and taking it is a counted hit
        assert engine.recommend(u, None, 10) == fresh.recommend(u, None, 10)
    assert engine.cache.hits == hits + 5 and engine.cache.misses == 0
    engine.close()
    fresh.close()


def test_a_closed_engine_stops_warming(served):
    from aimass.serving import Engine

    engine = Engine("recs/1", served.settings.model_copy(update={"serve_endpoint": None}))
    engine.close()
    engine.warm(50)
    time.sleep(0.5)
    assert engine.warmed == 0


def test_metrics_count_the_warmed_answers(served):
    text = served.get("recs", "/metrics", key="admin").text
    warmed = re.search(r"^aimass_answer_cache_warmed (\S+)$", text, re.M)
    assert warmed is not None and float(warmed[1]) > 0
    assert re.search(r"^aimass_shadow_dropped_total 0\.0$", text, re.M), text  # no shadow: none dropped


def test_the_cache_keeps_a_bounded_number_of_answers_per_user_the_latest():
    from aimass.serving._cache import KEYS_PER_USER, Answers

    cache = Answers(users=2)
    for user in (1, 2):
        for k in range(1, 101):  # a client cycling through k
            for seen in (True, False):
                cache.put(user, (k, seen), 0, {"items": list(range(k))})
    assert sum(len(v) for v in cache._kept.values()) == 2 * KEYS_PER_USER
    assert cache.get(1, (100, False), 0) == {"items": list(range(100))} and cache.get(1, (1, True), 0) is None
