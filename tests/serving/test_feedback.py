"""POST /feedback over real HTTP: durable, idempotent acknowledgements, online updates of the next answer,
bad input refused with nothing stored, and the served-answer log the events join to."""
from __future__ import annotations

import json
import time
import uuid

import pytest
from sqlalchemy import func, select

from aimass import datasets, events
from aimass.catalog import FeedbackEvent, FeedbackEventBase, engine_for

pytestmark = pytest.mark.integration
T = FeedbackEvent.__table__


def _event(user: int, item: int, type_: str = "play", **kw) -> dict:
    return {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": item, "type": type_,
            "timestamp": time.time() - 5, **kw}


def _stored(served, endpoint: str = "recs") -> int:
    with engine_for(served.settings.catalog).connect() as c:
        return c.execute(select(func.count()).select_from(T).where(T.c.endpoint == endpoint)).scalar()


def _user(served, n: int = 0) -> tuple[int, set[int]]:
    inter = datasets.load("demo@v1", settings=served.settings).interactions
    user = int(inter["user_id"].drop_duplicates().iloc[n])
    return user, set(inter.loc[inter["user_id"] == user, "item_id"].tolist())


def test_an_event_is_stored_once_and_a_repeat_says_duplicate(served):
    e = _event(*_user(served, 1)[:1], item=7)
    first = served.post("recs", "/feedback", e)
    assert first.status_code == 200, first.text
    ack = first.json()
    assert ack["stored"] == 1 and ack["duplicate"] is False and ack["events"][0]["known_item"] is True
    again = served.post("recs", "/feedback", e).json()
    assert again["duplicate"] is True and again["stored"] == 0
    assert again["events"][0]["seq"] == ack["events"][0]["seq"]
    batch = served.post("recs", "/feedback", {"events": [e, _event(1, 8), _event(1, 8) | {"event_id": "x"}]})
    assert batch.status_code == 200, batch.text
    assert batch.json()["stored"] == 2 and batch.json()["duplicates"] == 1
    f = events.EventLog(served.settings).frame("recs")
    assert (f["event_id"] == e["event_id"]).sum() == 1 and (f["event_id"] == "x").sum() == 1


def test_an_acknowledged_play_changes_the_next_recommend(served):
    user, seen = _user(served, 2)
    before = served.post("recs", "/recommend", {"user_id": user, "k": 5}).json()
    top = before["items"][0]
    assert top not in seen and before["history_length"] == len(seen)
    r = served.post("recs", "/feedback", _event(user, top))
    assert r.status_code == 200, r.text
    after = served.post("recs", "/recommend", {"user_id": user, "k": 5}).json()
    assert after["history_length"] == before["history_length"] + 1
    assert top not in after["items"] and after["items"] != before["items"]  # seen now, and read by the model


def test_an_event_written_by_another_process_reaches_serving(served):
    """What another replica (or `aimass feedback ingest`) commits arrives by the log's poll."""
    user, _ = _user(served, 3)
    before = served.post("recs", "/recommend", {"user_id": user, "k": 5}).json()
    e = FeedbackEventBase(event_id=uuid.uuid4().hex, user_id=user, item_id=before["items"][0], type="like",
                          timestamp=time.time())
    events.EventLog(served.settings).write("recs", [e])
    deadline = time.monotonic() + 15  # a bound, not the target: benchmarks/feedback.py measures the delay
    while time.monotonic() < deadline:
        after = served.post("recs", "/recommend", {"user_id": user, "k": 5}).json()
        if after["history_length"] == before["history_length"] + 1:
            break
        time.sleep(0.1)
    assert after["history_length"] == before["history_length"] + 1 and before["items"][0] not in after["items"]


def test_a_new_user_gets_personal_answers_from_feedback_alone(served):
    user = 10**12 + 7
    cold = served.post("recs", "/recommend", {"user_id": user, "k": 5}).json()
    assert cold["cold_start"] is True and cold["history_length"] == 0
    ack = served.post("recs", "/feedback", {"events": [_event(user, i, "like") for i in (3, 4)]}).json()
    assert [e["known_user"] for e in ack["events"]] == [False, False]  # as serving knew them before
    warm = served.post("recs", "/recommend", {"user_id": user, "k": 5}).json()
    assert warm["cold_start"] is False and warm["history_length"] == 2 and not {3, 4} & set(warm["items"])


def test_a_negative_event_hides_the_item_but_is_no_history(served):
    user, _ = _user(served, 4)
    before = served.post("recs", "/recommend", {"user_id": user, "k": 5}).json()
    served.post("recs", "/feedback", _event(user, before["items"][0], "dislike"))
    after = served.post("recs", "/recommend", {"user_id": user, "k": 5}).json()
    assert after["history_length"] == before["history_length"] and before["items"][0] not in after["items"]
    # a list that may repeat what the user played still leaves out what they disliked
    again = {"user_id": user, "k": 5, "exclude_seen": False}
    top = served.post("recs", "/recommend", again).json()["items"][0]
    served.post("recs", "/feedback", _event(user, top, "dislike"))
    assert top not in served.post("recs", "/recommend", again).json()["items"]
    # and so does an answer from a history the client sends for that user
    sent = {**again, "history": served.post("recs", "/recommend", again).json()["items"][:3]}
    listed = served.post("recs", "/recommend", {**sent, "k": 100}).json()["items"]  # most of the 120 tracks
    assert len(listed) == 100 and top not in listed


