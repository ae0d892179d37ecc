"""Monitoring of served endpoints: drift reports of a window of traffic against the training reference
(Evidently), and online metrics of the served lists from the feedback log.

    >>> r = aimass.monitoring.drift("recs", window_s=3600)      # r.drifted, r.columns, r.html
    >>> aimass.monitoring.reports("recs")                        # stored reports, newest first
    >>> aimass.monitoring.online_metrics("recs", window_s=86400) # CTR / hit rate per model version
    >>> aimass.monitoring.golden_signals("recs")                 # requests/s, errors, p50/p99, per minute
    >>> aimass.monitoring.search_activity("search")              # query volume, top and zero-result queries

What is compared. The endpoint's `recommend` answers of the window (from the served-answer log), of the model
version that served most of them, against that version's training reference (a fixed-seed sample of up to
2,000 training users, each answered as `recommend(user_id)` is; cached per version under
home/monitoring/_reference/). Per answer: history_length, user_activity, history_popularity,
history_label (the most frequent label, e.g. genre, of the history's last items), items_popularity,
score_top, score_spread, strategy; see _features. Per window, reported beside the verdict: catalogue
coverage and label diversity of the lists (both sides at the same number of answers, the smaller side's, as
coverage grows with it), and feedback rates (the window's events against the training data's event mix).

How a column is judged (pinned, so that the verdict does not depend on the window's size; see _stats): a
numeric column drifts when the Wasserstein distance, in reference standard deviations, is >= 0.1 AND a
two-sample Kolmogorov-Smirnov test gives p < 1e-4; a categorical column when the Jensen-Shannon distance of
the value shares is >= 0.1 AND a chi-square test of the 2 x values table gives p < 1e-4. The effect size
alone (Evidently's default above 1,000 reference rows) flags the sampling noise of windows of a few hundred
answers; the p-value alone (its default below) flags negligible differences in windows of 10,000. The
window drifts when at least DRIFT_SHARE (a quarter: two of eight) of the compared columns drift. Measured on
a 3,000-user demo with a 2,000-user reference: 0 of 350 random-user windows of 100 to 10,000 answers
flagged; every window of only the top-decile users, or of one genre's histories, flagged from 100 answers
on (with p < 1e-3 instead, 1 random window of 350 flagged: two correlated score columns at once).

Each report is stored under home/monitoring/ENDPOINT/STAMP/: report.html and report.json (Evidently's) and
summary.json (the DriftReport). Storing one removes the endpoint's oldest beyond Settings.monitor_keep_reports
(a report's HTML is about 4 MB, and the scheduler writes one an hour per endpoint)."""
from __future__ import annotations

import logging
import math
import re
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from aimass.errors import ConflictError, InvalidInputError, NotFoundError
from aimass.monitoring import _features, _online, _reference, _stats
from aimass.settings import Settings, default_settings

log = logging.getLogger(__name__)
__all__ = ["DRIFT_SHARE", "ColumnDrift", "DriftReport", "OnlineMetrics", "Rate", "ReportInfo", "drift",
           "online_metrics", "reports"]
DRIFT_SHARE = 0.25
# answers a report reads whole at most: a uniform sample of this many judges distributions as well as millions do
MAX_ANSWERS = 100_000


class ColumnDrift(BaseModel):
    kind: str  # numeric | categorical
    stattest: str
    score: float  # the effect size: normed Wasserstein or Jensen-Shannon distance
    threshold: float
    p_value: float
    alpha: float
    drifted: bool
    current: float | str | None  # mean (numeric) or most frequent value (categorical)
    reference: float | str | None
    n_current: int  # rows with a value (a cold start has no history to measure)
    n_reference: int


class DriftReport(BaseModel):
    endpoint: str
    model: str
    version: int
    dataset: str | None
    window_start: datetime
    window_end: datetime
    n_current: int
    # the window's answers of the version when more than the cap: n_current of them were drawn and compared
    sampled_from: int | None = None
    n_reference: int
    not_compared: dict[str, int]  # answers of the window left out: other routes, other model versions
    drifted: bool
    drifted_share: float
    drifted_columns: list[str]
    drift_share: float  # the share of drifted columns at which the window drifts
    columns: dict[str, ColumnDrift]
    current: dict  # window figures: coverage, diversity, feedback
    reference: dict
    html: str
    json_path: str
    summary: str
    created_at: datetime
    seconds: float
    reference_seconds: float | None  # time spent building the reference; None when it came from the cache


