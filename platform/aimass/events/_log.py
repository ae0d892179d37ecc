"""The durable feedback log. An event is acknowledged only after the transaction holding it is committed (the
catalog's SQLite runs in WAL mode with synchronous=FULL, so a commit is an fsync; Postgres commits durably by
default). Single events from concurrent requests are committed in groups: one writer thread per process
takes everything queued while the previous commit ran and commits it in one transaction, so a burst of N
requests costs about one fsync, not N. A repeated (endpoint, event_id) is stored once: the unique key
decides, across processes too, and the repeat is answered with the first copy's position and
`duplicate: true`."""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import func, select, text

from aimass.catalog import FeedbackEvent, FeedbackEventBase, engine_for
from aimass.events._rules import Rules, check
from aimass.settings import Settings

log = logging.getLogger(__name__)
TABLE = FeedbackEvent.__table__
_COLUMNS = ("event_id", "user_id", "item_id", "type", "timestamp", "value", "request_id")
_MAX_GROUP = 5000  # events per group commit: bounds one transaction's time under a flood
_CHUNK = 500  # rows per INSERT statement (SQLite's bound-parameter limit)
# Postgres draws a seq at INSERT and shows it at COMMIT, so two writers' commits could show seq 16 before 10-15:
# a replica polling "seq > last seen" (and a fold of events "through seq") would then skip 10-15 for good.
# Writers take this transaction lock first, so seqs become visible in their order, as SQLite's one writer
# makes them; it also keeps two groups with the same ids in another order from deadlocking on the unique key.
_PG_WRITE_LOCK = 0x61696D617373  # "aimass"


class Ack(NamedTuple):
    event_id: str
    seq: int
    duplicate: bool


def as_utc(ts: datetime) -> datetime:
    """A time in UTC; one without an offset is read as UTC (documented on the wire)."""
    return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)