@pytest.mark.parametrize("body, says", [
    (_event(1, 2, "teleport"), "unknown event type 'teleport'"),
    ({k: v for k, v in _event(1, 2).items() if k != "timestamp"}, "timestamp: Field required"),
    (_event(1, 2, timestamp="last tuesday"), "timestamp"),
    (_event(1, 2, timestamp="2026-12-01"), "timestamp"),
    (_event(1, 2, timestamp="1764000000"), "timestamp"),
    (_event("1", 2), "user_id"),
    (json.dumps(_event(1, 2, value=float("inf"))).encode(), "must be a finite number"),  # Infinity, as Python sends
    (_event(1, 2, colour="red"), "colour"),
    (_event(1, 2, event_id="has space"), "event_id"),
    ({"events": []}, "events"),
    ({"events": [_event(1, 2) for _ in range(1001)]}, "at most 1000"),
    ({"events": [_event(1, 2), _event(1, 2, "teleport")]}, "event 1"),
])
def test_bad_feedback_is_refused_and_nothing_is_stored(served, body, says):
    n = _stored(served)
    if isinstance(body, bytes):  # what httpx's JSON encoder refuses to write
        r = served.post("recs", "/feedback", content=body, headers={"content-type": "application/json"})
    else:
        r = served.post("recs", "/feedback", body)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]
    assert _stored(served) == n


def test_a_timestamp_more_than_a_day_ahead_is_409_and_not_stored(served):
    n = _stored(served)
    r = served.post("recs", "/feedback", {"events": [_event(1, 2), _event(1, 2, timestamp=time.time() + 2 * 86400)]})
    assert r.status_code == 409 and "event 1" in r.json()["error"] and "in the future" in r.json()["error"]
    assert _stored(served) == n


def test_a_timestamp_before_1970_is_409_and_not_stored_and_the_log_stays_readable(served):
    """Year 825 is a valid ISO 8601 date-time: stored, it made SQLite's reader fail on the whole log."""
    n = _stored(served)
    r = served.post("recs", "/feedback", {"events": [_event(1, 2), _event(1, 2, timestamp="0825-03-02T18:17:53")]})
    assert r.status_code == 409 and "event 1" in r.json()["error"] and "before 1970" in r.json()["error"], r.text
    assert _stored(served) == n


def test_a_body_over_the_feedback_limit_is_413(served):
    big = {"events": [_event(1, 2, request_id="r" * 64) for _ in range(1000)]}
    big["events"][0]["event_id"] = "e" * 128
    pad = {"events": big["events"] * 8}
    r = served.post("recs", "/feedback", pad)
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_answers_are_logged_and_feedback_joins_them(served):
    user, _ = _user(served, 5)
    r = served.post("recs", "/recommend", {"user_id": user, "k": 3}, headers={"X-Request-ID": "join-me-1"})
    item = r.json()["items"][0]
    served.post("recs", "/feedback", _event(user, item, "click", request_id="join-me-1"))
    served.post("recs", "/feedback", _event(user, item, "click", request_id="never-served"))
    # a history longer than the tail an answer's record keeps (50 items): its length is logged whole
    catalogue = sorted(datasets.load("demo@v1", settings=served.settings).interactions["item_id"].unique())
    long = served.post("recs", "/recommend", {"history": [int(i) for i in catalogue[:80]], "k": 3},
                       headers={"X-Request-ID": "join-me-long"})
    assert long.status_code == 200 and long.json()["history_length"] == 80
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = events.ServedLog(served.settings).frame("recs")
        if log["request_id"].isin(["join-me-1", "join-me-long"]).sum() == 2:
            break
        time.sleep(0.2)
    row = log[log["request_id"] == "join-me-1"].iloc[0]
    assert row["items"][0] == item and row["user_id"] == user and row["history_length"] == r.json()["history_length"]
    row = log[log["request_id"] == "join-me-long"].iloc[0]
    assert row["history_length"] == 80 and len(row["history_tail"]) == 50
    stats = events.stats("recs", settings=served.settings)
    assert stats["with_request_id"] >= 2 and stats["unjoined_request_ids"] >= 1


def test_the_pipeline_takes_feedback_and_its_stages_read_it(served):
    user, _ = _user(served, 6)
    before = served.post("multi", "/recommend", {"user_id": user, "k": 5}).json()
    r = served.post("multi", "/feedback", _event(user, before["items"][0], "purchase"))
    assert r.status_code == 200 and r.json()["stored"] == 1
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the stages are other deployments: they poll the log
        after = served.post("multi", "/recommend", {"user_id": user, "k": 5}).json()
        if after["history_length"] == before["history_length"] + 1:
            break
        time.sleep(0.1)
    assert after["history_length"] == before["history_length"] + 1 and before["items"][0] not in after["items"]
