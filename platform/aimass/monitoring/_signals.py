"""The four golden signals of an endpoint over a window, from the served-answer log: every replica logs every
answer (and every failed request) there, so these are the endpoint's figures, not one replica's scrape."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import String, case, func, or_, select, type_coerce

from aimass.catalog import ServedAnswer

TABLE = ServedAnswer.__table__
COLUMNS = ["start", "requests_per_s", "errors", "error_rate", "p50_ms", "p99_ms"]


@dataclasses.dataclass
class Signals:
    endpoint: str
    window_start: datetime
    window_end: datetime
    requests: int  # answers and failures in the window (shadow answers excluded: no consumer saw them)
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    buckets: pd.DataFrame  # one row per bucket: COLUMNS

    @property
    def requests_per_s(self) -> float:
        return self.requests / max((self.window_end - self.window_start).total_seconds(), 1e-9)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def signals(engine, endpoint: str, start: datetime, end: datetime, bucket_s: float) -> Signals:
    # the time as stored (SQLite: text; Postgres: the driver's datetime): parsed once by pandas, vectorised, not
    # row by row by the ORM's type (which was 1.4 s of 2.1 for an hour at 100 requests/s)
    q = (select(type_coerce(TABLE.c.served_at, String).label("served_at"), TABLE.c.latency_ms, TABLE.c.strategy)
         .where(TABLE.c.endpoint == endpoint, TABLE.c.served_at >= start, TABLE.c.served_at < end,
                or_(TABLE.c.shadow.is_(False), TABLE.c.shadow.is_(None))))
    with engine.connect() as conn:  # the driver's tuples: no Row objects for an hour of answers
        f = pd.DataFrame(conn.execute(q).cursor.fetchall(), columns=["served_at", "latency_ms", "strategy"])
    edges = pd.date_range(start, end, freq=timedelta(seconds=bucket_s), inclusive="left")
    rows = []
    if len(f):
        f["served_at"] = pd.to_datetime(f["served_at"], utc=True, format="ISO8601")
        f["bucket"] = np.floor((f["served_at"] - start).dt.total_seconds() / bucket_s).astype(int)
        f["error"] = f["strategy"] == "error"
    # grouped once: a bucket's rows by a scan per bucket was buckets x rows (a day in 10 s buckets: minutes)
    parts = dict(tuple(f.groupby("bucket"))) if len(f) else {}
    for i, t0 in enumerate(edges):
        part = parts.get(i, f.iloc[:0])
        lat = part["latency_ms"].dropna().to_numpy(float) if len(part) else np.zeros(0)
        n, err = len(part), int(part["error"].sum()) if len(part) else 0
        span = min(bucket_s, (end - t0).total_seconds())  # the last bucket of a window it does not divide
        rows.append([t0, n / span, err, err / n if n else 0.0, *(_pct(lat, 50), _pct(lat, 99))])
    lat = f["latency_ms"].dropna().to_numpy(float) if len(f) else np.zeros(0)
    return Signals(endpoint=endpoint, window_start=start, window_end=end, requests=len(f),
                   errors=int(f["error"].sum()) if len(f) else 0, p50_ms=_pct(lat, 50), p99_ms=_pct(lat, 99),
                   buckets=pd.DataFrame(rows, columns=COLUMNS))


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


@dataclasses.dataclass
class SearchActivity:
    endpoint: str
    window_start: datetime
    window_end: datetime
    queries: int
    no_results: int  # queries that found nothing
    per_hour: pd.DataFrame  # hour, queries, no_results
    top: list[tuple[str, int]]  # most asked (case-folded), with counts
    top_no_results: list[tuple[str, int]]  # most asked of those that found nothing
    by_mode: pd.DataFrame  # mode, queries, clicked, click_through, low, high (95% Wilson interval)
    by_index: pd.DataFrame  # index (NAME/VERSION), queries, clicked, click_through, low, high

    @property
    def no_result_rate(self) -> float:
        return self.no_results / self.queries if self.queries else 0.0


BY_MODE = ["mode", "queries", "clicked", "click_through", "low", "high"]


def search_activity(answers: pd.DataFrame, clicked: set[str], endpoint: str, start: datetime, end: datetime,
                    top: int = 20) -> SearchActivity:
    """Volume, the queries asked and click-through per mode and per index version, from the window's search
    answers of the endpoint (ServedLog.frame: request_id, served_at, query, strategy, mode, model, version) and
    the request_ids that positive feedback named (`clicked`)."""
    if not len(answers):
        return SearchActivity(endpoint, start, end, 0, 0, pd.DataFrame(columns=["hour", "queries", "no_results"]),
                              [], [], pd.DataFrame(columns=BY_MODE), pd.DataFrame(columns=["index", *BY_MODE[1:]]))
    q = answers.assign(text=answers["query"].fillna("").str.strip().str.lower(),
                       empty=answers["strategy"] == "no_results",
                       hour=answers["served_at"].dt.floor("h"), mode=answers["mode"].fillna("unknown"),
                       index=answers["model"] + "/" + answers["version"].astype(str),
                       # a request_id a client sent with several queries: its clicks count for the last one
                       clicked=np.fromiter((r in clicked for r in answers["request_id"]), bool, len(answers))
                       & ~answers["request_id"].duplicated(keep="last").to_numpy())
    per_hour = q.groupby("hour").agg(queries=("text", "size"), no_results=("empty", "sum")).reset_index()

    def counted(frame: pd.DataFrame) -> list[tuple[str, int]]:
        return [(t, int(n)) for t, n in frame["text"].value_counts().head(top).items()]

    return SearchActivity(endpoint, start, end, len(q), int(q["empty"].sum()), per_hour, counted(q),
                          counted(q[q["empty"]]), _by(q, "mode"), _by(q, "index"))


def _by(q: pd.DataFrame, key: str) -> pd.DataFrame:
    """Click-through per value of `key` (mode, index version): answers with at least one positive event naming
    their request_id."""
    from aimass.monitoring._stats import wilson

    rows = []
    for value, g in q.groupby(key, sort=True):
        n, c = len(g), int(g["clicked"].sum())
        rows.append([value, n, c, *wilson(c, n)])
    return pd.DataFrame(rows, columns=[key, *BY_MODE[1:]])


SHADOW = ["shadow", "copies", "mean_overlap", "identical", "shadow_p50_ms", "shadow_p99_ms", "live_p50_ms",
          "live_p99_ms", "first", "last"]


def shadow_comparison(engine, endpoint: str, start: datetime | None, end: datetime) -> pd.DataFrame:
    """Per shadow ref: how many requests it got a copy of, how much its lists overlap the answers consumers got
    (mean, and the share identical as sets), and its latency beside the live arm's on the same requests (answers
    each side computed: cache hits are left out of both)."""
    window = [TABLE.c.endpoint == endpoint, TABLE.c.served_at < end]
    if start is not None:
        window.append(TABLE.c.served_at >= start)
    copies = select(TABLE.c.request_id).where(*window, TABLE.c.shadow.is_(True))
    # latency is computed answers' on both sides (a lookup in a warm cache beside a cold one's scoring says
    # nothing about the models), as an experiment's latency guardrail compares them
    computed = func.coalesce(TABLE.c.cached, False).is_(False)
    q = select(TABLE.c.arm, TABLE.c.request_id, TABLE.c.overlap, case((computed, TABLE.c.latency_ms)),
               type_coerce(TABLE.c.served_at, String)).where(*window, TABLE.c.shadow.is_(True))
    # the live answer of a copied request: logged within a minute of its copy, never a shadow
    pad = timedelta(minutes=1)
    # looked up by request id (its index), not by walking the endpoint's index over every live answer: the
    # endpoint inside coalesce() keeps SQLite off the latter (0.77 s for an hour at 100 requests/s)
    live = select(TABLE.c.request_id, case((computed, TABLE.c.latency_ms))).where(
        func.coalesce(TABLE.c.endpoint, "") == endpoint, TABLE.c.served_at < end + pad,
        *([TABLE.c.served_at >= start - pad] if start is not None else []),
        or_(TABLE.c.shadow.is_(False), TABLE.c.shadow.is_(None)), TABLE.c.request_id.in_(copies))
    with engine.connect() as conn:
        f = pd.DataFrame(conn.execute(q).cursor.fetchall(),
                         columns=["arm", "request_id", "overlap", "latency_ms", "served_at"])
        lv = pd.DataFrame(conn.execute(live).cursor.fetchall(), columns=["request_id", "latency_ms"])
    rows = []
    if len(f):
        f["served_at"] = pd.to_datetime(f["served_at"], utc=True, format="ISO8601")
    for ref, g in (f.groupby("arm", sort=True) if len(f) else ()):
        theirs = lv.loc[lv["request_id"].isin(g["request_id"]), "latency_ms"].dropna().to_numpy(float)
        overlap = g["overlap"].dropna().to_numpy(float)
        own = g["latency_ms"].dropna().to_numpy(float)
        rows.append([ref, len(g), round(float(overlap.mean()), 4) if len(overlap) else None,
                     round(float((overlap >= 1).mean()), 4) if len(overlap) else None,
                     _pct(own, 50), _pct(own, 99), _pct(theirs, 50), _pct(theirs, 99),
                     g["served_at"].min(), g["served_at"].max()])
    return pd.DataFrame(rows, columns=SHADOW)