class ReportInfo(BaseModel):
    endpoint: str
    created_at: datetime
    model: str
    version: int
    window_start: datetime
    window_end: datetime
    n_current: int
    drifted: bool
    drifted_share: float
    drifted_columns: list[str]
    html: str
    json_path: str
    summary: str


class Rate(BaseModel):
    successes: int
    trials: int
    rate: float | None
    low: float | None  # 95% Wilson interval
    high: float | None


class OnlineMetrics(BaseModel):
    endpoint: str
    model: str
    version: int
    arm: str | None = None
    window_start: datetime | None
    window_end: datetime
    answers: int
    answers_with_request_events: int
    click_through: Rate
    negative: Rate
    by_type: dict[str, Rate]
    hit_rate: Rate
    first_served: datetime
    last_served: datetime
    # the window's answers (every version's) when more than the cap: `answers` of them were drawn and measured
    sampled_from: int | None = None


def _check(endpoint: str) -> str:
    from aimass.serving import check_endpoint  # serving's rule for endpoint names

    return check_endpoint(endpoint)


_MAX_WINDOW_S = 100 * 365.25 * 86_400  # a longer one has no start a datetime can hold


def _window(window_s: float | None, end: datetime | None) -> tuple[datetime | None, datetime]:
    from aimass.events import as_utc

    if window_s is not None and not 0 < window_s <= _MAX_WINDOW_S:  # NaN and infinity too
        raise InvalidInputError(f"window must be positive and at most 100 years, got {window_s:g} s")
    end = as_utc(end) if end is not None else datetime.now(UTC)
    return (end - timedelta(seconds=window_s) if window_s is not None else None), end


def _check_cap(max_answers) -> None:
    if isinstance(max_answers, bool) or not isinstance(max_answers, int | np.integer) or max_answers < 1:
        raise InvalidInputError(f"max_answers must be a whole number of at least 1, got {max_answers!r}")


def _sample(seqs: np.ndarray, cap: int) -> tuple[list[int], int | None]:
    """The log positions to read: all of them, or a seeded uniform sample of `cap` (the same window gives the
    same figures) and how many there were."""
    if len(seqs) <= cap:
        return seqs.tolist(), None
    return np.random.default_rng(0).choice(seqs, cap, replace=False).tolist(), len(seqs)


def _total_answers(served, endpoint: str) -> int:
    from sqlalchemy import func, select

    from aimass.catalog import ServedAnswer

    t = ServedAnswer.__table__
    with served.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t).where(t.c.endpoint == endpoint)).scalar() or 0)


def _nothing(endpoint: str, start: datetime | None, end: datetime, total: int) -> NotFoundError:
    span = f"between {start:%Y-%m-%d %H:%M:%S} and {end:%Y-%m-%d %H:%M:%S} UTC" if start else f"before {end}"
    return NotFoundError(f"endpoint {endpoint!r} has no served answers {span}; it has {total} in all"
                         + ("" if total else " (is it deployed under this name, and has it answered yet?)"))


