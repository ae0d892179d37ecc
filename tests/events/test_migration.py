"""A catalog written by an older aimass (here: served_answers before traffic splits) is upgraded in place, on
SQLite and on Postgres: the new columns and their index appear, and the stored rows stay readable."""
from __future__ import annotations

import sqlalchemy

from aimass.catalog import engine_for
from aimass.events import ServedLog

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
    f = ServedLog(store).frame("e")
    assert f["request_id"].tolist() == ["r1"] and not f["shadow"].any() and f["arm"].isna().all()
