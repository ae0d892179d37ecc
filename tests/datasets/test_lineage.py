"""Derived versions (a parent plus new interactions, with the events they came from) against real git, DVC
and SQLite: lineage in the catalog and in the version's meta, order timestamps, idempotence, refusals."""
from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from aimass import datasets
from aimass.errors import InvalidInputError
from tests.conftest import state_of
from tests.datasets.test_registry import _csv, _write


def fold(endpoint="recs", after=0, through=5, events=5):
    return datasets.FoldedEvents(endpoint=endpoint, after_seq=after, through_seq=through, events=events,
                                 through_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


def rows(users, items, start=1_800_000_000):
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": range(start, start + len(users))})


def state(settings) -> tuple:
    from sqlmodel import select

    from aimass.catalog import DatasetLineage, session

    with session(settings) as s:
        links = sorted((x.name, x.version, x.through_seq) for x in s.exec(select(DatasetLineage)))
    return state_of(settings), links


def test_a_derived_version_records_its_lineage(settings, tmp_path):
    datasets.register("plays", _csv(tmp_path / "a.csv"), "csv", settings=settings)
    v2 = datasets.derive("plays@v1", rows([1, 99], [7, 8]), lineage=fold(), settings=settings)
    assert (v2.ref, v2.format, v2.n_rows, v2.n_users) == ("plays@v2", "derived", 14, 5)
    link = datasets.lineage("plays@v2", settings=settings)
    assert (link.dataset, link.parent, link.endpoint, link.after_seq, link.through_seq, link.events,
            link.positive) == ("plays@v2", "plays@v1", "recs", 0, 5, 5, 2)
    assert link.through_time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert datasets.lineage("plays@v1", settings=settings) is None
    meta = json.loads((datasets.pull("plays@v2", settings=settings) / "meta.json").read_text())
    assert meta["lineage"]["parent"] == "plays@v1" and meta["lineage"]["through_seq"] == 5
    inter = datasets.load("plays@v2", settings=settings).interactions
    assert inter.tail(2)[["user_id", "item_id"]].values.tolist() == [[1, 7], [99, 8]]  # in time order

    before = state(settings)  # the same content again is the same version, whatever the lineage says
    assert datasets.derive("plays@v1", rows([1, 99], [7, 8]), lineage=fold(through=6), settings=settings).version == 2
    assert state(settings) == before

    datasets.derive("plays@v2", rows([2], [9], 1_900_000_000), lineage=fold("other", 5, 9, 1), settings=settings)
    assert [x.dataset for x in datasets.ancestry("plays@v3", settings=settings)] == ["plays@v3", "plays@v2"]
    assert datasets.folded_through("plays@v3", "recs", settings=settings) == 5  # the nearest fold of this endpoint
    assert datasets.folded_through("plays@v3", "other", settings=settings) == 9
    assert datasets.folded_through("plays@v1", "recs", settings=settings) == 0


def test_order_timestamps_continue_after_the_parent(settings, tmp_path):
    datasets.register("seq", _write(tmp_path, "s.txt", "1 5\n1 6\n2 5\n2 7\n"), "sasrec", settings=settings)
    datasets.derive("seq@v1", rows([2, 3], [6, 5], start=123), lineage=fold(), settings=settings)
    ds = datasets.load("seq@v2", settings=settings)
    assert ds.info.timestamp_kind == "order"
    assert ds.interactions.tail(2)[["user_id", "item_id", "timestamp"]].values.tolist() == [[2, 6, 4], [3, 5, 5]]


def test_bad_derivations_are_refused_and_change_nothing(settings, tmp_path):
    datasets.register("plays", _csv(tmp_path / "a.csv"), "csv", settings=settings)
    split = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "timestamp": [1, 2, 3],
                          "split": ["train", "val", "test"]})
    split.to_csv(tmp_path / "split.csv", index=False)
    datasets.register("fixed", tmp_path / "split.csv", "csv", settings=settings)
    before = state(settings)
    cases = [
        ("plays@v1", rows([], []), fold(), "no interactions to add to plays@v1"),
        ("plays@v1", rows([1], [2]).assign(value=1.0), fold(), "unexpected value"),
        ("plays@v1", rows([1], [2]).drop(columns="timestamp"), fold(), "missing timestamp"),
        ("plays@v1", rows([1], ["x"]), fold(), "item_id must hold integers"),
        ("fixed@v1", rows([1], [4]), fold(), "has its own evaluation split"),
        ("plays@v1", rows([1], [2]), {"endpoint": "recs", "after_seq": 5, "through_seq": 5, "events": 0},
         "must follow after_seq"),
    ]
    for parent, extra, link, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            datasets.derive(parent, extra, lineage=link, settings=settings)
    assert state(settings) == before


def test_a_failing_registry_leaves_no_version_and_no_lineage(settings, tmp_path):
    datasets.register("plays", _csv(tmp_path / "a.csv"), "csv", settings=settings)
    before = state(settings)
    remote = Path(settings.remote)
    shutil.move(remote, tmp_path / "remote-moved")
    remote.write_text("not a folder")
    try:
        with pytest.raises(Exception, match="failed and was undone"):
            datasets.derive("plays@v1", rows([1], [9]), lineage=fold(), settings=settings)
    finally:
        remote.unlink()
        shutil.move(tmp_path / "remote-moved", remote)
    assert state(settings) == before