def drift(endpoint: str, *, window_s: float = 3600, end: datetime | None = None, model: str | None = None,
          drift_share: float = DRIFT_SHARE, reference_users: int = _reference.USERS,
          max_answers: int = MAX_ANSWERS, settings: Settings | None = None) -> DriftReport:
    """A drift report of the endpoint's `recommend` answers served in [end - window_s, end) against the
    training reference of the model version that served most of them (or `model`, "NAME/VERSION"); stored
    in the home and returned. A window with more than `max_answers` of them is judged on a uniform sample of
    that many (seeded: the same window gives the same report), which the report says (`sampled_from`)."""
    from aimass.events import ServedLog

    s = settings or default_settings()
    _check(endpoint)
    if not 0 < drift_share <= 1:
        raise InvalidInputError(f"drift_share must be in (0, 1], got {drift_share}")
    # checked before anything is read: 0 would replace the version's good cached reference with an empty one
    if isinstance(reference_users, bool) or not isinstance(reference_users, int | np.integer) or reference_users < 1:
        raise InvalidInputError(f"reference_users must be a whole number of at least 1 (training users the "
                                f"reference answers for; default {_reference.USERS}), got {reference_users!r}")
    _check_cap(max_answers)
    t0 = time.perf_counter()
    start, end = _window(window_s, end)
    served = ServedLog(s)
    # who answered what: three scalar columns of every answer; the answers' lists are read below for the one
    # route and version compared (an hour at thousands of answers a second, read whole, was gigabytes)
    frame = served.frame(endpoint, start=start, end=end, columns=["seq", "route", "model", "version"])
    if frame.empty:
        raise _nothing(endpoint, start, end, _total_answers(served, endpoint))
    refs = frame["model"] + "/" + frame["version"].astype(str)
    rec = frame["route"] == "recommend"
    if not rec.any():
        routes = ", ".join(f"{k} {v}" for k, v in frame["route"].value_counts().items())
        raise InvalidInputError(f"endpoint {endpoint!r} has no recommend answers in the window (it has {routes}): "
                                "drift is measured on recommend answers")
    chosen = model or refs[rec].value_counts().index[0]
    if not (rec & (refs == chosen)).any():
        have = ", ".join(f"{k} ({v})" for k, v in refs[rec].value_counts().items())
        raise NotFoundError(f"no recommend answers of {chosen} in the window; served: {have}")
    name, version = chosen.rsplit("/", 1)
    keep = rec & (refs == chosen)
    left_out = pd.concat([frame.loc[~rec, "route"], refs[rec & ~keep]]).value_counts()
    # a busy hour holds millions of answers, each with its lists: a seeded uniform sample of them beyond the cap
    # only the compared version's rows are read with their lists, not every version's in the window
    seqs, sampled_from = _sample(frame.loc[keep, "seq"].to_numpy(), max_answers)
    answers = served.frame(endpoint, start=start, end=end, route="recommend", seqs=seqs)  # the chosen version's

    ref = _reference.get(name, int(version), s, reference_users)
    cur = _features.per_answer(answers, ref.catalogue, _reference.K)
    columns = _compare(cur, ref.rows)
    numeric = [c for c in _features.NUMERIC if c in columns]
    categorical = [c for c in _features.CATEGORICAL if c in columns]
    created = datetime.now(UTC)
    folder, tmp = _report_folder(s, endpoint, created)
    try:
        snapshot = _stats.evidently_report(cur, ref.rows, numeric, categorical, drift_share, tmp)
        drifted_cols = [c for c, r in columns.items() if r.drifted]
        share = len(drifted_cols) / len(columns) if columns else 0.0
        if _stats.drifted_count(snapshot) not in (None, len(drifted_cols)):  # the same test functions decide
            log.warning("report %s: Evidently counted %s drifted columns, the summary %d", folder,
                        _stats.drifted_count(snapshot), len(drifted_cols))
        # coverage grows with the number of lists, and a list shorter than K covers less: both sides' figures on
        # lists of K, at the smaller side's count of them
        n_ref = len(ref.rows)
        size = min(_features.full_lists(answers["items"], _reference.K).size,
                   _features.full_lists(ref.rows["items"], _reference.K).size)
        report = DriftReport(
            endpoint=endpoint, model=name, version=int(version), dataset=ref.dataset, window_start=start,
            window_end=end, n_current=len(answers), sampled_from=sampled_from, n_reference=n_ref,
            not_compared={str(k): int(v) for k, v in left_out.items()},
            drifted=bool(columns) and share >= drift_share, drifted_share=round(share, 6),
            drifted_columns=drifted_cols, drift_share=drift_share, columns=columns,
            current={**_features.window_figures(answers["items"], ref.catalogue, _reference.K, size),
                     "feedback": _window_feedback(s, endpoint, answers, len(frame), start, end)},
            reference={**_features.window_figures(ref.rows["items"], ref.catalogue, _reference.K, size),
                       "feedback": ref.feedback, "users": n_ref, "created_at": ref.created_at.isoformat()},
            html=str(folder / "report.html"), json_path=str(folder / "report.json"),
            summary=str(folder / "summary.json"), created_at=created, seconds=0.0,
            reference_seconds=ref.build_seconds)
        report.seconds = round(time.perf_counter() - t0, 3)
        (tmp / "summary.json").write_text(report.model_dump_json(indent=2))
        tmp.rename(folder)  # a report is listed whole or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _prune(folder.parent, s.monitor_keep_reports, folder)
    except OSError:  # the report is stored: a folder that could not be removed is retried at the next one
        log.warning("could not remove old drift reports under %s", folder.parent, exc_info=True)
    return report


