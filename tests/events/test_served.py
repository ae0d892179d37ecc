"""The served-answer log on SQLite and Postgres: what a replica records is read back as it was served (the
writer hands the driver pre-encoded rows, not the ORM's), time windows select by the UTC time of serving, and a
store that refuses a write loses that flush's answers, never the next ones."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy

from aimass.events import ServedLog


def _record(log: ServedLog, rid: str, **kw) -> None:
    args = {"user_id": 7, "history": list(range(80)), "items": [3, 1, 2], "scores": [0.5, 0.25, 0.125]} | kw
    log.record("e", rid, "recommend", "m", 2, args.pop("user_id"), args.pop("history"), args.pop("items"),
               args.pop("scores"), **args)


def test_answers_read_back_as_served(store):
    log = ServedLog(store, interval=3600)
    before = datetime.now(UTC)
    _record(log, "a", arm="m/2", experiment_id="x1", latency_ms=1.25)
    _record(log, "b", user_id=None, history=None, items=np.array([9, 8]), scores=[np.float32(0.75), np.float64(0.5)],
            strategy="popular", shadow=True, overlap=0.5)
    _record(log, "c", history=(4, 5), items=(6,), scores=(1.0,), query="Jazz, “naïve”", mode="hybrid")
    assert log.flush() == 3 and log.flush() == 0
    after = datetime.now(UTC)
    live = log.frame("e").set_index("request_id")
    assert list(live.index) == ["a", "c"]
    a, c = live.loc["a"], live.loc["c"]
    assert a["history_length"] == 80 and a["history_tail"] == list(range(30, 80)) and a["items"] == [3, 1, 2]
    assert a["scores"] == [0.5, 0.25, 0.125] and (a["arm"], a["experiment_id"], a["latency_ms"]) == ("m/2", "x1", 1.25)
    assert a["version"] == 2 and a["user_id"] == 7 and a["strategy"] == "model" and not a["shadow"]
    assert before - timedelta(seconds=1) <= a["served_at"] <= after + timedelta(seconds=1)
    assert c["history_tail"] == [4, 5] and c["items"] == [6] and (c["query"], c["mode"]) == ("Jazz, “naïve”", "hybrid")
    b = log.frame("e", shadow=True).iloc[0]
    assert b["request_id"] == "b" and b["items"] == [9, 8] and b["scores"] == [0.75, 0.5] and b["overlap"] == 0.5
    assert b["history_length"] == 0 and b["history_tail"] == [] and b["user_id"] is pd.NA
    # windows are UTC: the answers fall inside [before, after) and outside a window that ended before them
    assert len(log.frame("e", start=before - timedelta(seconds=1), end=after + timedelta(seconds=1))) == 2
    assert log.frame("e", end=before - timedelta(seconds=1)).empty
    few = log.frame("e", columns=["request_id", "served_at", "arm"])
    assert few["request_id"].tolist() == ["a", "c"] and str(few["served_at"].dt.tz) == "UTC"
    assert abs(few["served_at"].iloc[0] - a["served_at"]) < timedelta(microseconds=2)


def test_user_ids_up_to_2_62_read_back_whole_beside_answers_without_a_user(store):
    """One answer without a user must not turn the column into floats, which hold 53 bits."""
    log = ServedLog(store, interval=3600)
    _record(log, "a", user_id=2**62 - 1)
    _record(log, "b", user_id=None, history=[1])
    log.flush()
    for f in (log.frame("e"), log.frame("e", columns=["request_id", "user_id"])):
        assert f["user_id"].iloc[0] == 2**62 - 1 and f["user_id"].iloc[1] is pd.NA


def test_answers_kept_by_user_or_request_id_are_those_of_the_whole_frame(store):
    """The retrain's join reads an endpoint's whole log keeping only its events' answers, batch by batch."""
    log = ServedLog(store, interval=3600)
    for n in range(40):
        _record(log, f"r{n}", user_id=None if n % 7 == 0 else n % 5)
    log.flush()
    whole = log.frame("e", columns=["request_id", "user_id"])
    for cols in (["request_id", "user_id", "items"], None):
        got = log.frame("e", columns=cols, users=[2, 9], request_ids=["r0", "r3", "nope"])
        want = whole[whole["user_id"].isin([2]).fillna(False) | whole["request_id"].isin(["r0", "r3"])]
        assert got["request_id"].tolist() == want["request_id"].tolist() == ["r0", "r2", "r3", "r12", "r17",
                                                                          "r22", "r27", "r32", "r37"]
    assert log.frame("e", columns=["request_id", "user_id"], users=[], request_ids=[]).empty


def test_a_failed_flush_loses_only_its_own_answers(store):
    log = ServedLog(store, interval=3600)
    _record(log, "lost")
    with log.engine.begin() as conn:  # the store refuses writes for a while
        conn.exec_driver_sql("ALTER TABLE served_answers RENAME TO away")
    with pytest.raises(sqlalchemy.exc.DBAPIError):
        log.flush()
    with log.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE away RENAME TO served_answers")
    _record(log, "kept")
    assert log.flush() == 1
    assert log.frame("e")["request_id"].tolist() == ["kept"]


def test_a_flush_of_many_answers_keeps_them_all_in_order(store):
    log = ServedLog(store, interval=3600)
    for i in range(1300):  # several statements of different sizes in one transaction
        _record(log, f"r{i}", user_id=i, items=[i, i + 1])
    assert log.flush() == 1300
    f = log.frame("e")
    assert f["request_id"].tolist() == [f"r{i}" for i in range(1300)]
    assert f["user_id"].tolist() == list(range(1300)) and f["items"].iloc[-1] == [1299, 1300]


def test_an_answer_json_cannot_hold_is_not_logged_and_the_call_does_not_fail(store):
    log = ServedLog(store, interval=3600)
    _record(log, "odd", items=[object()])
    _record(log, "huge", scores=[2 ** 70])
    _record(log, "fine")
    assert log.dropped == 2 and log.flush() == 1
    assert log.frame("e")["request_id"].tolist() == ["fine"]


def test_a_flush_returns_once_what_the_writer_thread_took_before_it_is_stored_too(settings, monkeypatch):
    """The writer thread had taken 520 answers and not yet committed them when a caller's flush wrote the last 30
    and returned: a drift report read right after saw 30 of 550 (a slow disk, here one held write)."""
    import threading

    log = ServedLog(settings, interval=3600)  # its own thread never flushes in this test
    for i in range(10):
        _record(log, f"a{i}")
    held, entered = threading.Event(), threading.Event()
    insert = log._insert

    def slow_first(n):
        if not entered.is_set():
            entered.set()
            held.wait(30)
        return insert(n)

    monkeypatch.setattr(log, "_insert", slow_first)
    writer = threading.Thread(target=log.flush)  # what the writer thread does
    writer.start()
    assert entered.wait(30)
    _record(log, "late")
    caller = threading.Thread(target=log.flush)
    caller.start()
    caller.join(0.5)
    waited = caller.is_alive()  # it waits for the write in progress, whose rows were recorded before it
    held.set()
    writer.join(30)
    caller.join(30)
    assert waited and len(log.frame("e")) == 11
