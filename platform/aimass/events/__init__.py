"""The way back: feedback events (a durable, idempotent log with group commit), the served-answer log they
join to, and the rules that say which events are positive or negative. Shared core: serving writes and reads
it, monitoring and retraining read it.

    >>> log = aimass.events.EventLog(settings)
    >>> log.write("recs", [FeedbackEventBase(event_id="e1", user_id=1, item_id=2, type="play",
    ...                                      timestamp=1733000000, value=42.0)])
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from aimass.catalog import FeedbackEventBase, FeedbackEventPublic
from aimass.errors import InvalidInputError
from aimass.events._log import Ack, EventLog, as_utc
from aimass.events._rules import Rules, check
from aimass.events._served import TAIL, ServedLog
from aimass.settings import Settings, default_settings

__all__ = ["TAIL", "Ack", "EventLog", "FeedbackEventBase", "FeedbackEventPublic", "IngestResult", "Rules", "ServedLog",
           "check", "ingest", "list_events", "read_events", "stats", "as_utc"]
_COLUMNS = ["event_id", "user_id", "item_id", "type", "timestamp", "value", "request_id"]


class IngestResult(BaseModel):
    endpoint: str
    path: str
    rows: int
    stored: int
    duplicates: int
    seconds: float
    events_per_s: float


_MISSING = ["", "NA", "N/A", "NaN", "nan", "null", "None"]
_WHOLE = re.compile(r"\d{1,19}(?:\.0*)?", re.ASCII)


def _read_json(p: Path, lines: bool) -> pd.DataFrame:
    """JSON lines (or one JSON array) as the values were written: pandas' reader turns a null id into the text
    "None" and reads every number of a column through a float once one has a decimal point."""
    import gzip

    import orjson

    with gzip.open(p, "rb") if p.suffix.lower() == ".gz" else open(p, "rb") as fh:
        raw = fh.read()
    if not lines:
        rows = orjson.loads(raw)
    else:
        rows = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            # each line is parsed alone, so orjson's own position always says "line 1": name the file's
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise InvalidInputError(f"{p}: line {n}, column {e.colno}: {e.msg}; fix or remove that line "
                                        "(nothing stored)") from None
            if not isinstance(row, dict):
                raise InvalidInputError(f"{p}: line {n} is not a JSON object; write one event object a line")
            rows.append(row)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InvalidInputError(f"{p}: expected JSON objects, one per line (or one array of them)")
    return pd.DataFrame(rows, dtype=object)


def _whole(x) -> int | None:
    """An id as the exact integer it names, or None: an int, a float that holds one exactly (up to 2**53), or
    decimal digits ("42", "42.0")."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, np.integer)):
        return int(x) if abs(int(x)) <= 2**62 else None  # beyond what ids may be (a uint64 failed a cast)
    if isinstance(x, (float, np.floating)):
        return int(x) if math.isfinite(x) and float(x).is_integer() and abs(x) <= 2**53 else None
    if isinstance(x, str) and _WHOLE.fullmatch(x.strip()):
        n = int(x.strip().split(".")[0])
        return n if abs(n) <= 2**62 else None
    return None


