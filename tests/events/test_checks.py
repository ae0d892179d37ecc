"""Events refused before they reach the append-only log, by every way in: the SDK's EventLog.write as /feedback,
and a file's bad line or row named where it is."""
from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from aimass import events
from aimass.catalog import FeedbackEventBase
from aimass.errors import ConflictError, InvalidInputError
from aimass.events import EventLog


def _e(i: int, **kw) -> FeedbackEventBase:
    return FeedbackEventBase(**{"event_id": f"e{i}", "user_id": 1, "item_id": 2, "type": "play",
                                "timestamp": 1.7e9 + i, **kw})


@pytest.mark.parametrize("change, error, says", [
    ({"timestamp": datetime(2300, 1, 1)}, ConflictError, "in the future"),
    ({"timestamp": datetime(1500, 1, 1)}, ConflictError, "before 1970"),
    ({"type": "bogus"}, InvalidInputError, "unknown event type 'bogus'"),
    # /feedback's JSON cannot carry them; an inf rating counted as positive, a NaN sorted above every number
    ({"value": float("inf")}, InvalidInputError, "value must be a finite number, got inf"),
    ({"value": float("nan")}, InvalidInputError, "value must be a finite number, got nan"),
], ids=["year-2300", "year-1500", "unknown-type", "inf-value", "nan-value"])
def test_the_sdk_write_refuses_what_feedback_refuses_and_stores_nothing(settings, change, error, says):
    log = EventLog(settings)
    with pytest.raises(error, match=says):
        log.write("recs", [_e(1), _e(2, **change)])
    assert events.count("recs", settings=settings) == 0
    assert [a.duplicate for a in log.write("recs", [_e(1)])] == [False]
    assert len(events.list_events("recs", settings=settings)) == 1  # the log stays readable


def test_a_bad_line_of_a_json_lines_file_is_named_by_its_line_in_the_file(settings, tmp_path):
    good = [json.dumps({"event_id": f"g{i}", "user_id": 1, "item_id": 7, "type": "play", "timestamp": 1.7e9})
            for i in range(1000)]
    (tmp_path / "ev.jsonl").write_text("\n".join([*good, '{"event']) + "\n")
    with pytest.raises(InvalidInputError, match=r"line 1001\b"):
        events.ingest(tmp_path / "ev.jsonl", "recs", settings=settings)
    assert events.count("recs", settings=settings) == 0


@pytest.mark.parametrize("column", ["user_id", "item_id"])
def test_a_uint64_id_beyond_2_62_in_parquet_is_a_bad_row_named(settings, tmp_path, column):
    ids = np.array([1, 2, 2**63 + 5], dtype=np.uint64)
    f = pd.DataFrame({"event_id": ["a", "b", "c"], "user_id": np.uint64(1), "item_id": np.uint64(7),
                      "type": "play", "timestamp": 1.7e9})
    f[column] = ids
    f.to_parquet(tmp_path / "ev.parquet")
    with pytest.raises(InvalidInputError, match=rf"row 3 \(event_id 'c'\): {column} must be a whole number"):
        events.ingest(tmp_path / "ev.parquet", "recs", settings=settings)
    assert events.count("recs", settings=settings) == 0
    f[column] = np.array([1, 2, 2**62], dtype=np.uint64)  # the largest allowed id is read whole
    f.to_parquet(tmp_path / "ok.parquet")
    assert events.read_events(tmp_path / "ok.parquet", events.Rules.of(settings), settings)[column].tolist() == [
        1, 2, 2**62]


def test_the_future_allowance_is_at_most_a_year(tmp_path):
    """A larger allowance would let a time past pandas' range (2262) into the log, breaking every read of it."""
    from pydantic import ValidationError

    from aimass.settings import Settings

    with pytest.raises(ValidationError, match="feedback_max_future_s"):
        Settings(home=tmp_path, feedback_max_future_s=300 * 365 * 86400)
    assert Settings(home=tmp_path, feedback_max_future_s=365 * 86400).feedback_max_future_s == 365 * 86400


def test_a_csv_id_beyond_2_62_that_fits_no_signed_64_bits_is_a_bad_row_named(settings, tmp_path):
    """Up to 19 digits pandas reads such a column as uint64, whose cast failed with a bare TypeError."""
    (tmp_path / "ev.csv").write_text("event_id,user_id,item_id,type,timestamp\na,1,7,play,1700000000\n"
                                     "b,9999999999999999999,7,play,1700000000\n")
    with pytest.raises(InvalidInputError, match=r"row 2 \(event_id 'b'\): user_id must be a whole number"):
        events.ingest(tmp_path / "ev.csv", "recs", settings=settings)
    assert events.count("recs", settings=settings) == 0