def _insert(engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(TABLE)


_SQLITE_INSERT = (f"INSERT INTO {TABLE.name} (endpoint, event_id, user_id, item_id, type, timestamp, value, "
                  "request_id, received_at) VALUES {} ON CONFLICT (endpoint, event_id) DO NOTHING")
_SQLITE_SEQS = (f"SELECT last_insert_rowid(), changes(), json_group_array(json_array(event_id, seq)) "
                f"FROM {TABLE.name} WHERE endpoint = ? AND event_id IN ({{}})")
_SQLITE_ROWS = 100  # rows per INSERT: 9 parameters each, well inside SQLite's bound-parameter limit


def _sqlite_time(ts: datetime) -> str:
    """SQLAlchemy's storage form of a UTC time in SQLite ("%Y-%m-%d %H:%M:%S.%f"), so both write paths read back
    alike; isoformat is C and a tenth of strftime's cost, on the path every acknowledgement waits for."""
    return as_utc(ts).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_row(endpoint: str, e: FeedbackEventBase, received: str) -> tuple:
    """An event as the parameters of _SQLITE_INSERT: built by the caller as it queues the event, so that the
    writer thread holds the GIL as briefly as it can (below)."""
    return (endpoint, e.event_id, e.user_id, e.item_id, e.type, _sqlite_time(e.timestamp), e.value, e.request_id,
            received)


def _store_sqlite(db, by_endpoint: dict[str, dict[str, tuple]]) -> tuple[dict, dict]:
    """The group's rows through sqlite3 directly, in as few statement steps as possible. sqlite3 lets go of the
    GIL at every step (each row of a RETURNING clause too) and must then wait for the serving thread to hand it
    back (measured: 1.8 ms at the median under load), while the group's requests wait for their commit and
    their event loop runs short of work. One INSERT per 100 rows skips stored ids; under the write lock a
    statement's new rows take consecutive rowids, in the order of its VALUES, above every stored one. When it
    stored every row (`rowcount`), their seqs follow from `lastrowid`, with no further step; otherwise one
    SELECT reads every id's seq, and the new ones are those from the first new rowid on."""
    cur = db.cursor()
    new: dict[tuple[str, str], int] = {}
    old: dict[tuple[str, str], int] = {}
    for endpoint, rows in by_endpoint.items():
        values = list(rows.values())
        for i in range(0, len(values), _SQLITE_ROWS):
            part = values[i:i + _SQLITE_ROWS]
            cur.execute(_SQLITE_INSERT.format(",".join(["(?,?,?,?,?,?,?,?,?)"] * len(part))),
                        [x for r in part for x in r])
            if cur.rowcount == len(part):
                first = cur.lastrowid - len(part) + 1
                new.update({(endpoint, r[1]): first + j for j, r in enumerate(part)})
                continue
            last, added, pairs = cur.execute(_SQLITE_SEQS.format(",".join("?" * len(part))),
                                             [endpoint, *(r[1] for r in part)]).fetchone()
            # last_insert_rowid() speaks of this INSERT only if it stored a row: else it is an older insert's
            # (or 0 on a new connection), and every id of the part was stored before
            first = last - added + 1 if added else float("inf")
            for eid, seq in json.loads(pairs):
                (new if seq >= first else old)[(endpoint, eid)] = seq
    cur.close()
    return new, old


def _store(engine, conn, by_endpoint: dict[str, dict[str, FeedbackEventBase]],
           received: datetime) -> tuple[dict, dict]:
    new: dict[tuple[str, str], int] = {}
    old: dict[tuple[str, str], int] = {}
    for endpoint, rows in by_endpoint.items():
        values = [{**{c: getattr(e, c) for c in _COLUMNS}, "endpoint": endpoint, "timestamp": as_utc(e.timestamp),
                   "received_at": received} for e in rows.values()]
        for i in range(0, len(values), _CHUNK):
            stmt = (_insert(engine).values(values[i:i + _CHUNK])
                    .on_conflict_do_nothing(index_elements=["endpoint", "event_id"])
                    .returning(TABLE.c.seq, TABLE.c.event_id))
            new.update({(endpoint, r.event_id): r.seq for r in conn.execute(stmt)})
        missing = [k for k in rows if (endpoint, k) not in new]
        for i in range(0, len(missing), _CHUNK):
            q = select(TABLE.c.seq, TABLE.c.event_id).where(
                TABLE.c.endpoint == endpoint, TABLE.c.event_id.in_(missing[i:i + _CHUNK]))
            old.update({(endpoint, r.event_id): r.seq for r in conn.execute(q)})
    return new, old


def _rows(frames: Iterable[pd.DataFrame], read: list[int]) -> Iterator[tuple[pd.DataFrame, pd.Series, pd.Series]]:
    """Each non-empty frame without the ids it repeats, with its value and request_id columns holding None for
    missing (what the drivers write as NULL); read[0] counts every row."""
    for frame in frames:
        read[0] += len(frame)
        if len(frame):
            f = frame.drop_duplicates("event_id", keep="first")
            yield (f, f["value"].astype(object).where(f["value"].notna(), None),
                   f["request_id"].astype(object).where(f["request_id"].notna(), None))


def _write_lock(conn) -> None:
    """Postgres: one writing transaction at a time (see _PG_WRITE_LOCK), held until it commits."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_WRITE_LOCK})


def _settle(futures: list, outcome: list) -> None:
    """Resolve each waiter with its result (or exception); asyncio futures in one callback per loop."""
    by_loop: dict = {}
    for fut, out in zip(futures, outcome, strict=True):
        if isinstance(fut, asyncio.Future):
            by_loop.setdefault(fut.get_loop(), []).append((fut, out))
        elif not fut.set_running_or_notify_cancel():  # cancelled by its caller: nobody waits
            continue
        elif isinstance(out, BaseException):
            fut.set_exception(out)
        else:
            fut.set_result(out)
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, pairs)
        except RuntimeError:  # the loop closed meanwhile: nobody is waiting there any more
            pass


def _settle_on_loop(pairs: list) -> None:
    for fut, out in pairs:
        if fut.done():  # the request was cancelled (its client went away): the events are stored all the same
            continue
        if isinstance(out, BaseException):
            fut.set_exception(out)
        else:
            fut.set_result(out)


class EventLog:
    table = TABLE

    def __init__(self, settings: Settings):
        self.settings = settings
        self._rules: Rules | None = None  # parsed at the first append: a reader never needs them
        self.engine = engine_for(settings.catalog)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._db = None  # the writer thread's SQLite connection
        self.commits = 0  # group commits, and the events they stored: events / commits is the mean group
        self.committed = 0

    # --- writing -------------------------------------------------------------------------------------------
    def append(self, endpoint: str, events: list[FeedbackEventBase]) -> concurrent.futures.Future:
        """Queue `events` for the next group commit; the future resolves to one Ack per event, in order, once
        they are durable (or to the exception that stopped the commit: nothing of the group is stored, unless
        only reading back the seqs of its repeats failed, see _commit_sqlite). Checked first as /feedback
        checks them (`check`): an unknown type is InvalidInputError, a time before 1970 or too far ahead
        ConflictError, and nothing of the list is queued. The log is append-only, so one such time stored would
        break every later read of it (pandas cannot hold it)."""
        if self._rules is None:
            self._rules = Rules.of(self.settings)
        check(events, self._rules, self.settings)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._start()
        self._queue.put((endpoint, events, fut, self._rows(endpoint, events)))
        return fut

    def append_async(self, endpoint: str, events: list[FeedbackEventBase]) -> asyncio.Future:
        """`append` for a caller on an event loop: the group's waiters on one loop are woken by one callback,
        not one cross-thread wake-up each. Unchecked: the caller has run `check` (serving does, before it reads
        what the model knew), and /feedback's hot path should not pay for it twice."""
        fut = asyncio.get_running_loop().create_future()
        self._start()
        self._queue.put((endpoint, events, fut, self._rows(endpoint, events)))
        return fut

    def _rows(self, endpoint: str, events: list[FeedbackEventBase]) -> list[tuple] | None:
        if not self._sqlite:
            return None
        received = _sqlite_time(datetime.now(UTC))
        return [_sqlite_row(endpoint, e, received) for e in events]

    def write(self, endpoint: str, events: list[FeedbackEventBase]) -> list[Ack]:
        """`append` and wait: the events checked, then stored durably (the SDK's write)."""
        return self.append(endpoint, events).result()

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="aimass-group-commit", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            n = len(group[0][1])
            while n < _MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                group.append(item)
                n += len(item[1])
            try:
                outcome = self._commit(group)
                self.commits += 1
                self.committed += n
            except Exception as e:  # the whole group failed: every waiter hears it, nothing was acknowledged
                log.exception("group commit of %d events failed", n)
                outcome = [e] * len(group)
            try:
                _settle([item[2] for item in group], outcome)
            except Exception:  # the writer must outlive any one waiter's trouble: every later append needs it
                log.exception("resolving the waiters of a group commit failed")

    def _commit(self, group: list) -> list[list[Ack]]:
        if self._sqlite:
            by_rows: dict[str, dict[str, tuple]] = {}
            for endpoint, _, _, rows in group:
                mine = by_rows.setdefault(endpoint, {})
                for r in rows:
                    mine.setdefault(r[1], r)  # first copy in the group wins
            new, old = self._commit_sqlite(by_rows)
        else:
            by_endpoint: dict[str, dict[str, FeedbackEventBase]] = {}
            for endpoint, events, _, _ in group:
                mine = by_endpoint.setdefault(endpoint, {})
                for e in events:
                    mine.setdefault(e.event_id, e)
            with self.engine.begin() as conn:
                _write_lock(conn)
                new, old = _store(self.engine, conn, by_endpoint, datetime.now(UTC))
        out, given = [], set()
        for endpoint, events, _, _ in group:
            acks = []
            for e in events:
                key = (endpoint, e.event_id)
                if key in new and key not in given:
                    given.add(key)
                    acks.append(Ack(event_id=e.event_id, seq=new[key], duplicate=False))
                else:
                    acks.append(Ack(event_id=e.event_id, seq=new.get(key) or old[key], duplicate=True))
            out.append(acks)
        return out

    def _commit_sqlite(self, by_endpoint: dict) -> tuple[dict, dict]:
        """One transaction on the writer thread's own connection, held for the thread's life (opened through
        the engine, so with its pragmas); a connection that failed is closed and the next group opens another."""
        if self._db is None:
            pooled = self.engine.raw_connection()
            pooled.detach()  # never back to the pool: its transactions are by hand (below)
            self._db = pooled.dbapi_connection
            # Transactions by hand: sqlite3's implicit BEGIN is one more statement step, and a GIL wait after it
            self._db.isolation_level = None
        db = self._db
        try:
            # A group of one INSERT (one endpoint, up to 100 rows) is a transaction of its own: its one step also
            # commits (and fsyncs), with no BEGIN and no COMMIT statement, each a step that lets go of the GIL and
            # waits to get it back. If reading back its repeats' seqs then failed, the group is reported failed
            # with its new rows stored: a retry of the same event_ids answers them as duplicates.
            single = len(by_endpoint) == 1 and len(next(iter(by_endpoint.values()))) <= _SQLITE_ROWS
            if not single:
                db.execute("BEGIN")
            new, old = _store_sqlite(db, by_endpoint)
            if db.in_transaction:
                db.execute("COMMIT")
            return new, old
        except BaseException:
            try:  # first: the close waits for statements the traceback still holds, and the lock with it
                db.rollback()
                db.close()
            except Exception:
                pass
            self._db = None
            raise

    def ingest(self, endpoint: str, frames: pd.DataFrame | Iterable[pd.DataFrame]) -> tuple[int, int]:
        """Bulk append of validated rows (columns _COLUMNS, timestamps as UTC datetimes), a frame or frame by
        frame, in one transaction: (stored, duplicates). Used by `aimass feedback ingest`; a repeat of a stored
        id is skipped. An error raised while the frames are produced (a bad row further on) rolls back every
        frame before it."""
        if isinstance(frames, pd.DataFrame):
            frames = [frames]
        now = as_utc(datetime.now(UTC))
        if self.engine.dialect.name == "sqlite":
            rows, stored = self._ingest_sqlite(endpoint, frames, _sqlite_time(now))
            return stored, rows - stored
        stmt = _insert(self.engine).on_conflict_do_nothing(index_elements=["endpoint", "event_id"])
        read = [0]
        with self.engine.begin() as conn:
            _write_lock(conn)  # also keeps other writers' rows out of the count below
            before = self._count(conn, endpoint)
            for f, value, rid in _rows(frames, read):
                ts = pd.to_datetime(f["timestamp"], utc=True).dt.tz_convert("UTC").astype(object).tolist()
                conn.execute(stmt, [
                    {"endpoint": endpoint, "event_id": e, "user_id": int(u), "item_id": int(i), "type": t,
                     "timestamp": s, "value": None if v is None else float(v), "request_id": r, "received_at": now}
                    for e, u, i, t, s, v, r in zip(f["event_id"], f["user_id"], f["item_id"], f["type"], ts, value,
                                                   rid, strict=True)])
            stored = self._count(conn, endpoint) - before
        return stored, read[0] - stored

    def _ingest_sqlite(self, endpoint: str, frames: Iterable[pd.DataFrame], received: str) -> tuple[int, int]:
        """One executemany of plain tuples a frame, all in one transaction (SQLAlchemy's per-row processing took
        three quarters of a large file's ingest); times in the form _sqlite_time writes, converted as arrays."""
        sql = _SQLITE_INSERT.format("(?,?,?,?,?,?,?,?,?)")
        read, stored = [0], 0
        raw = self.engine.raw_connection()
        try:
            db = raw.driver_connection
            try:
                for f, value, rid in _rows(frames, read):
                    ts = pd.to_datetime(f["timestamp"], utc=True).dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
                    text_ = np.char.replace(np.datetime_as_string(ts.astype("datetime64[us]"), unit="us"), "T", " ")
                    stored += db.executemany(sql, zip(
                        itertools.repeat(endpoint), f["event_id"], f["user_id"].astype(int).tolist(),
                        f["item_id"].astype(int).tolist(), f["type"], text_.tolist(),
                        [None if v is None else float(v) for v in value], rid, itertools.repeat(received))).rowcount
                db.commit()
            except BaseException:
                db.rollback()
                raise
        finally:
            raw.close()
        return read[0], stored

    @staticmethod
    def _count(conn, endpoint: str) -> int:
        return conn.execute(select(func.count()).select_from(TABLE).where(TABLE.c.endpoint == endpoint)).scalar()

    # --- reading -------------------------------------------------------------------------------------------
    def since(self, endpoint: str, after_seq: int, limit: int = 50_000) -> list[tuple]:
        """(seq, user_id, item_id, type, value, timestamp) of the events after `after_seq`, in log order: what
        a serving replica polls to keep its online state."""
        q = (select(TABLE.c.seq, TABLE.c.user_id, TABLE.c.item_id, TABLE.c.type, TABLE.c.value, TABLE.c.timestamp)
             .where(TABLE.c.endpoint == endpoint, TABLE.c.seq > after_seq).order_by(TABLE.c.seq).limit(limit))
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(q)]

    def folded(self, endpoint: str, through_seq: int, negative_types: set[str], positive_types: set[str],
               received_from: datetime) -> list[tuple]:
        """(user_id, item_id, type, value, timestamp, received_at) of the events up to `through_seq` whose type some
        negative rule names, and of those received from `received_from` on whose type a positive rule names:
        what a replica of a model trained through `through_seq` still needs of them (a retrain folds only the
        positive ones into its data, and trending counts are recent)."""
        from sqlalchemy import and_, or_

        q = (select(TABLE.c.user_id, TABLE.c.item_id, TABLE.c.type, TABLE.c.value, TABLE.c.timestamp,
                    TABLE.c.received_at)
             .where(TABLE.c.endpoint == endpoint, TABLE.c.seq <= through_seq,
                    or_(TABLE.c.type.in_(sorted(negative_types)),
                        and_(TABLE.c.type.in_(sorted(positive_types)),
                             TABLE.c.received_at >= as_utc(received_from))))
             .order_by(TABLE.c.seq))
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(q)]

    def last_seq(self, endpoint: str | None = None) -> int:
        q = select(func.max(TABLE.c.seq))
        if endpoint is not None:
            q = q.where(TABLE.c.endpoint == endpoint)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar() or 0

    def frame(self, endpoint: str, *, after_seq: int | None = None, through_seq: int | None = None,
              start: datetime | None = None, end: datetime | None = None, limit: int | None = None,
              newest_first: bool = False, where=None) -> pd.DataFrame:
        """The endpoint's events as a table (columns: seq, endpoint, event_id, user_id, item_id, type,
        timestamp, value, request_id, received_at; times UTC), in log order
        (newest first if asked). `start`/`end` bound received_at; `where` is a condition on `table`."""
        q = select(TABLE).where(TABLE.c.endpoint == endpoint)
        if where is not None:
            q = q.where(where)
        q = q.order_by(TABLE.c.seq.desc() if newest_first else TABLE.c.seq)
        if after_seq is not None:
            q = q.where(TABLE.c.seq > after_seq)
        if through_seq is not None:
            q = q.where(TABLE.c.seq <= through_seq)
        if start is not None:
            q = q.where(TABLE.c.received_at >= as_utc(start))
        if end is not None:
            q = q.where(TABLE.c.received_at < as_utc(end))
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            f = pd.DataFrame(conn.execute(q).mappings().all(), columns=[c.name for c in TABLE.columns])
        for c in ("timestamp", "received_at"):
            f[c] = pd.to_datetime(f[c], utc=True)
        f["value"] = pd.to_numeric(f["value"]).astype(float)
        return f

    def types(self, endpoint: str, *, start: datetime | None = None) -> list[str]:
        """The event types the endpoint's log holds (received from `start` on), sorted."""
        q = select(TABLE.c.type).where(TABLE.c.endpoint == endpoint).distinct()
        if start is not None:
            q = q.where(TABLE.c.received_at >= as_utc(start))
        with self.engine.connect() as conn:
            return sorted(conn.execute(q).scalars())

    def named(self, endpoint: str, *, where=None, start: datetime | None = None, by_user: bool = False) -> set:
        """The request_ids that the endpoint's events name, of the events received from `start` on that match
        `where` (a condition on this table, such as Rules.positive_clause): which served answers converted.
        ``by_user``: (request_id, user_id) pairs, for a caller whose answers have users: a client may send one
        X-Request-ID with many requests, and one user's event must not convert another's answer."""
        # One sequential pass over the log, in the database, returning one column. The endpoint is wrapped in
        # coalesce() so that SQLite does not walk the endpoint's index row by row (random reads: 6.6 s for a
        # million events, against 0.5 s); matching the ids to answers is left to the caller: probing them with
        # IN (a subquery of the served answers) cost 4 s more for the same million.
        cols = (TABLE.c.request_id, TABLE.c.user_id) if by_user else (TABLE.c.request_id,)
        q = select(*cols).where(func.coalesce(TABLE.c.endpoint, "") == endpoint, TABLE.c.request_id.is_not(None))
        if where is not None:
            q = q.where(where)
        if start is not None:
            q = q.where(TABLE.c.received_at >= as_utc(start))
        with self.engine.connect() as conn:
            rows = conn.execute(q).cursor.fetchall()
        return {tuple(r) for r in rows} if by_user else {r[0] for r in rows}

    def endpoints(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(TABLE.c.endpoint).distinct().order_by(TABLE.c.endpoint)).scalars())
