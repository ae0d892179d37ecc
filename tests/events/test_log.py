"""The durable feedback log: idempotent appends, group commit, bulk ingest with validation, reading back in
log order; on SQLite and on Postgres."""
from __future__ import annotations

import concurrent.futures
import json
import time

import pandas as pd
import pytest

from aimass import events
from aimass.catalog import FeedbackEventBase
from aimass.errors import ConflictError, InvalidInputError
from aimass.events import EventLog, Rules


def _e(i, user=1, item=2, type_="play", **kw) -> FeedbackEventBase:
    return FeedbackEventBase(event_id=f"e{i}", user_id=user, item_id=item, type=type_, timestamp=1.7e9 + i, **kw)


def test_a_repeated_event_id_is_stored_once_and_answered_as_a_duplicate(store):
    log = EventLog(store)
    first = log.write("recs", [_e(1), _e(2)])
    again = log.write("recs", [_e(2), _e(3), _e(3)])
    assert [a.duplicate for a in first] == [False, False]
    assert [(a.event_id, a.duplicate) for a in again] == [("e2", True), ("e3", False), ("e3", True)]
    assert again[0].seq == first[1].seq and again[1].seq == again[2].seq
    f = log.frame("recs")
    assert f["event_id"].tolist() == ["e1", "e2", "e3"] and f["seq"].is_monotonic_increasing
    assert log.write("other", [_e(1)])[0].duplicate is False  # ids are unique per endpoint


def test_a_group_mixing_new_ids_with_ids_another_writer_stored_tells_them_apart(store):
    # Another process's rows (here: a second log, as another replica) sit between this log's commits, and a
    # group of more than one INSERT's worth of rows mixes them with new ones.
    log, other = EventLog(store), EventLog(store)
    log.write("recs", [_e(i) for i in range(5)])
    theirs = other.write("recs", [_e(i) for i in range(100, 130)])
    mixed = [_e(i) for i in range(0, 250, 2)]  # 0-4: ours before, 100-128: theirs, the rest new
    acks = log.write("recs", mixed)
    before = {a.event_id: a.seq for a in theirs}
    for e, a in zip(mixed, acks, strict=True):
        n = int(e.event_id[1:])
        assert a.duplicate == (n < 5 or 100 <= n < 130), e.event_id
        if e.event_id in before:
            assert a.seq == before[e.event_id]
    new = [a.seq for a in acks if not a.duplicate]
    assert len(set(new)) == len(new) and min(new) > max(before.values())
    f = log.frame("recs")
    assert len(f) == 5 + 30 + len(new) and dict(zip(f["event_id"], f["seq"], strict=True)) == {
        **{a.event_id: a.seq for a in acks}, **before, **dict(zip(f["event_id"][:5], f["seq"][:5], strict=True))}


def test_a_repeat_is_a_duplicate_for_a_new_writer_and_after_another_writer_stored_it(store):
    first = EventLog(store).write("recs", [_e(1), _e(2)])
    again = EventLog(store).write("recs", [_e(1), _e(2)])  # a restarted replica: its connection inserted nothing
    assert [(a.duplicate, a.seq) for a in again] == [(True, first[0].seq), (True, first[1].seq)]
    log, other = EventLog(store), EventLog(store)
    log.write("recs", [_e(3)])
    stored = other.write("recs", [_e(4)])  # after log's last insert: a retry that reaches log is still a repeat
    assert log.write("recs", [_e(4)]) == [events.Ack("e4", stored[0].seq, True)]


def test_concurrent_single_events_share_commits_and_none_is_lost(store):
    log = EventLog(store)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        acks = list(pool.map(lambda i: log.append("recs", [_e(i, user=i)]).result()[0], range(400)))
    assert sorted(a.event_id for a in acks) == sorted(f"e{i}" for i in range(400))
    assert len({a.seq for a in acks}) == 400 and not any(a.duplicate for a in acks)
    assert len(log.frame("recs")) == 400 and log.committed == 400 and log.commits < 400  # groups formed
    rows = log.since("recs", 0)
    assert [r[0] for r in rows] == sorted(a.seq for a in acks) and log.last_seq("recs") == max(a.seq for a in acks)