def _compare(cur: pd.DataFrame, ref: pd.DataFrame) -> dict[str, ColumnDrift]:
    """The verdict per column that has values on both sides (no items table: no history_label)."""
    out = {}
    for col in _features.COLUMNS:
        a, b = cur[col].dropna(), ref[col].dropna()
        if not len(a) or not len(b):
            continue
        if col in _features.NUMERIC:
            score, p, drifted = _stats.numeric(b.to_numpy(), a.to_numpy())
            kind, test, thr = "numeric", _stats.NUM_TEST, _stats.NUM_THRESHOLD
            now, then = round(float(a.mean()), 6), round(float(b.mean()), 6)
        else:
            thr = _stats.THRESHOLDS.get(col, _stats.CAT_THRESHOLD)
            score, p, drifted = _stats.categorical(b.to_numpy(), a.to_numpy(), thr)
            kind, test = "categorical", _stats.CAT_TEST
            now, then = str(a.astype(str).mode().iloc[0]), str(b.astype(str).mode().iloc[0])
        out[col] = ColumnDrift(kind=kind, stattest=test, score=round(score, 6), threshold=thr, p_value=p,
                               alpha=_stats.ALPHA, drifted=drifted, current=now, reference=then,
                               n_current=len(a), n_reference=len(b))
    return out


def _window_feedback(s: Settings, endpoint: str, answers: pd.DataFrame, served: int, start: datetime,
                     end: datetime) -> dict:
    """The window's feedback: its events per answer of any route or version (`served`: the events are the
    endpoint's), their mix, and the click-through of the compared answers, counting the events that named them
    up to now (as online_metrics does: a click on the window's last answer may come after the window)."""
    from aimass.events import EventLog, Rules

    since = EventLog(s).frame(endpoint, start=start)
    polarity = Rules.of(s).polarities(since["type"], since["value"])
    joined = _online._by_request(answers, since.assign(polarity=polarity))
    click_through = _online.rate(joined.loc[joined["polarity"] > 0, "answer"].nunique(), len(answers))
    inside = (since["received_at"] < pd.Timestamp(end)).to_numpy(dtype=bool)
    ev, pol = since[inside], polarity[inside]
    if not len(ev):
        return {"events": 0, "events_per_answer": 0.0, "positive_share": None, "negative_share": None,
                "by_type": {}, "click_through": click_through}
    return {"events": len(ev), "events_per_answer": round(len(ev) / served, 6),
            "positive_share": round(float((pol > 0).mean()), 6), "negative_share": round(float((pol < 0).mean()), 6),
            "by_type": {str(k): round(float(v), 6) for k, v in ev["type"].value_counts(normalize=True).items()},
            "click_through": click_through}


def _root(s: Settings, endpoint: str) -> Path:
    return s.home / "monitoring" / endpoint


def _report_folder(s: Settings, endpoint: str, created: datetime) -> tuple[Path, Path]:
    """(the report's folder, the working folder it is written in, now created): two reports in one second, from
    two processes too, get STAMP and STAMP-2."""
    base = _root(s, endpoint) / created.strftime("%Y%m%dT%H%M%SZ")
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        tmp = folder.with_name(folder.name + ".tmp")
        if folder.exists():
            continue
        try:
            tmp.mkdir()  # exclusive: the reservation
        except FileExistsError:
            continue
        # another process may have renamed its STAMP.tmp into place between the check above and the mkdir (its
        # tmp gone, ours made): only a holder of FOLDER.tmp renames into FOLDER, so once we hold it this check is
        # final
        if folder.exists():
            tmp.rmdir()
            continue
        return folder, tmp
    raise ConflictError(f"cannot reserve a report folder under {base.parent}: 999 reports in one second")


