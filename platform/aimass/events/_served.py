"""The served-answer log: what each answer was (model version, history length, items, scores), so that
feedback joins to the list that showed an item (by request_id) and monitoring compares windows of traffic
with the training reference. Best effort by design: answers are queued in memory and written in one
transaction every `interval` seconds by a background thread, off the request path; a crash loses at most
that interval of answer records (never a feedback event: those go through the durable log)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from datetime import UTC, datetime

import orjson
import pandas as pd
from sqlalchemy import String, or_, select, type_coerce

from aimass.catalog import ServedAnswer, engine_for
from aimass.events._log import _sqlite_time, as_utc
from aimass.settings import Settings

log = logging.getLogger(__name__)
TABLE = ServedAnswer.__table__
TAIL = 50  # history items kept per answer: enough to measure the popularity of what the model read
_MAX_PENDING = 100_000  # a store that cannot keep up sheds answer records, never memory
_COLUMNS = ("endpoint", "request_id", "route", "model", "version", "user_id", "history_length", "history_tail",
            "items", "scores", "strategy", "served_at", "arm", "experiment_id", "latency_ms", "shadow", "overlap",
            "query", "mode", "cached")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY  # a family may answer numpy scalars
_CHUNK = 512  # rows a statement: 10,240 parameters, within SQLite's and Postgres's limits


class ServedLog:
    def __init__(self, settings: Settings, interval: float = 0.25):
        self.engine = engine_for(settings.catalog)
        self.interval = interval
        self._pending: list[tuple] = []
        self._lock = threading.Lock()
        # held from taking the queued rows to committing them: a flush() returns once everything recorded before
        # it is stored, even rows the writer thread took a moment before (a drift report read right after the
        # caller's flush saw 30 of 550 answers: the writer's other 520 were not yet committed)
        self._writing = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self._second = (-1, "")
        self._inserts: dict[int, str] = {}

    def record(self, endpoint: str, request_id: str, route: str, model: str, version: int,
               user_id: int | None, history: list[int] | None, items: list[int], scores: list[float],
               strategy: str = "model", *, arm: str | None = None, experiment_id: str | None = None,
               latency_ms: float | None = None, shadow: bool = False, overlap: float | None = None,
               query: str | None = None, mode: str | None = None, history_length: int | None = None,
               cached: bool = False) -> None:
        """Queue one answer: `history` may be only the tail of the history the answer read, whose whole length
        is then `history_length`. Its lists are encoded here (orjson: about a microsecond for the three), so that
        a queued row holds only strings and numbers, which the garbage collector stops tracking: at 5,000
        answers a second, rows of lists waiting for the writer made the collector's full passes 80-280 ms."""
        dumps = orjson.dumps
        try:
            lists = (dumps(history[-TAIL:] if history else (), option=_NUMPY), dumps(items, option=_NUMPY),
                     dumps(scores, option=_NUMPY))
        except TypeError:  # orjson's error for what JSON cannot hold: the record is lost, never the answer
            with self._lock:
                self.dropped += 1
            log.warning("served answer %s not logged: its items or scores are not JSON", request_id, exc_info=True)
            return
        length = history_length if history_length is not None else len(history) if history else 0
        row = (endpoint, request_id, route, model, version, user_id, length, *lists,
               strategy, self._now(), arm, experiment_id, latency_ms, shadow, overlap, query, mode, cached)
        with self._lock:
            if len(self._pending) >= _MAX_PENDING:
                self.dropped += 1
                return
            self._pending.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aimass-served-log", daemon=True)
                self._thread.start()

    def flush(self) -> int:
        """Write the queued answers in one transaction, up to 512 rows a statement (one multi-row VALUES),
        as they are stored (JSON text, UTC time without an offset, as SQLAlchemy writes them). Not an
        executemany: its writer takes the GIL back after every row (the driver releases it around each row's
        step), so the serving event loop hands it over thousands of times a flush; with it, bare BentoML of
        item-kNN answered 3,390-3,620 requests/s at concurrency 64 with p99 134-242 ms, against 5,890-6,150
        and 16-17 ms this way (README, "Most of that tail was the served-answer log")."""
        with self._writing:
            return self._write()

    def _write(self) -> int:
        with self._lock:
            rows, self._pending = self._pending, []
        if rows:
            with self.engine.begin() as conn:
                i = 0
                while i < len(rows):
                    n = min(_CHUNK, 1 << (len(rows) - i).bit_length() - 1)  # powers of two: few distinct statements
                    params = [v for r in rows[i:i + n]
                              for v in (*r[:7], r[7].decode(), r[8].decode(), r[9].decode(), *r[10:])]
                    conn.exec_driver_sql(self._insert(n), tuple(params))
                    i += n
        return len(rows)

    def _insert(self, n: int) -> str:
        """INSERT of n rows, made once per size."""
        sql = self._inserts.get(n)
        if sql is None:
            mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
            one = f"({', '.join([mark] * len(_COLUMNS))})"
            sql = self._inserts[n] = f"INSERT INTO {TABLE.name} ({', '.join(_COLUMNS)}) VALUES {', '.join([one] * n)}"
        return sql

    def _now(self) -> str:
        """Now as the event log stores a time (_sqlite_time, which Postgres reads as a timestamp too), for every
        answer: the second's text is made once a second (0.4 us a call against _sqlite_time's 1.9)."""
        t = time.time()
        second, text = self._second
        if int(t) != second:
            second = int(t)
            text = _sqlite_time(datetime.fromtimestamp(second, UTC))[:19]  # without its microseconds
            self._second = (second, text)
        return f"{text}.{int((t - second) * 1e6):06d}"

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.flush()
            except Exception:  # the store is away: keep serving; the rows of this flush are lost
                log.exception("writing served answers failed")

    def _where(self, q, endpoint: str, start: datetime | None, end: datetime | None, shadow: bool,
               experiment_id: str | None, errors: bool, route: str | list[str] | None):
        q = q.where(TABLE.c.endpoint == endpoint)
        if not errors:
            q = q.where(TABLE.c.strategy != "error")
        q = q.where(TABLE.c.shadow.is_(True)) if shadow else q.where(or_(TABLE.c.shadow.is_(False),
                                                                          TABLE.c.shadow.is_(None)))
        if experiment_id is not None:
            q = q.where(TABLE.c.experiment_id == experiment_id)
        if route is not None:
            q = q.where(TABLE.c.route.in_([route] if isinstance(route, str) else route))
        if start is not None:
            q = q.where(TABLE.c.served_at >= as_utc(start))
        if end is not None:
            q = q.where(TABLE.c.served_at < as_utc(end))
        return q

    def frame(self, endpoint: str, *, start: datetime | None = None, end: datetime | None = None,
              limit: int | None = None, shadow: bool = False, experiment_id: str | None = None,
              errors: bool = False, route: str | list[str] | None = None,
              columns: list[str] | None = None, seqs: list[int] | None = None,
              users: Collection[int] | None = None, request_ids: Collection[str] | None = None) -> pd.DataFrame:
        """The endpoint's answers (columns of ServedAnswer; served_at UTC), oldest first: the answers consumers
        got, or with `shadow` only the shadow arm's (never returned, logged for comparison); with `errors` also
        the failed requests (strategy 'error', no items); with `route` only that route's (or routes'). With
        `columns`, only those are read, as the driver's rows: a page over an hour of traffic needs a few scalar
        columns, not every answer's lists (the ORM's row objects and JSON decoding were most of its time). With
        `seqs`, only the answers of those log positions (a sample of a window too large to read whole). With
        `users` / `request_ids`, only the answers to those users or naming those request ids, kept batch by batch
        as they are read: an endpoint's log of any age is scanned in bounded memory (too many ids for a
        statement's parameters, so not in SQL)."""
        if columns is None:
            q = select(TABLE)
        else:  # the time as stored (SQLite: text), parsed below in one vectorised pass
            q = select(*(type_coerce(TABLE.c.served_at, String).label("served_at") if c == "served_at"
                         else TABLE.c[c] for c in columns))
        q = self._where(q.order_by(TABLE.c.seq), endpoint, start, end, shadow, experiment_id, errors, route)
        if limit is not None:
            q = q.limit(limit)
        # the positions asked for, a bounded number at a time (a database's limit on a statement's parameters)
        ordered = None if seqs is None else sorted(seqs)
        picks = [None] if ordered is None else [ordered[i:i + 5000] for i in range(0, len(ordered), 5000)]
        names = [c.name for c in TABLE.columns] if columns is None else list(columns)
        keep = None
        if users is not None or request_ids is not None:
            wanted_users, wanted_ids = set(users or ()), set(request_ids or ())
            u, r = names.index("user_id"), names.index("request_id")
            keep = lambda row: row[u] in wanted_users or row[r] in wanted_ids  # noqa: E731
        rows = []
        with self.engine.connect() as conn:
            for chunk in picks:
                part = q if chunk is None else q.where(TABLE.c.seq.in_(chunk))
                if columns is None:
                    rows += [tuple(r) for r in conn.execute(part) if keep is None or keep(r)]
                    continue
                cursor = conn.execute(part).cursor
                while batch := cursor.fetchmany(100_000):
                    rows += batch if keep is None else [row for row in batch if keep(row)]
        f = pd.DataFrame(rows, columns=names)
        if "user_id" in f.columns:  # not through float64 (one answer without a user): ids go up to 2^62
            at = names.index("user_id")
            f["user_id"] = pd.array([r[at] for r in rows], dtype="Int64")
        if "served_at" in f.columns:
            f["served_at"] = pd.to_datetime(f["served_at"], utc=True, format="ISO8601")
        return f

    def queries(self, endpoint: str, *, min_users: int = 1, days: float = 30,
                limit: int = 5000) -> list[tuple[str, int]]:
        """The endpoint's past search queries of the last `days` that found something and that at least
        `min_users` different (known) users asked, most asked first, as (query, times): what suggestions complete
        beside the catalogue's titles. Case-folded, so "Jazz" and "jazz" count together."""
        from datetime import timedelta

        from sqlalchemy import func

        q = func.lower(func.trim(TABLE.c.query))
        since = as_utc(datetime.now(UTC) - timedelta(days=days))
        stmt = (select(q.label("q"), func.count().label("n"))
                .where(TABLE.c.endpoint == endpoint, TABLE.c.route == "search", TABLE.c.query.is_not(None),
                       TABLE.c.strategy == "model", TABLE.c.served_at >= since,
                       or_(TABLE.c.shadow.is_(False), TABLE.c.shadow.is_(None)))
                .group_by(q).having(func.count(TABLE.c.user_id.distinct()) >= min_users)
                .order_by(func.count().desc(), q).limit(limit))
        with self.engine.connect() as conn:
            return [(r.q, int(r.n)) for r in conn.execute(stmt) if r.q]