def _text(x) -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def read_events(path: str | Path, rules: Rules, settings: Settings) -> pd.DataFrame:
    """A file of events (CSV, JSON lines or Parquet, by extension) as validated rows; the first bad row is
    named and nothing is returned."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidInputError(f"no events file at {p}")
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix == ".gz" else p.suffix.lower()
    try:
        if suffix in (".csv", ".csv.gz"):
            # ids as written: "NA" or "null" is an id, not a missing one, and 9007199254740993 is not a float
            f = pd.read_csv(p, dtype={c: str for c in ("event_id", "type", "request_id", "user_id", "item_id")},
                            keep_default_na=False, na_values={"value": _MISSING, "timestamp": [""],
                                                              "request_id": [""]})
        elif suffix in (".jsonl", ".ndjson", ".json", ".jsonl.gz"):
            f = _read_json(p, lines=suffix != ".json")
        elif suffix in (".parquet", ".pq"):
            f = pd.read_parquet(p)
        else:
            raise InvalidInputError(f"{p}: unknown events file type {suffix or '(none)'}; use .csv, .jsonl or "
                                    ".parquet")
    except InvalidInputError:
        raise
    except Exception as e:
        raise InvalidInputError(f"{p} cannot be read as {suffix}: {str(e).splitlines()[0][:200]}") from None
    missing = [c for c in ("event_id", "user_id", "item_id", "type", "timestamp") if c not in f.columns]
    if missing:
        raise InvalidInputError(f"{p}: missing columns {', '.join(missing)} (need event_id, user_id, item_id, "
                                "type, timestamp; optional value, request_id)")
    extra = sorted(set(f.columns) - set(_COLUMNS))
    if extra:
        raise InvalidInputError(f"{p}: unknown columns {', '.join(extra)}; allowed: {', '.join(_COLUMNS)}")
    for c in ("value", "request_id"):
        if c not in f.columns:
            f[c] = None
    f = f[_COLUMNS].reset_index(drop=True)

    def bad(mask: np.ndarray, what: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise InvalidInputError(f"{p}: row {i + 1} (event_id {f['event_id'].iloc[i]!r}): {what}; "
                                    f"{int(mask.sum())} bad rows in all, nothing stored")

    for c in ("event_id", "type", "request_id"):  # a JSON number is its text; a null stays missing
        if f[c].dtype == object:
            f[c] = f[c].map(_text)
    eid = f["event_id"].astype("string")
    bad(~eid.str.fullmatch(r"[A-Za-z0-9._:@/-]{1,128}").fillna(False).to_numpy(dtype=bool),
        "event_id must be 1-128 letters, digits or . _ : @ / -")
    f["event_id"] = eid.astype(object)
    for c in ("user_id", "item_id"):
        col = f[c]
        if pd.api.types.is_unsigned_integer_dtype(col.dtype):
            # a uint64 from 2**63 on has no Int64 form (the cast raises): out of range, so a bad row like any
            col = col.astype("UInt64").where(col <= 2**62)
        v = col.astype("Int64") if pd.api.types.is_integer_dtype(col.dtype) else col.map(_whole).astype("Int64")
        ok = v.notna() & (v.fillna(-1) >= 0) & (v.fillna(-1) <= 2**62)
        bad(~ok.to_numpy(dtype=bool), f"{c} must be a whole number from 0 to 2**62")
        f[c] = v.astype(np.int64)
    t = f["type"].astype("string")
    bad(~t.isin(rules.types).fillna(False).to_numpy(dtype=bool),
        f"unknown event type (known: {', '.join(rules.types)})")
    f["type"] = t.astype(object)
    ts = f["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(ts):  # Parquet keeps real times
        ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts
        ts = (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    num = pd.to_numeric(ts, errors="coerce")  # unix seconds, or else ISO 8601, row by row
    # beyond pandas' nanosecond range (about 9.2e9 s) to_datetime overflows instead of coercing: malformed too
    parsed = pd.to_datetime(num.where(num.abs() < 9e9), unit="s", utc=True, errors="coerce")
    iso = num.isna() & ts.notna()
    if iso.any():
        parsed[iso] = pd.to_datetime(ts[iso].astype(str), utc=True, errors="coerce", format="ISO8601")
    bad(parsed.isna().to_numpy(), "missing or malformed timestamp (ISO 8601 or unix seconds)")
    bad((parsed < pd.Timestamp(0, tz="UTC")).to_numpy(), "timestamp before 1970-01-01")
    limit = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=settings.feedback_max_future_s)
    bad((parsed > limit).to_numpy(), f"timestamp more than {settings.feedback_max_future_s:g} s in the future")
    f["timestamp"] = parsed
    v = pd.to_numeric(f["value"], errors="coerce")
    bad((v.isna() & f["value"].notna()).to_numpy(), "value must be a number")
    bad(np.isinf(v.to_numpy(dtype=np.float64)), "value must be a finite number")
    f["value"] = v
    rid = f["request_id"].astype("string")
    bad((rid.notna() & ~rid.str.fullmatch(r"[A-Za-z0-9._-]{1,64}").fillna(False)).to_numpy(dtype=bool),
        "request_id must be 1-64 letters, digits or . _ -")
    f["request_id"] = rid.astype(object).where(rid.notna(), None)
    return f


def ingest(path: str | Path, endpoint: str, *, settings: Settings | None = None) -> IngestResult:
    """Append a file of events to `endpoint`'s log in one transaction: all or nothing; ids already stored
    (or repeated in the file) are stored once and counted as duplicates."""
    import time

    s = settings or default_settings()
    t0 = time.perf_counter()
    frame = read_events(path, Rules.of(s), s)
    stored, dup = EventLog(s).ingest(endpoint, frame)
    dt = time.perf_counter() - t0
    return IngestResult(endpoint=endpoint, path=str(path), rows=len(frame), stored=stored, duplicates=dup,
                        seconds=round(dt, 3), events_per_s=round(len(frame) / dt if dt else 0.0, 1))


def list_events(endpoint: str, *, limit: int = 20, settings: Settings | None = None) -> list[FeedbackEventPublic]:
    """The endpoint's latest `limit` events, newest first."""
    s = settings or default_settings()
    rows = EventLog(s).frame(endpoint, limit=limit, newest_first=True)
    return [FeedbackEventPublic.model_validate({**r, "value": None if pd.isna(r["value"]) else r["value"],
                                                "request_id": r["request_id"] or None})
            for r in rows.to_dict("records")]


