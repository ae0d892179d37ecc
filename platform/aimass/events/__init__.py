"""The way back: feedback events (a durable, idempotent log with group commit), the served-answer log they
join to, and the rules that say which events are positive or negative. Shared core: serving writes and reads
it, monitoring and retraining read it.

    >>> log = aimass.events.EventLog(settings)
    >>> log.write("recs", [FeedbackEventBase(event_id="e1", user_id=1, item_id=2, type="play",
    ...                                      timestamp=1733000000, value=42.0)])
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from aimass.catalog import FeedbackEventBase, FeedbackEventPublic
from aimass.events._files import chunks, read_events
from aimass.events._log import Ack, EventLog, as_utc
from aimass.events._rules import Rules, check
from aimass.events._served import TAIL, ServedLog
from aimass.settings import Settings, default_settings

__all__ = ["TAIL", "Ack", "EventLog", "FeedbackEventBase", "FeedbackEventPublic", "IngestResult", "Rules", "ServedLog",
           "check", "ingest", "list_events", "read_events", "stats", "as_utc"]


class IngestResult(BaseModel):
    endpoint: str
    path: str
    rows: int
    stored: int
    duplicates: int
    seconds: float
    events_per_s: float


def ingest(path: str | Path, endpoint: str, *, settings: Settings | None = None) -> IngestResult:
    """Append a file of events to `endpoint`'s log; ids already stored (or repeated in the file) are stored once
    and counted as duplicates. The whole file is checked before anything is stored (a bad row stores nothing),
    then written a chunk (CHUNK_ROWS events) a transaction, so its size is not bounded by memory and live
    `/feedback` commits are not held up for the whole file: an ingest interrupted while it writes has stored
    its first chunks, and running it again stores the rest."""
    import time

    from aimass.serving import check_endpoint

    # stored under a name serving could have ("" or "Bad/x" would hold events no deployment could read); reads
    # take any name (a bare `bentoml serve` of the model My_Model.v2 logs its feedback under my-model-v2, and
    # before session 47 under my_model.v2)
    check_endpoint(endpoint)
    s = settings or default_settings()
    t0 = time.perf_counter()
    log, rules = EventLog(s), Rules.of(s)
    parts = chunks(path, rules, s)
    first = next(parts)
    if next(parts, None) is None:
        stored, dup = log.ingest(endpoint, first)
    else:
        # One transaction over a large file held the catalog's write lock for all of it (a few million events
        # past the 30 s other writers wait): /feedback answered 503 and the served-answer log lost its flushes.
        # So: checked whole first (read twice, ~20% more time), then stored a chunk a transaction, the lock let
        # go while each next chunk is read.
        for _ in parts:
            pass
        del first
        stored = dup = 0
        for part in chunks(path, rules, s):
            new, again = log.ingest(endpoint, part)
            stored, dup = stored + new, dup + again
    rows = stored + dup
    dt = time.perf_counter() - t0
    return IngestResult(endpoint=endpoint, path=str(path), rows=rows, stored=stored, duplicates=dup,
                        seconds=round(dt, 3), events_per_s=round(rows / dt if dt else 0.0, 1))


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
    from sqlalchemy import and_, exists, func, or_, select

    from aimass.catalog import FeedbackEvent, ServedAnswer

    s = settings or default_settings()
    log = EventLog(s)
    t, a = FeedbackEvent.__table__, ServedAnswer.__table__
    mine = t.c.endpoint == endpoint
    pol = Rules.of(s).polarity_case(t.c.type, t.c.value).label("polarity")
    with_rid = and_(t.c.request_id.is_not(None), t.c.request_id != "")
    # one probe of the answers' request_id index per event: compared bare, SQLite probed the endpoint index
    # instead and read every answer of the endpoint for each event (minutes for a million events)
    joined = exists().where(a.c.request_id == t.c.request_id, func.coalesce(a.c.endpoint, "") == endpoint)
    with log.engine.connect() as conn:
        groups = conn.execute(select(t.c.type, pol, func.count()).where(mine).group_by(t.c.type, pol)).all()
        users, items, last_seq, first, last = conn.execute(
            select(func.count(t.c.user_id.distinct()), func.count(t.c.item_id.distinct()), func.max(t.c.seq),
                   func.min(t.c.received_at), func.max(t.c.received_at)).where(mine)).one()
        rids = conn.execute(select(func.count()).where(mine, with_rid)).scalar()
        unjoined = conn.execute(select(func.count()).where(mine, with_rid, ~joined)).scalar()
        # what consumers were answered: a shadow's copy of a request answered no one
        answers = conn.execute(select(func.count()).select_from(a).where(
            a.c.endpoint == endpoint, or_(a.c.shadow.is_(False), a.c.shadow.is_(None)))).scalar()
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