@pytest.mark.parametrize("before", [1, 150], ids=["one-statement", "two-statements"])
def test_a_group_that_cannot_commit_fails_every_waiter_and_stores_nothing(store, before):
    log = EventLog(store)
    log.write("recs", [_e(0)])
    # what validation never lets through: the store's NOT NULL refuses it, as a failing disk would refuse all
    bad = FeedbackEventBase.model_construct(event_id="x", user_id=None, item_id=1, type="play",
                                            timestamp=_e(1).timestamp)
    import sqlite3

    from sqlalchemy.exc import IntegrityError

    with pytest.raises((IntegrityError, sqlite3.IntegrityError)):  # SQLite's rows go through sqlite3 directly
        log.write("recs", [*(_e(i) for i in range(1, 1 + before)), bad])  # 100 rows an INSERT: 150 make two
    assert log.frame("recs")["event_id"].tolist() == ["e0"]
    assert log.write("recs", [_e(1)])[0].duplicate is False  # the writer goes on, on a new connection
    assert log.frame("recs")["event_id"].tolist() == ["e0", "e1"]


def test_rules_with_thresholds():
    rules = Rules(["like", "play>=30", "rating>=4"], ["skip", "rating<=2"], ["impression"])
    assert rules.polarity("play", 30) == 1 and rules.polarity("play", 29.9) == 0 and rules.polarity("play", None) == 0
    assert rules.polarity("rating", 1) == -1 and rules.polarity("rating", 3) == 0 and rules.polarity("skip", None) == -1
    assert rules.types == ["impression", "like", "play", "rating", "skip"]
    got = rules.polarities(pd.Series(["play", "play", "like", "skip", "impression"]), pd.Series([45, 3, None, 1, 1]))
    assert got.tolist() == [1, 0, 1, -1, 0]
    with pytest.raises(InvalidInputError, match="play=>30"):
        Rules(["play=>30"], [])


def test_check_refuses_unknown_types_and_timestamps_too_far_ahead(settings):
    rules = Rules.of(settings)
    events.check([_e(1)], rules, settings)
    with pytest.raises(InvalidInputError, match="unknown event type 'teleport'"):
        events.check([_e(1), _e(2, type_="teleport")], rules, settings)
    ahead = FeedbackEventBase(event_id="f", user_id=1, item_id=1, type="play", timestamp=time.time() + 2 * 86400)
    with pytest.raises(ConflictError, match="in the future"):
        events.check([ahead], rules, settings)


def test_ingest_stores_a_file_once_and_refuses_a_bad_row_naming_it(store, tmp_path):
    f = pd.DataFrame({"event_id": [f"i{i}" for i in range(1000)], "user_id": range(1000), "item_id": 7,
                      "type": ["play", "skip"] * 500, "timestamp": 1.7e9, "value": 40.0})
    f.to_csv(tmp_path / "ev.csv", index=False)
    r = events.ingest(tmp_path / "ev.csv", "recs", settings=store)
    assert (r.rows, r.stored, r.duplicates) == (1000, 1000, 0)
    f.iloc[:10].to_json(tmp_path / "ev.jsonl", orient="records", lines=True)
    assert events.ingest(tmp_path / "ev.jsonl", "recs", settings=store).duplicates == 10
    stats = events.stats("recs", settings=store)
    assert stats["events"] == 1000 and stats["positive"] == 500 and stats["negative"] == 500
    for change, says in [({"type": "teleport"}, "unknown event type"), ({"timestamp": "soon"}, "timestamp"),
                         ({"user_id": -1}, "user_id"), ({"timestamp": time.time() + 9e5}, "in the future"),
                         ({"value": "inf"}, "value must be a finite number")]:
        bad = f.iloc[:5].astype(object)
        for k, v in change.items():
            bad.loc[3, k] = v
        bad["event_id"] = [f"b{i}" for i in range(5)]
        bad.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(InvalidInputError, match=f"row 4 .*{says}"):
            events.ingest(tmp_path / "bad.csv", "recs", settings=store)
    assert events.stats("recs", settings=store)["events"] == 1000  # nothing of a bad file is stored
    for endpoint in ("", "Bad/x"):  # a name no deployment could have: its events no one could ever read
        with pytest.raises(InvalidInputError, match="invalid endpoint"):
            events.ingest(tmp_path / "ev.csv", endpoint, settings=store)
        assert events.stats(endpoint, settings=store)["events"] == 0  # a read takes any name (a bare serve's)