def count(endpoint: str, *, settings: Settings | None = None) -> int:
    """How many events the endpoint's log holds (one SQL count: cheap at any size, unlike `stats`)."""
    from sqlalchemy import func, select

    from aimass.catalog import FeedbackEvent

    t = FeedbackEvent.__table__
    with EventLog(settings or default_settings()).engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t).where(t.c.endpoint == endpoint)).scalar() or 0)


def stats(endpoint: str, *, settings: Settings | None = None) -> dict:
    """Counts of the endpoint's log: events by type and polarity, users, items, and how many events name a
    request_id that no served answer has (unjoined: a typo'd or never-served id). Counted in the database: the
    log may hold more events than this process can hold in memory."""
    from sqlalchemy import and_, exists, func, select

    from aimass.catalog import FeedbackEvent, ServedAnswer

    s = settings or default_settings()
    log = EventLog(s)
    t, a = FeedbackEvent.__table__, ServedAnswer.__table__
    mine = t.c.endpoint == endpoint
    pol = Rules.of(s).polarity_case(t.c.type, t.c.value).label("polarity")
    with_rid = and_(t.c.request_id.is_not(None), t.c.request_id != "")
    joined = exists().where(a.c.endpoint == endpoint, a.c.request_id == t.c.request_id)
    with log.engine.connect() as conn:
        groups = conn.execute(select(t.c.type, pol, func.count()).where(mine).group_by(t.c.type, pol)).all()
        users, items, last_seq, first, last = conn.execute(
            select(func.count(t.c.user_id.distinct()), func.count(t.c.item_id.distinct()), func.max(t.c.seq),
                   func.min(t.c.received_at), func.max(t.c.received_at)).where(mine)).one()
        rids = conn.execute(select(func.count()).where(mine, with_rid)).scalar()
        unjoined = conn.execute(select(func.count()).where(mine, with_rid, ~joined)).scalar()
        answers = conn.execute(select(func.count()).select_from(a).where(a.c.endpoint == endpoint)).scalar()
    by_type: dict[str, int] = {}
    by_polarity = {1: 0, -1: 0, 0: 0}
    for type_, p, n in groups:
        by_type[type_] = by_type.get(type_, 0) + n
        by_polarity[p] += n
    return {
        "endpoint": endpoint, "events": sum(by_type.values()), "users": int(users), "items": int(items),
        "by_type": dict(sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0]))),
        "positive": by_polarity[1], "negative": by_polarity[-1], "neutral": by_polarity[0],
        "with_request_id": int(rids or 0), "unjoined_request_ids": int(unjoined or 0),
        "served_answers": int(answers or 0), "last_seq": int(last_seq or 0),
        "first_received": None if first is None else as_utc(first).isoformat(),
        "last_received": None if last is None else as_utc(last).isoformat(),
    }
