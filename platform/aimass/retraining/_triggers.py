"""When an endpoint's model is due for retraining: a drift report about the served version that flagged,
enough new events, or the schedule. Each is measured from the later of the deployment and the last retrain
attempt that did not fail, so one cause starts one retrain, not one per scheduler tick. A failed attempt is
retried after `retrain_retry_s` (not before: its cause usually holds on the next tick), and a drift report
about a served version that an attempt already retrained (it trained a challenger) starts another only when it
was measured after that attempt and new positive events came since: the served model stays the same until it
is redeployed, and so would its drift."""
from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from sqlalchemy import func, select

from aimass.settings import Settings

log = logging.getLogger(__name__)


def due(endpoint: str, settings: Settings, now: float | None = None) -> str | None:
    """'drift', 'volume', 'schedule' (the first that holds, in that order) or None."""
    from aimass import datasets, serving
    from aimass.retraining import history, running_canary

    now = time.time() if now is None else now
    s = settings
    d = serving.show(endpoint, settings=s)
    if running_canary(endpoint, s):  # its decision comes first (retrain would refuse)
        return None
    attempts = history(endpoint, limit=50, settings=s)
    last = attempts[0] if attempts else None
    # the wait counts from the failure, not the start: a job that failed after hours is not started again at once
    if last is not None and last.status == "failed" and \
            now - (last.finished_at or last.started_at).timestamp() < s.retrain_retry_s:
        return None
    # a failed attempt only delays the next one: its cause (the drift, the events it read) still holds
    done = next((a for a in attempts if a.status != "failed"), None)
    since = max(d.created_at.timestamp(), done.started_at.timestamp() if done else 0.0)
    # drift about the served version is answered by an attempt that trained a challenger on its feedback (one
    # that found nothing new to fold did not answer it)
    answers = [a for a in attempts if a.status != "failed" and a.challenger is not None
               and a.served == f"{d.model}/{d.version}" and a.started_at >= d.created_at]
    answer = answers[0] if answers else None
    if s.retrain_on_drift:
        # A report about another version (the one a canary's control served, before the promotion that made this
        # one served) says nothing of this one; one whose window ended before `since` was answered already.
        report = newest_drift_report(s, endpoint, served=f"{d.model}/{d.version}", after=since)
        if report is not None and report["drifted"] and report["window_end"] > since and (
                answer is None or _unanswered(s, endpoint, report, answer, len(answers), now)):
            return "drift"
    if s.retrain_min_events:
        after = datasets.folded_through(d.dataset, endpoint, settings=s) if d.dataset else 0
        if done is not None and done.events_through_seq:  # what the last attempt already looked at
            after = max(after, done.events_through_seq)
        if positives_after(s, endpoint, after) >= s.retrain_min_events:
            return "volume"
    if s.retrain_interval_s and now - since >= s.retrain_interval_s:
        return "schedule"
    return None


def _unanswered(s: Settings, endpoint: str, report: dict, answer, tries: int, now: float) -> bool:
    """Drift about a version `tries` attempts already trained a challenger against (the last lost its canary
    and was rolled back, or waits to be promoted) starts another only when it was measured wholly on traffic
    after the last attempt, new positive events came since (the same model on the same data would drift the
    same), and `retrain_retry_s` doubled for each of those attempts has passed since it ended: a drift no
    challenger fixes retrains ever more rarely, not once per report."""
    after = (answer.finished_at or answer.started_at).timestamp()
    wait = s.retrain_retry_s * 2 ** min(tries - 1, 10)
    return (report["window_start"] is not None and report["window_start"] >= after and now - after >= wait
            and positives_after(s, endpoint, answer.events_through_seq or 0) > 0)


def positives_after(settings: Settings, endpoint: str, seq: int) -> int:
    """The endpoint's positive events after log position `seq`: only they fold into a new dataset version, so
    a flood of impressions is no reason to retrain."""
    from aimass.catalog import FeedbackEvent, engine_for
    from aimass.events import Rules

    t = FeedbackEvent.__table__
    positive = Rules.of(settings).positive_clause(t.c.type, t.c.value)
    with engine_for(settings.catalog).connect() as conn:
        return conn.execute(select(func.count()).select_from(t)
                            .where(t.c.endpoint == endpoint, t.c.seq > seq, positive)).scalar() or 0


def newest_drift_report(settings: Settings, endpoint: str, *, served: str | None = None,
                        after: float | None = None) -> dict | None:
    """The newest `home/monitoring/<endpoint>/<stamp>/summary.json` (aimass.monitoring writes them), about the
    model version `served` ("NAME/V") when given, as {"drifted": bool, "created_at": unix seconds, "window_start":
    unix seconds or None, "window_end": unix seconds, "served": "NAME/V", "path": ...}; None when there is none
    readable. Reports made at or before `after` (unix seconds) are not read, nor any older one: the search stops
    at the first of them."""
    root = settings.home / "monitoring" / endpoint
    files = sorted(root.glob("*/summary.json"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if root.is_dir() else []
    for p in files:
        try:
            doc = json.loads(p.read_text())
            report = {"drifted": bool(doc["drifted"]), "created_at": _unix(doc["created_at"]),
                      "window_start": _unix(doc["window_start"]) if doc.get("window_start") else None,
                      "window_end": _unix(doc["window_end"]), "served": f"{doc['model']}/{int(doc['version'])}",
                      "path": str(p)}
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("skipping unreadable drift report %s", p)
            continue
        if after is not None and report["created_at"] <= after:
            return None
        if served is None or report["served"] == served:
            return report
    return None


def _unix(stamp: object) -> float:
    """An ISO time as monitoring writes it (UTC, with or without its offset) in unix seconds."""
    t = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
