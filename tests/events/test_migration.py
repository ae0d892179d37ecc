"""A catalog written by an older aimass is upgraded in place, on SQLite and on Postgres: new columns and their
index appear (served_answers before traffic splits), 32-bit id columns become 64-bit (the event log), and the
stored rows stay readable."""
from __future__ import annotations

import sqlalchemy

from aimass.catalog import FeedbackEventBase, engine_for
from aimass.events import EventLog, ServedLog

OLD = ("CREATE TABLE served_answers (seq INTEGER PRIMARY KEY, endpoint VARCHAR, request_id VARCHAR, route VARCHAR, "
       "model VARCHAR, version INTEGER, user_id INTEGER, history_length INTEGER, history_tail JSON, items JSON, "
       "scores JSON, strategy VARCHAR, served_at TIMESTAMP)")


def test_an_old_catalog_gets_the_new_columns_and_keeps_its_rows(store):
    url = store.catalog.replace("postgresql://", "postgresql+psycopg://")
    if url.startswith("sqlite:///"):
        store.home.mkdir(parents=True, exist_ok=True)
    old = sqlalchemy.create_engine(url)
    with old.begin() as c:
        c.exec_driver_sql(OLD)
        c.exec_driver_sql("INSERT INTO served_answers (seq, endpoint, request_id, route, model, version, "
                          "history_length, history_tail, items, scores, strategy, served_at) VALUES (1, 'e', 'r1', "
                          "'recommend', 'm', 1, 0, '[]', '[7]', '[1.0]', 'model', '2026-01-01 00:00:00')")
    old.dispose()
    engine_for(store.catalog)  # what every aimass process does first
    engine_for.cache_clear()
    engine_for(store.catalog)  # a second process upgrading the same catalog: nothing left to do, no error
    columns = {c["name"] for c in sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_columns("served_answers")}
    assert {"arm", "experiment_id", "shadow", "overlap", "latency_ms"} <= columns
    indexes = {i["name"] for i in sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_indexes("served_answers")}
    assert "ix_served_answers_experiment_id" in indexes
    assert "ix_served_answers_endpoint_served_at" in indexes  # an index added since, over old columns
    if url.startswith("sqlite"):  # and the planner takes it for an endpoint's window of answers
        with sqlalchemy.create_engine(url).connect() as c:
            plan = c.exec_driver_sql("EXPLAIN QUERY PLAN SELECT count(*) FROM served_answers WHERE endpoint = 'e' "
                                     "AND served_at >= '2026-01-01'").fetchall()
        assert "ix_served_answers_endpoint_served_at" in str(plan), plan
    f = ServedLog(store).frame("e")
    assert f["request_id"].tolist() == ["r1"] and not f["shadow"].any() and f["arm"].isna().all()


def test_an_old_catalogs_32_bit_id_columns_are_widened_and_keep_their_rows(store):
    """An older aimass created the event log's ids and seq as INTEGER, 32 bits on Postgres (SERIAL): they
    become 64 bits, the seq's sequence too, and the stored event stays where it was."""
    url = store.catalog.replace("postgresql://", "postgresql+psycopg://")
    if url.startswith("sqlite:///"):
        store.home.mkdir(parents=True, exist_ok=True)
    serial = "SERIAL PRIMARY KEY" if url.startswith("postgresql") else "INTEGER PRIMARY KEY"
    old = sqlalchemy.create_engine(url)
    with old.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE feedback_events (seq {serial}, event_id VARCHAR NOT NULL, user_id INTEGER "
                          "NOT NULL, item_id INTEGER NOT NULL, type VARCHAR NOT NULL, timestamp TIMESTAMP NOT NULL, "
                          "value FLOAT, request_id VARCHAR, endpoint VARCHAR NOT NULL, received_at TIMESTAMP NOT "
                          "NULL, UNIQUE (endpoint, event_id))")
        c.exec_driver_sql("INSERT INTO feedback_events (event_id, user_id, item_id, type, timestamp, endpoint, "
                          "received_at) VALUES ('old', 5, 6, 'play', '2026-01-01 00:00:00', 'e', "
                          "'2026-01-01 00:00:00')")
    old.dispose()
    engine_for(store.catalog)
    engine_for.cache_clear()
    engine_for(store.catalog)  # a second process: nothing left to widen, no error
    log = EventLog(store)
    ack = log.write("e", [FeedbackEventBase(event_id="new", user_id=2**62, item_id=2**40, type="play",
                                            timestamp=1.7e9)])[0]
    f = log.frame("e")
    assert f["event_id"].tolist() == ["old", "new"] and f["user_id"].tolist() == [5, 2**62]
    assert f["seq"].tolist() == [1, ack.seq] and ack.seq == 2
    if url.startswith("postgresql"):
        with sqlalchemy.create_engine(url).connect() as c:
            kinds = dict(c.exec_driver_sql("SELECT column_name, data_type FROM information_schema.columns "
                                           "WHERE table_name = 'feedback_events'").fetchall())
            assert kinds["seq"] == kinds["user_id"] == kinds["item_id"] == "bigint"
            assert c.exec_driver_sql("SELECT data_type FROM information_schema.sequences WHERE sequence_name "
                                     "= 'feedback_events_seq_seq'").scalar() == "bigint"


def test_an_old_catalog_whose_rows_break_an_index_added_since_says_what_to_do(store):
    """An aimass before the one-running-experiment index let two start under a race: the upgrade cannot add the
    index, and every command failed with a bare IntegrityError; it names the index and the remedy."""
    import pytest

    from aimass.errors import BackendError

    url = store.catalog.replace("postgresql://", "postgresql+psycopg://")
    engine_for(store.catalog)
    engine_for.cache_clear()
    old = sqlalchemy.create_engine(url)
    with old.begin() as c:
        c.exec_driver_sql("DROP INDEX one_running_experiment")
        for eid in ("a1", "a2"):
            c.exec_driver_sql(f"INSERT INTO experiments (endpoint, experiment_id, metric, arms, state, alpha, mde, "
                              f"min_samples, auto, started_at) VALUES ('recs', '{eid}', 'play_rate', '[]', "
                              f"'running', 0.05, 0.02, 100, false, '2026-01-01 00:00:00')")
    old.dispose()
    with pytest.raises(BackendError, match="rows of experiments break the unique index one_running_experiment"):
        engine_for(store.catalog)
    engine_for.cache_clear()


def test_a_sqlite_url_spelled_with_its_driver_is_the_same_embedded_catalog(tmp_path):
    url = f"sqlite+pysqlite:///{tmp_path / 'new' / 'catalog.db'}"  # its folder made, as for sqlite:///
    with engine_for(url).connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine_for.cache_clear()


def test_processes_creating_a_fresh_catalog_at_once_all_get_it(tmp_path):
    """create_all checks, then creates: processes starting together on a new catalog raced, and one failed."""
    import subprocess
    import sys

    program = "import sys; from aimass.catalog import engine_for; engine_for(sys.argv[1])"
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / str(round_) / 'catalog.db'}"
        procs = [subprocess.Popen([sys.executable, "-c", program, url], stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [e[-800:] for e in errors if e]