def test_ingest_refuses_an_absurd_numeric_timestamp_as_malformed_and_stores_nothing(settings, tmp_path):
    """Unix seconds beyond what a time can hold (pandas: about 9.2e9 s) are a bad row, named, not an overflow."""
    good = pd.DataFrame({"event_id": ["g0", "g1"], "user_id": [1, 2], "item_id": 7, "type": "play",
                         "timestamp": 1.7e9})
    good.to_csv(tmp_path / "good.csv", index=False)
    assert events.ingest(tmp_path / "good.csv", "recs", settings=settings).stored == 2
    for absurd in (1e20, -1e20):
        bad = pd.DataFrame({"event_id": [f"b{i}" for i in range(3)], "user_id": [1, 2, 3], "item_id": 7,
                            "type": "play", "timestamp": [1.7e9, absurd, 1.7e9]})
        bad.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(InvalidInputError, match=r"row 2 \(event_id 'b1'\): missing or malformed timestamp"):
            events.ingest(tmp_path / "bad.csv", "recs", settings=settings)
    assert events.count("recs", settings=settings) == 2  # neither bad file's good rows were stored


def test_ingest_refuses_the_timestamps_feedback_refuses(settings, tmp_path):
    """A bare date (midnight would be a guess) and, in JSON, a number in a string: /feedback answers 400 to
    both, so a file of them is no back door. A csv field is text: its digits are unix seconds."""
    import json

    row = {"event_id": "t1", "user_id": 1, "item_id": 7, "type": "play"}
    for name, body, refusal in (
            ("date.csv", "event_id,user_id,item_id,type,timestamp\nt1,1,7,play,2026-12-07\n", "a date alone"),
            ("date.jsonl", json.dumps({**row, "timestamp": "2026-12-07"}), "a date alone"),
            ("quoted.jsonl", json.dumps({**row, "timestamp": "1796650000"}), "not in a string")):
        (tmp_path / name).write_text(body)
        with pytest.raises(InvalidInputError, match=rf"row 1 \(event_id 't1'\): timestamp must .*{refusal}"):
            events.ingest(tmp_path / name, "recs", settings=settings)
    assert events.count("recs", settings=settings) == 0
    (tmp_path / "ok.csv").write_text("event_id,user_id,item_id,type,timestamp\nt1,1,7,play,1796650000\n"
                                     "t2,1,7,play,2026-12-07 10:00\n")
    (tmp_path / "ok.jsonl").write_text(json.dumps({**row, "event_id": "t3", "timestamp": 1796650000}) + "\n"
                                       + json.dumps({**row, "event_id": "t4", "timestamp": "2026-12-07T10:00Z"}))
    assert [events.ingest(tmp_path / f, "recs", settings=settings).stored for f in ("ok.csv", "ok.jsonl")] == [2, 2]