_REPORT = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")  # a stored report's folder: STAMP or STAMP-N (not .tmp)


def _order(folder: Path) -> tuple[str, int]:
    """STAMP, STAMP-2, ..., STAMP-10 in the order they were made (see _report_folder)."""
    stamp, _, n = folder.name.partition("-")
    return stamp, int(n) if n.isdigit() else 1


def _prune(root: Path, keep: int, written: Path) -> list[Path]:
    """Remove the oldest report folders under `root` beyond the newest `keep`, never `written` (the one just
    stored, whatever its name's order: a clock set back); returns those removed. Each is first renamed out of
    the listing (reports() then never reads a half-removed one) and a folder another process removed or renamed
    meanwhile is skipped. Removals a killed process left are finished."""
    others = sorted((p for p in root.iterdir() if p != written and _REPORT.match(p.name) and p.is_dir()),
                    key=_order, reverse=True)
    removed = []
    for old in others[max(keep - 1, 0):]:
        aside = root / f".{old.name}.removing-{uuid.uuid4().hex[:8]}"
        try:
            old.rename(aside)
        except FileNotFoundError:  # another report's pruning got there first
            continue
        shutil.rmtree(aside, ignore_errors=True)
        removed.append(old)
    for stale in root.glob(".*.removing-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return removed


def reports(endpoint: str, *, limit: int | None = None, settings: Settings | None = None) -> list[ReportInfo]:
    """The endpoint's stored drift reports, newest first (empty when it has none); with `limit`, only the newest
    `limit` are read (a report's folder is named by its time, so the rest are not opened)."""
    s = settings or default_settings()
    root = _root(s, _check(endpoint))
    if limit is not None and limit < 1:
        raise InvalidInputError(f"limit must be at least 1, got {limit}")
    # report folders only: not one being written (.tmp) or removed (.STAMP.removing-...)
    found = sorted((f for f in root.glob("*/summary.json") if _REPORT.match(f.parent.name)),
                   key=lambda f: _order(f.parent), reverse=True) if root.is_dir() else []
    out = []
    for f in found[:limit]:
        try:
            r = DriftReport.model_validate_json(f.read_text())
        except Exception:  # a summary from a newer layout or a damaged disk: skip it, list the rest
            continue
        # its files where they are now: the paths it recorded are the home's when it was written (a moved home)
        where = {"html": str(f.with_name("report.html")), "json_path": str(f.with_name("report.json")),
                 "summary": str(f)}
        out.append(ReportInfo(**{**r.model_dump(include=set(ReportInfo.model_fields)),
                                 **{k: v for k, v in where.items() if k in ReportInfo.model_fields}}))
    return sorted(out, key=lambda r: r.created_at, reverse=True)


def golden_signals(endpoint: str, *, window_s: float = 3600, bucket_s: float = 60, end: datetime | None = None,
                   settings: Settings | None = None):
    """Traffic, errors and latency (p50/p99) of the endpoint in [end - window_s, end), in total and per bucket
    of `bucket_s`, over every replica (aimass.monitoring._signals.Signals); zeros when it served nothing."""
    from aimass.events import ServedLog
    from aimass.monitoring import _signals

    s = settings or default_settings()
    _check(endpoint)
    # a bucket is a timedelta, held to the microsecond: infinity overflows it and a tiny one rounds to nothing (a
    # zero step); 1 ms is the finest bucket served answers' timing means anything at
    if not (math.isfinite(bucket_s) and bucket_s >= 0.001):
        raise InvalidInputError(f"bucket must be positive, finite and at least 1 ms (0.001 s), got {bucket_s:g} s")
    if window_s is None:
        raise InvalidInputError("golden signals need a window: pass window_s (seconds; default 3600)")
    start, end = _window(window_s, end)
    if window_s / bucket_s > 10_000:
        raise InvalidInputError(f"{window_s:g} s in buckets of {bucket_s:g} s is more than 10,000 buckets")
    return _signals.signals(ServedLog(s).engine, endpoint, start, end, bucket_s)


def search_activity(endpoint: str, *, window_s: float = 7 * 86400, end: datetime | None = None,
                    settings: Settings | None = None):
    """A search endpoint's queries in [end - window_s, end): volume per hour, the most asked, those that found
    nothing, and click-through per mode and per index version (aimass.monitoring._signals.SearchActivity). A
    click is any positive feedback event (the endpoint's rules) naming the answer's request_id, received up to
    now."""
    from aimass.events import EventLog, Rules, ServedLog
    from aimass.monitoring import _signals

    s = settings or default_settings()
    _check(endpoint)
    start, end = _window(window_s, end)
    served = ServedLog(s)
    window = {"start": start, "end": end, "route": "search"}
    log = EventLog(s)
    answers = served.frame(endpoint, columns=["request_id", "served_at", "query", "strategy", "mode", "model",
                                              "version"], **window)
    clicked = log.named(endpoint, start=start, where=Rules.of(s).positive_clause(log.table.c.type, log.table.c.value))
    return _signals.search_activity(answers, clicked, endpoint, start, end)


def shadow_comparison(endpoint: str, *, window_s: float | None = None, end: datetime | None = None,
                      settings: Settings | None = None) -> pd.DataFrame:
    """What each shadow ref of the endpoint would have answered, against what consumers got, in
    [end - window_s, end) (all of the log without window_s): one row per shadow ref with the requests it saw a
    copy of, the mean overlap of its lists with the live ones and the share identical, and both sides' p50/p99
    latency on those requests (columns: aimass.monitoring._signals.SHADOW). Empty when no shadow ever ran."""
    from aimass.events import ServedLog
    from aimass.monitoring import _signals

    s = settings or default_settings()
    _check(endpoint)
    start, end = _window(window_s, end)
    return _signals.shadow_comparison(ServedLog(s).engine, endpoint, start, end)


def sample_note(rows: list[OnlineMetrics], window: str = "window") -> str:
    """The line that says a window's rows were measured on a sample ("" when they were not), as the CLI and
    the console show it under the table."""
    if not rows or not rows[0].sampled_from:
        return ""
    return (f"measured on a uniform sample of {sum(m.answers for m in rows):,} of the {window}'s "
            f"{rows[0].sampled_from:,} answers")


def online_metrics(endpoint: str, *, window_s: float | None = None, end: datetime | None = None,
                   max_answers: int = MAX_ANSWERS, settings: Settings | None = None) -> list[OnlineMetrics]:
    """Click-through, per-event-type and hit rates (95% Wilson intervals) of the lists the endpoint served in
    [end - window_s, end) (all of them without window_s), one row per model version (and arm). A window with
    more than `max_answers` answers is measured on a seeded uniform sample of that many: the rates and their
    intervals are the sample's, and each row's `sampled_from` says how many answers the window held."""
    from sqlalchemy import and_, or_

    from aimass.events import EventLog, Rules, ServedLog

    s = settings or default_settings()
    _check(endpoint)
    _check_cap(max_answers)
    start, end = _window(window_s, end)
    served = ServedLog(s)
    seqs = served.frame(endpoint, start=start, end=end, columns=["seq"])["seq"].to_numpy()
    if not len(seqs):
        total = _total_answers(served, endpoint)
        if not total:
            raise _nothing(endpoint, start, end, total)
        return []
    picked, sampled_from = _sample(seqs, max_answers)
    answers = served.frame(endpoint, start=start, end=end, seqs=None if sampled_from is None else picked)
    # feedback on a list arrives after it: events received up to now count, not only up to `end`. Only the
    # events that can count are read: those naming a request, and positive ones (a hit needs no request_id)
    log, rules = EventLog(s), Rules.of(s)
    t = log.table
    events = log.frame(endpoint, start=start, where=or_(and_(t.c.request_id.is_not(None), t.c.request_id != ""),
                                                        rules.positive_clause(t.c.type, t.c.value)))
    polarity = rules.polarities(events["type"], events["value"]) if len(events) else np.zeros(0, np.int8)
    rows = _online.metrics(answers, events, polarity, log.types(endpoint, start=start))
    return [OnlineMetrics(endpoint=endpoint, window_start=start, window_end=end, sampled_from=sampled_from, **r)
            for r in rows]