def test_ingest_reads_ids_as_written(settings, tmp_path):
    """A JSON null is a missing id, not the text "None" (two of them were one event, the second dropped as its
    duplicate); an id past 2**53 stays itself whatever else its column holds; "NA" in a CSV is an id."""
    import json

    lines = [{"event_id": None, "user_id": 1, "item_id": 7, "type": "play", "timestamp": 1.7e9},
             {"event_id": None, "user_id": 2, "item_id": 7, "type": "play", "timestamp": 1.7e9}]
    (tmp_path / "nulls.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(InvalidInputError, match=r"row 1 .*event_id must be"):
        events.ingest(tmp_path / "nulls.jsonl", "recs", settings=settings)
    big = 2**53 + 1
    lines = [{"event_id": "a", "user_id": big, "item_id": 7, "type": "play", "timestamp": 1.7e9,
              "request_id": None},
             {"event_id": 17, "user_id": 5.0, "item_id": 7, "type": "play", "timestamp": 1.7e9}]
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert events.ingest(tmp_path / "mixed.jsonl", "recs", settings=settings).stored == 2
    (tmp_path / "ids.csv").write_text(f"event_id,user_id,item_id,type,timestamp,request_id\n"
                                      f"NA,{big + 2},7,play,1700000000,\nb,5.0,7,play,1700000000,r-1\n")
    assert events.ingest(tmp_path / "ids.csv", "recs", settings=settings).stored == 2
    got = {e.event_id: e for e in events.list_events("recs", settings=settings)}
    assert got["a"].user_id == big and got["a"].request_id is None and got["17"].user_id == 5
    assert got["NA"].user_id == big + 2 and got["NA"].request_id is None and got["b"].request_id == "r-1"
    (tmp_path / "frac.csv").write_text("event_id,user_id,item_id,type,timestamp\nc,5.5,7,play,1700000000\n")
    with pytest.raises(InvalidInputError, match="user_id must be a whole number"):
        events.ingest(tmp_path / "frac.csv", "recs", settings=settings)


def test_list_events_newest_first(store):
    EventLog(store).write("recs", [_e(i) for i in range(30)])
    got = events.list_events("recs", limit=5, settings=store)
    assert [e.event_id for e in got] == ["e29", "e28", "e27", "e26", "e25"]


def test_ids_beyond_32_bits_are_stored_whole(store):
    """Raw ids are up to 2^62 on the wire: Postgres stores them in 64-bit columns (a 32-bit one would fail
    the whole group commit), and they read back unchanged, as ingested ones do."""
    big = [_e(1, user=2**62, item=2**40), _e(2, user=3_000_000_000, item=7)]
    assert [a.duplicate for a in EventLog(store).write("recs", big)] == [False, False]
    f = EventLog(store).frame("recs")
    assert f["user_id"].tolist() == [2**62, 3_000_000_000] and f["item_id"].tolist() == [2**40, 7]


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_postgres_shows_seqs_in_commit_order(store, monkeypatch):
    """Two replicas' group commits: the first draws its seq and has not committed when the second commits. A
    reader between the two must not see the second's (higher) seq alone, or a poll of "seq > last seen" moves
    past the first's event and never applies it. SQLite has one writer at a time; on Postgres the writers'
    transaction lock does it (a pause inside the first transaction stands in for a slow commit)."""
    import threading

    from aimass.events import _log

    inserted, release = threading.Event(), threading.Event()
    store_rows = _log._store

    def slow_store(engine, conn, by_endpoint, received):
        out = store_rows(engine, conn, by_endpoint, received)
        if "slow" in by_endpoint.get("recs", {}):
            inserted.set()
            release.wait(10)
        return out

    monkeypatch.setattr(_log, "_store", slow_store)
    first, second = EventLog(store), EventLog(store)
    slow = first.append("recs", [FeedbackEventBase(event_id="slow", user_id=1, item_id=2, type="play",
                                                   timestamp=1.7e9)])
    assert inserted.wait(10)
    fast = second.append("recs", [_e(2)])
    time.sleep(0.5)  # without the lock the second commits meanwhile
    seen = [r[0] for r in second.since("recs", 0)]
    release.set()
    seqs = sorted(slow.result(10)[0:1] + fast.result(10), key=lambda a: a.seq)
    every = [r[0] for r in second.since("recs", 0)]
    assert every == [a.seq for a in seqs]
    assert seen == every[:len(seen)]  # what a reader saw was a prefix of the log, never a gap


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_postgres_reads_back_the_times_written_whatever_the_session_time_zone(store):
    """Times are stored without a zone and read as UTC: a session in another zone (here the URL's own
    options) must not shift them."""
    from aimass.settings import Settings

    tokyo = Settings(home=store.home, catalog_url=store.catalog_url + "?options=-c%20TimeZone%3DAsia/Tokyo")
    with EventLog(tokyo).engine.connect() as conn:  # what raw SQL with an aware time would be converted to
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
    EventLog(tokyo).write("recs", [_e(1)])
    f = EventLog(tokyo).frame("recs")
    assert f["timestamp"].iloc[0] == pd.Timestamp(1.7e9 + 1, unit="s", tz="UTC")


def test_stats_counts_in_the_database_what_the_rules_and_the_served_log_say(store):
    """By type and polarity (a threshold rule, a positive rule winning over a negative one), users, items, and
    request_ids that name no served answer of this endpoint (one naming another endpoint's answer included)."""
    from aimass.events import ServedLog

    s = store.model_copy(update={"feedback_positive": ["like", "play>=30"], "feedback_negative": ["skip", "play<5"],
                                 "feedback_neutral": ["impression"]})
    served = ServedLog(s)
    served.record("recs", "r1", "recommend", "recs", 1, 1, [], [7], [0.5])
    served.record("other", "r2", "recommend", "recs", 1, 1, [], [7], [0.5])
    served.record("recs", "r1", "recommend", "recs", 2, 1, [], [8], [0.4], shadow=True)  # answered no one
    served.flush()
    rows = [("a", 1, 7, "play", 45.0, "r1"), ("b", 1, 8, "play", 2.0, "r2"), ("c", 2, 7, "play", 10.0, None),
            ("d", 2, 9, "like", None, ""), ("e", 3, 9, "skip", None, "zz"), ("f", 3, 7, "impression", None, "r1")]
    EventLog(s).write("recs", [FeedbackEventBase(event_id=e, user_id=u, item_id=i, type=t, timestamp=1.7e9,
                                                 value=v, request_id=r or None) for e, u, i, t, v, r in rows])
    EventLog(s).write("other", [_e(99)])  # another endpoint's log is not counted
    got = events.stats("recs", settings=s)
    assert {k: got[k] for k in ("events", "users", "items", "positive", "negative", "neutral", "by_type",
                                "with_request_id", "unjoined_request_ids", "served_answers")} == {
        "events": 6, "users": 3, "items": 3, "positive": 2, "negative": 2, "neutral": 2,
        "by_type": {"play": 3, "impression": 1, "like": 1, "skip": 1},
        "with_request_id": 4, "unjoined_request_ids": 2, "served_answers": 1}
    assert got["last_seq"] > 0 and got["first_received"] <= got["last_received"]
    assert got["first_received"].endswith("+00:00")
    empty = events.stats("nothing", settings=s)
    assert (empty["events"], empty["positive"], empty["first_received"], empty["by_type"]) == (0, 0, None, {})


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_file_is_checked_whole_then_ingested_chunk_by_chunk(store, tmp_path, monkeypatch, suffix):
    """A file larger than a chunk: a bad row in a later chunk is named by its row in the file and nothing of the
    chunks before it is stored; ids repeated across chunks are stored once."""
    from aimass.events import _files

    monkeypatch.setattr(_files, "CHUNK_ROWS", 7)
    f = pd.DataFrame({"event_id": [f"c{i % 40}" for i in range(50)], "user_id": range(50), "item_id": 7,
                      "type": "play", "timestamp": 1.7e9, "value": 40.0})
    write = {".csv": lambda x, p: x.to_csv(p, index=False),
             ".jsonl": lambda x, p: x.to_json(p, orient="records", lines=True),
             ".parquet": lambda x, p: x.to_parquet(p, index=False)}[suffix]
    bad = f.astype({"user_id": object})
    bad.loc[45, "user_id"] = -3  # the seventh chunk
    write(bad, tmp_path / f"bad{suffix}")
    with pytest.raises(InvalidInputError, match=r"row 46 \(event_id 'c5'\): user_id must be a whole number"):
        events.ingest(tmp_path / f"bad{suffix}", "recs", settings=store)
    assert events.count("recs", settings=store) == 0
    write(f, tmp_path / f"ok{suffix}")
    r = events.ingest(tmp_path / f"ok{suffix}", "recs", settings=store)
    assert (r.rows, r.stored, r.duplicates) == (50, 40, 10)
    assert events.count("recs", settings=store) == 40
    (tmp_path / "empty.csv").write_text("event_id,user_id,item_id,type,timestamp\n")
    assert events.ingest(tmp_path / "empty.csv", "recs", settings=store).rows == 0


def test_a_live_event_is_committed_while_a_large_file_is_ingested(store, tmp_path, monkeypatch):
    """One transaction over the whole file held the write lock for all of it: a /feedback commit waited (past
    its 30 s timeout, on a file of a few million events). Between two chunks of the file a live write goes in."""
    import threading

    from aimass.events import _files

    monkeypatch.setattr(_files, "CHUNK_ROWS", 5)
    pd.DataFrame({"event_id": [f"f{i}" for i in range(20)], "user_id": range(20), "item_id": 7, "type": "play",
                  "timestamp": 1.7e9, "value": 40.0}).to_csv(tmp_path / "big.csv", index=False)
    validated, calls, live = _files._validated, [], []

    def validated_then_a_live_write(*args):
        calls.append(1)
        if len(calls) == 7:  # the third chunk of the writing pass: the first two are stored by now
            t = threading.Thread(target=lambda: live.append(EventLog(store).write("recs", [
                FeedbackEventBase(event_id="live", user_id=1, item_id=2, type="play", timestamp=time.time())])))
            t.start()
            t.join(timeout=10)
            assert live, "a live event waited for the whole file's transaction"
        return validated(*args)

    monkeypatch.setattr(_files, "_validated", validated_then_a_live_write)
    r = events.ingest(tmp_path / "big.csv", "recs", settings=store)
    assert (r.rows, r.stored, len(calls)) == (20, 20, 8)
    assert events.count("recs", settings=store) == 21


def test_chunks_are_read_as_the_whole_file_would_be(settings, tmp_path, monkeypatch):
    """A chunk whose values were all True/False was typed boolean and stored as 1.0/0.0 where the whole file was
    refused; JSON lines ending in a lone carriage return were one line; a key that a whole later chunk lacks was
    'missing columns', naming no row; EventLog.ingest still takes a frame."""
    from aimass.events import _files

    monkeypatch.setattr(_files, "CHUNK_ROWS", 2)
    (tmp_path / "bool.csv").write_text("event_id,user_id,item_id,type,timestamp,value\n"
                                       "a1,1,7,play,1700000000,30\na2,1,7,play,1700000000,30\n"
                                       "a3,1,7,like,1700000000,True\na4,1,7,like,1700000000,False\n")
    with pytest.raises(InvalidInputError, match=r"row 3 \(event_id 'a3'\): value must be a number"):
        events.ingest(tmp_path / "bool.csv", "recs", settings=settings)
    # JSON's true and Parquet's booleans were stored as 1.0 / 0.0; /feedback refuses them
    flagged = [{"event_id": f"t{i}", "user_id": 1, "item_id": 7, "type": "like", "timestamp": 1.7e9,
                "value": [30, True, False][i]} for i in range(3)]
    (tmp_path / "bool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flagged))
    frame = pd.DataFrame({k: [r[k] for r in flagged[1:]] for k in flagged[0]})
    frame.to_parquet(tmp_path / "bool.parquet")
    # pandas' nullable type, kept by Parquet
    frame.assign(value=pd.array([None, True], dtype="boolean")).to_parquet(tmp_path / "nullable.parquet")
    for name, row in (("bool.jsonl", 2), ("bool.parquet", 1), ("nullable.parquet", 2)):
        with pytest.raises(InvalidInputError, match=rf"row {row} .*value must be a number, not true or false"):
            events.ingest(tmp_path / name, "recs", settings=settings)
    assert events.count("recs", settings=settings) == 0
    rows = [{"event_id": f"j{i}", "user_id": 1, "item_id": 7, "type": "play", "timestamp": 1.7e9} for i in range(5)]
    (tmp_path / "cr.jsonl").write_bytes(b"\r".join(json.dumps(r).encode() for r in rows) + b"\r")
    assert events.ingest(tmp_path / "cr.jsonl", "recs", settings=settings).stored == 5
    for r in rows[2:]:
        del r["timestamp"]
    (tmp_path / "late.jsonl").write_text("".join(json.dumps({**r, "event_id": "k" + r["event_id"]}) + "\n"
                                                 for r in rows))
    with pytest.raises(InvalidInputError, match=r"row 3 \(event_id 'kj2'\): missing or malformed timestamp"):
        events.ingest(tmp_path / "late.jsonl", "recs", settings=settings)
    assert events.count("recs", settings=settings) == 5
    frame = events.read_events(tmp_path / "cr.jsonl", Rules.of(settings), settings)
    assert EventLog(settings).ingest("other", frame) == (5, 0)
