"""A/B experiments on served endpoints: a traffic split whose arms are compared on an online metric.

    >>> aimass.experiments.start("recs", ["recs/3=50", "recs/4=50"], metric="play_rate")
    >>> aimass.experiments.show("recs")          # per-arm rates with intervals, the always-valid p, sample size
    >>> aimass.experiments.stop("recs", promote="recs/4")

The metric is a rate over the answers an arm served: `<type>_rate` (the share of answers followed by at least
one event of that type naming the answer's request_id, e.g. play_rate, click_rate) or `positive_rate` (any
positive event under the feedback rules); on a type only negative rules name (skip_rate) the lower rate wins.
Each treatment arm is compared with the first arm (the control) by an mSPRT whose p-value stays valid however
often it is looked at (`_stats`); its running minimum is stored at every look. Guardrails compare each treatment
with the control on p99 latency and error rate.

An `auto` experiment (a canary: what a retrain starts) decides itself when `check` runs (the scheduler in the
serving cluster calls it every tick): a treatment that wins with its guardrails held is promoted (it gets all
the traffic and becomes `champion`), a broken guardrail or a winning control rolls it back.

Ending an experiment (`stop`, or `check`'s decision) first claims it: one conditional UPDATE names the stop under
way in the still-running row's `decision` (its time in `stopped_at`), and a second stop or decision meanwhile is
refused before it moves any traffic. The row stays `running` while claimed, so the database's one-running index
and set_traffic's guard keep holding the endpoint until the stop has finished."""
from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from aimass.catalog import Experiment, ExperimentPublic, engine_for, session
from aimass.errors import ConflictError, InvalidInputError, NotFoundError
from aimass.experiments import _stats
from aimass.settings import Settings, default_settings, error_line

__all__ = ["ArmView", "ExperimentView", "auto_endpoints", "check", "check_all", "get", "show", "start", "stop"]
log = logging.getLogger(__name__)
_METRIC = re.compile(r"^(?P<type>[a-z][a-z0-9_]*)_rate$")
SCHEDULER_PROMOTE_WAIT_S = 10.0
# p99 must also exceed the control's by min_p99_excess_ms: on a millisecond path a ratio alone is noise
GUARDRAILS = {"max_p99_ratio": 1.5, "min_p99_excess_ms": 10.0, "max_error_rate": 0.01, "min_answers": 50}
# What a claimed row's decision starts with while its stop runs (the CLI and the console show it as is)
STOPPING = "stopping: "
# The routes whose answers an experiment counts: those that answer a user with the user's arm (/similar has no
# user, so it is answered by the first arm whatever the split; /suggest is not logged)
ROUTES = ["recommend", "rank", "search"]


class ArmView(BaseModel):
    arm: str
    weight: int = Field(description="Percent of the users: in the split in force while it is the experiment's (a "
                        "ramp's weights), else as started")
    users: int = Field(description="Users whose first answer in the experiment the arm gave (the unit of "
                       "analysis: assignment is per user; a user a ramp moved on counts in the first arm only)")
    answers: int = Field(description="Answers the arm served")
    successes: int = Field(description="Those users with an answer of the arm followed by the metric's event")
    rate: float
    interval: tuple[float, float] = Field(description="Wilson interval of the rate at the comparison's level")
    errors: int = Field(description="Requests the arm failed (5xx)")
    error_rate: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    computed: int = Field(0, description="Answers the arm computed (not from its answer cache): what its latency "
                                         "percentiles are of")


class ExperimentView(BaseModel):
    experiment: ExperimentPublic
    arms: list[ArmView]
    comparisons: list[_stats.Comparison] = Field(description="Each treatment against the control (first arm)")
    higher_is_better: bool = Field(True, description="Whether the higher rate wins (False on a negative event "
                                   "type's rate, e.g. skip_rate)")
    guardrails_broken: list[str] = Field(default_factory=list, description="Which treatment broke which guardrail")


def _metric_type(metric: str, s: Settings) -> str | None:
    """The event type a metric counts (None: any positive event); InvalidInputError for an unknown one."""
    from aimass.events import Rules

    if metric == "positive_rate":
        return None
    m = _METRIC.fullmatch(metric)
    types = Rules.of(s).types
    if not m or m["type"] not in types:
        raise InvalidInputError(f"unknown metric {metric!r}: use positive_rate or <type>_rate with a known event "
                                f"type ({', '.join(t + '_rate' for t in types)})")
    return m["type"]


def _higher_is_better(kind: str | None, s: Settings) -> bool:
    """Whether the higher rate wins: not on a type only negative rules name (skip_rate: fewer skips win); a type
    a positive rule names too (rating) is positive, as positive rules win over negative ones."""
    from aimass.events import Rules

    rules = Rules.of(s)
    return kind is None or kind not in rules.negative_types - rules.positive_types


def start(endpoint: str, arms: list[str] | dict[str, int], metric: str = "positive_rate", *, alpha: float = 0.05,
          mde: float = 0.02, min_samples: int = 100, guardrails: dict | None = None, auto: bool = False,
          shadow: str | None = None, faults: dict | None = None, actor: str = "sdk",
          settings: Settings | None = None) -> ExperimentPublic:
    """Split ENDPOINT across `arms` (the first is the control) under a new experiment id (users are
    reassigned once, then stick) and record the experiment. `mde`: the smallest difference of the rate worth
    detecting, absolute (0.02 = two points); it also sets the sequential test's mixing spread."""
    from aimass import serving

    s = settings or default_settings()
    serving.check_deployed(endpoint, settings=s)
    _metric_type(metric, s)
    if not 0 < alpha < 1:
        raise InvalidInputError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < mde < 1:
        raise InvalidInputError(f"mde must be an absolute rate difference in (0, 1), got {mde}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or not 1 <= min_samples <= 1e9:
        raise InvalidInputError(f"min_samples must be a whole number of users from 1 to 1e9, got {min_samples!r}")
    rails = {**GUARDRAILS, **(guardrails or {})}
    unknown = set(rails) - set(GUARDRAILS)
    if unknown:
        raise InvalidInputError(f"unknown guardrail {sorted(unknown)[0]!r}; known: {', '.join(GUARDRAILS)}")
    for name, v in rails.items():
        low, high = {"max_p99_ratio": (1.0, 1e6), "min_p99_excess_ms": (0.0, 1e6), "max_error_rate": (0.0, 1.0),
                     "min_answers": (1, 1e9)}[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
            raise InvalidInputError(f"guardrail {name} must be a number in [{low:g}, {high:g}], got {v!r}")
    specs = [f"{r}={w}" for r, w in arms.items()] if isinstance(arms, dict) else list(arms)
    if len(specs) < 2:
        raise InvalidInputError(f"an experiment compares at least two arms, got {len(specs)}")
    from aimass.serving import parse_arms

    if parse_arms(specs)[0].weight == 0:
        raise InvalidInputError("the control (the first arm) must get some traffic: its weight is 0")
    eid = f"{endpoint}-x{int(datetime.now(UTC).timestamp() * 1000):x}"
    row = Experiment(endpoint=endpoint, experiment_id=eid, arms=[], metric=metric, alpha=alpha, mde=mde,
                     min_samples=min_samples, guardrails=rails, auto=auto)
    try:  # claimed first: the database admits one running experiment per endpoint
        with session(s) as db:
            db.add(row)
            db.commit()
            rid = row.id
    except IntegrityError:
        running = get(endpoint, settings=s, running_only=True)
        raise ConflictError(f"experiment {running.experiment_id if running else '?'} is running on {endpoint!r}: "
                            f"stop it first (aimass experiments stop {endpoint})") from None
    try:
        split = serving.set_traffic(endpoint, specs, shadow, faults=faults, experiment_id=eid,
                                    reason=f"experiment {eid}" + (" (canary)" if auto else ""), actor=actor,
                                    settings=s)
    except BaseException:
        from aimass.serving import _traffic

        try:
            now = _traffic.current(s, endpoint)
        except Exception:  # the catalog is away: not known to be in force, and a row without arms would hold
            now = None  # the endpoint (set_traffic and stop refuse while it runs)
        try:
            with session(s) as db:
                row = db.get(Experiment, rid)
                if now is not None and now.experiment_id == eid:
                    # The split went active before the failure (a Ctrl-C or an error in set_traffic's last
                    # steps): its users are assigned under this id, so the experiment runs, and deleting it
                    # would leave a split that nothing judges or stops.
                    row.arms, row.started_at = now.arms, now.decided_at or datetime.now(UTC)
                    db.add(row)
                else:  # the split in force stayed: so does the absence of an experiment
                    db.delete(row)
                db.commit()
        except Exception:  # the first failure is the one to report
            log.exception("cleaning up the experiment %s that did not start failed", eid)
        raise
    # Only onto a row still running and unclaimed: a stop that took it meanwhile ended it, and the split just
    # applied would otherwise run with nothing judging it.
    t = Experiment.__table__
    with engine_for(s.catalog).begin() as conn:
        done = conn.execute(update(t).where(t.c.id == rid, t.c.state == "running", t.c.decision.is_(None))
                            .values(arms=split.arms, started_at=datetime.now(UTC))).rowcount
    if done != 1:
        _undo_start(s, endpoint, eid, split, actor)
    return get(endpoint, experiment_id=eid, settings=s)


def _undo_start(s: Settings, endpoint: str, eid: str, split, actor: str) -> None:
    """A stop ended experiment `eid` while its split was applied: the split before it goes back in force (a
    rollback: its arms, shadow and user assignment), and ConflictError says so."""
    from aimass import serving

    have = get(endpoint, experiment_id=eid, settings=s)
    why = f"experiment {eid} on {endpoint!r} was ended while it started ({have.decision if have else 'deleted'})"
    try:
        back = serving.rollback(endpoint, expect=split.id, ending=eid, actor=actor, settings=s)
    except Exception as err:
        raise ConflictError(f"{why}; its split #{split.id} was not rolled back: {error_line(err)} (aimass traffic "
                            f"show {endpoint}; aimass rollback {endpoint})") from err
    raise ConflictError(f"{why}: its split #{split.id} is {back.reason.replace('rollback', 'rolled back')}; start "
                        "it again if wanted")


def get(endpoint: str, *, experiment_id: str | None = None, running_only: bool = False,
        settings: Settings | None = None) -> ExperimentPublic | None:
    """The endpoint's running experiment, else its latest (or the one named)."""
    s = settings or default_settings()
    q = select(Experiment).where(Experiment.endpoint == endpoint)
    if experiment_id is not None:
        q = q.where(Experiment.experiment_id == experiment_id)
    if running_only:
        q = q.where(Experiment.state == "running")
    with session(s) as db:
        rows = db.exec(q.order_by(Experiment.id.desc())).scalars().all()
    row = next((r for r in rows if r.state == "running"), rows[0] if rows else None)
    return ExperimentPublic.model_validate(row, from_attributes=True) if row is not None else None


def _must(endpoint: str, s: Settings, experiment_id: str | None = None) -> ExperimentPublic:
    from aimass import serving

    serving.check_deployed(endpoint, settings=s)
    e = get(endpoint, experiment_id=experiment_id, settings=s)
    if e is None:
        raise NotFoundError(f"no experiment on {endpoint!r}" + (f" named {experiment_id!r}" if experiment_id else "")
                            + f": start one with aimass experiments start {endpoint} --arms ...")
    return e


def show(endpoint: str, *, experiment_id: str | None = None, settings: Settings | None = None) -> ExperimentView:
    """Per-arm weights, rates, latency and errors, and each treatment against the control, now. A look at a
    running experiment stores the running minimum of its always-valid p-values."""
    s = settings or default_settings()
    e = _must(endpoint, s, experiment_id)
    higher = _higher_is_better(_metric_type(e.metric, s), s)
    if not e.arms:  # started a moment ago: its split is being applied, and no arm has answered yet
        return ExperimentView(experiment=e, arms=[], comparisons=[], guardrails_broken=[], higher_is_better=higher)
    arms = _arms(e, s)
    counts = [_stats.ArmCounts(name=a.arm, n=a.users, successes=a.successes) for a in arms]
    comparisons = _stats.decide(counts, control=arms[0].arm, alpha=e.alpha, mde=e.mde, min_p=e.min_p or 1.0,
                                min_samples=e.min_samples, winners=e.winners,
                                higher_is_better=higher) if len(arms) > 1 else []
    for a, c in zip(arms[1:], comparisons, strict=True):  # the interval at the comparison's (corrected) level
        a.interval = c.treatment.interval
    if comparisons:  # the control's too: every arm's interval at one level
        arms[0].interval = comparisons[0].control.interval
    if e.state == "running" and comparisons:
        _store_look(s, e, comparisons)
        e = get(endpoint, experiment_id=e.experiment_id, settings=s)
        for c in comparisons:  # a look that ran beside this one may have made the call first: it stands
            if c.significant and (e.winners or {}).get(c.treatment.name):
                c.winner = e.winners[c.treatment.name]
    return ExperimentView(experiment=e, arms=arms, comparisons=comparisons, guardrails_broken=_broken(e, arms),
                          higher_is_better=higher)


def _store_look(s: Settings, e: ExperimentPublic, comparisons: list[_stats.Comparison]) -> None:
    """Keep each comparison's running minimum p and, the first time it is significant, its winner."""
    with session(s) as db:
        # Two looks at once: neither may undo the other. A no-op UPDATE first takes the row's lock on Postgres
        # and the database's write lock on SQLite (which ignores FOR UPDATE) before the row is read.
        t = Experiment.__table__
        db.connection().execute(update(t).where(t.c.id == e.id).values(min_p=t.c.min_p))
        row = db.get(Experiment, e.id, populate_existing=True)
        have, called = row.min_p or {}, row.winners or {}
        row.min_p = {**have, **{c.treatment.name: min(c.min_p, have.get(c.treatment.name, 1.0))
                                for c in comparisons}}
        row.winners = {**{c.treatment.name: c.winner for c in comparisons if c.winner}, **called}
        db.add(row)
        db.commit()


def _arms(e: ExperimentPublic, s: Settings) -> list[ArmView]:
    """Each arm's users in the experiment and whether they converted: assignment is per user (sticky), so the
    user is the unit of analysis, not the answer (a user's repeated answers are not independent trials). A user
    converted when an answer they got from the arm was followed by the metric's event of theirs naming its
    request_id.
    Requests without a user_id are left out (they are not assigned: they go to the first arm)."""
    from aimass.events import EventLog, Rules, ServedLog

    log = EventLog(s)
    kind = _metric_type(e.metric, s)
    col = log.table.c
    rules = Rules.of(s)
    # play_rate under "play>=30" counts the plays the rule counts: a 2-second play is no conversion, and a
    # 1-star rating is none under rating_rate with "rating>=4"
    hit = rules.positive_clause(col.type, col.value) if kind is None else rules.type_clause(kind, col.type, col.value)
    converted = log.named(e.endpoint, where=hit, start=e.started_at, by_user=True)
    answers = ServedLog(s).frame(e.endpoint, columns=["request_id", "arm", "user_id", "strategy", "latency_ms",
                                                      "cached"],
                                 start=e.started_at, end=e.stopped_at, experiment_id=e.experiment_id, errors=True,
                                 route=ROUTES)
    answers = answers[answers["user_id"].notna()]
    # a set lookup per answer: pandas' isin() turned the set into an array first, which cost more than this
    pairs = zip(answers["request_id"], answers["user_id"], strict=True)
    answers["converted"] = np.fromiter((p in converted for p in pairs), bool, len(answers))
    # A user counts in the arm of their first answer (the log is in serving order), with what that arm's answers
    # did: a ramp (weights changed while it runs) moves users to another arm, and counting them in both would
    # make the arms' samples overlap, which the test's independence forbids.
    answers["assigned"] = answers["arm"] == answers.groupby("user_id", sort=False)["arm"].transform("first")
    weights = _weights(e, s)
    out = []
    for a in e.arms:
        mine = answers[answers["arm"] == a["ref"]]
        failed = mine["strategy"] == "error"
        ok = mine[~failed]
        # computed answers only: a cache hit's latency is a lookup's, and the control's cache is warm when a
        # canary's starts cold (the control's p50 read 0.0 ms beside the canary's 7.6)
        lat = ok.loc[~ok["cached"].fillna(False).astype(bool), "latency_ms"].dropna().to_numpy(dtype=float)
        kept = ok[ok["assigned"]]
        users = kept["user_id"].nunique()
        k = int(kept.loc[kept["converted"], "user_id"].nunique())
        out.append(ArmView(arm=a["ref"], weight=weights.get(a["ref"], a["weight"]), users=users, answers=len(ok),
                           successes=k, rate=k / users if users else 0.0,
                           interval=_stats.wilson(k, users, 1 - e.alpha),
                           errors=int(failed.sum()), error_rate=float(failed.mean()) if len(mine) else 0.0,
                           latency_p50_ms=float(np.percentile(lat, 50)) if len(lat) else None,
                           latency_p99_ms=float(np.percentile(lat, 99)) if len(lat) else None, computed=len(lat)))
    return out


def _weights(e: ExperimentPublic, s: Settings) -> dict[str, int]:
    """Each arm's weight in the split in force while that split is the experiment's: a ramp (set_traffic under
    its id) changes the weights after the start, and the record keeps the starting ones."""
    from aimass.serving import _traffic

    now = _traffic.current(s, e.endpoint)
    arms = now.arms if now is not None and now.experiment_id == e.experiment_id else e.arms
    return {a["ref"]: a["weight"] for a in arms}


def _broken(e: ExperimentPublic, arms: list[ArmView]) -> list[str]:
    """The guardrails a treatment breaks, compared with the control once both have `min_answers` requests
    (answers and failures, as `_judged` counts): p99 latency over `max_p99_ratio` x the control's and more than
    `min_p99_excess_ms` above it (once both have `min_answers` computed answers: cache hits are not timed), or an
    error rate more than `max_error_rate` above the control's (and at least 3
    errors: one failure in 50 answers is not a rate)."""
    g = {**GUARDRAILS, **(e.guardrails or {})}
    control, out = arms[0], []
    for a in arms[1:]:
        if not _judged(a, control, g):
            continue
        if a.error_rate - control.error_rate > g["max_error_rate"] and a.errors >= 3:
            out.append(f"{a.arm}: error rate {a.error_rate:.1%} > the control's {control.error_rate:.1%} + "
                       f"{g['max_error_rate']:.1%}")
        # p99s of at least min_answers computed answers each: a warm cache leaves few, and two are no p99
        if (min(a.computed, control.computed) >= g["min_answers"]
                and a.latency_p99_ms is not None and control.latency_p99_ms is not None
                and a.latency_p99_ms > g["max_p99_ratio"] * control.latency_p99_ms
                and a.latency_p99_ms - control.latency_p99_ms > g["min_p99_excess_ms"]):
            out.append(f"{a.arm}: p99 latency {a.latency_p99_ms:.1f} ms > {g['max_p99_ratio']:g} x the control's "
                       f"{control.latency_p99_ms:.1f} ms")
    return out


def _judged(a: ArmView, control: ArmView, g: dict) -> bool:
    """Whether the guardrails can be evaluated for `a` yet: enough requests (answers and failures) on both sides."""
    return min(a.answers + a.errors, control.answers + control.errors) >= g["min_answers"]


def stop(endpoint: str, *, promote: str | None = None, decision: str | None = None, actor: str = "sdk",
         wait_s: float | None = None, settings: Settings | None = None) -> ExperimentPublic:
    """End the running experiment; with `promote`, that arm gets all the traffic (a split of other arms than the
    experiment's, so it gets a new experiment id: the experiment's own answers end there) and, if it is a
    version of the control's model, becomes its `champion` (waiting up to `wait_s`, by default and at most
    registry.UNATTENDED_WAIT_S, for another promotion of that model to end). Without `promote` it only ends the
    record, which an endpoint deleted meanwhile does not prevent. ConflictError, with nothing changed, when it
    is stopped already, still starting (its split being applied), or another stop (a person's, the scheduler's
    decision) is ending it now."""
    from aimass import registry

    s = settings or default_settings()
    e = _must(endpoint, s) if promote is not None else get(endpoint, settings=s)
    if e is None:
        raise NotFoundError(f"no experiment on {endpoint!r}")
    if e.state != "running":
        raise ConflictError(f"experiment {e.experiment_id} on {endpoint!r} already stopped ({e.decision})")
    if _starting(s, e):  # ended now, its split would go in force after the stop with nothing judging it
        raise ConflictError(f"experiment {e.experiment_id} on {endpoint!r} is starting (its split is being "
                            f"applied): try again in a moment (a start whose process died can be stopped "
                            f"{_start_lifetime_s(s):g} s after it began)")
    if wait_s is not None and (isinstance(wait_s, bool) or not isinstance(wait_s, int | float)
                               or not 0 <= wait_s <= registry.UNATTENDED_WAIT_S):
        # a longer wait would outlive the stop's claim (_claim_lifetime_s), which another stop may then take over
        raise InvalidInputError(f"wait_s must be a number of seconds in [0, {registry.UNATTENDED_WAIT_S:g}], got "
                                f"{wait_s!r}")
    if promote is None:
        return _end(s, e, to=None, what="stop", reason="", decision=decision or "stopped", actor=actor)
    refs = [a["ref"] for a in e.arms]
    ref = registry.get(promote, settings=s).ref if promote not in refs else promote
    if ref not in refs:
        raise InvalidInputError(f"{promote} is not an arm of {e.experiment_id} ({', '.join(refs)})")
    return _end(s, e, to=ref, what=f"promote {ref}", reason=f"promote {ref} ({e.experiment_id})",
                decision=decision or f"promoted {ref}", actor=actor, champion=True,
                wait_s=registry.UNATTENDED_WAIT_S if wait_s is None else wait_s)


def _end(s: Settings, e: ExperimentPublic, *, to: str | None, what: str, reason: str, decision: str, actor: str,
         champion: bool = False, wait_s: float = 0.0) -> ExperimentPublic:
    """Claim `e`, then give all of its endpoint's traffic to `to` (None: the split stays), make `to` the champion
    when `champion` and it is a version of the control's model, and record `decision`. A failure before the
    traffic moved leaves the experiment running and unclaimed; one after it records the experiment stopped,
    saying what did not happen."""
    from aimass import registry, serving
    from aimass.serving import _traffic

    name = to.split("/")[0] if to is not None else None
    champion = champion and bool(e.arms) and name == e.arms[0]["ref"].split("/")[0]
    token = _claim(s, e, what, actor)
    if to is not None:
        before: int | None = -1  # not read yet
        try:
            before = getattr(_traffic.current(s, e.endpoint), "id", None)
            serving.set_traffic(e.endpoint, [f"{to}=100"], reason=reason, actor=actor, ending=e.experiment_id,
                                settings=s)
        except BaseException as err:  # Ctrl-C included: the claim must not outlive this process
            try:
                after = _traffic.current(s, e.endpoint)
            except Exception:  # the catalog is away (often why the change failed): the move is not known
                after = None
            # Moved: a split other than the experiment's went active after the claim (ours, before a failure in
            # set_traffic's last steps). A ramp of the experiment's own landing meanwhile is not a move.
            if before != -1 and after is not None and after.id != before and after.experiment_id != e.experiment_id:
                _stopped(s, e, token, f"{decision} (the traffic moved, then: {error_line(err)}"
                         + ("; champion alias not moved" if champion else "") + ")")
            else:
                _release(s, e, token)
            raise
    if champion:  # won online: the champion even if an offline check disagrees (recorded)
        try:
            made = registry.promote(name, int(to.split("/")[1]), force=True, settings=s, wait_s=wait_s)
            if made.forced:  # said where the person reads the outcome, not only in the version's tags
                decision += (" (champion past the offline gate, which refused it: "
                             + "; ".join(f"{c.check}: {c.detail}" for c in made.checks if not c.passed) + ")")
        except Exception as err:  # the traffic moved: the experiment is over either way
            log.exception("making %s the champion failed", to)
            decision += f" (champion alias not moved: {error_line(err)})"
        except BaseException as err:  # a Ctrl-C while it waits for the model's lock: the traffic moved all the same
            _stopped(s, e, token, f"{decision} (interrupted while making it the champion, which may not have "
                                  f"moved: {error_line(err)})")
            raise
    return _stopped(s, e, token, decision)


def _claim_lifetime_s(s: Settings) -> float:
    """How long a claim holds against another stop: longer than any stop lasts (its split applied, then the
    model's lock waited for), so that only a claim whose process died (a kill, a crash of the machine) is ever
    taken over, and the endpoint is not held by it forever. The split may first wait for another change of
    the endpoint (serving.ENDPOINT_WAIT_S)."""
    from aimass import registry, serving

    return serving.ENDPOINT_WAIT_S + 2 * s.traffic_apply_timeout_s + registry.UNATTENDED_WAIT_S + 600


def _stale(s: Settings, e: ExperimentPublic) -> bool:
    """Whether `e`'s claim is older than any stop lasts: its process died, and another may take it over."""
    from aimass.events import as_utc

    return e.stopped_at is not None and datetime.now(UTC) - as_utc(e.stopped_at) > timedelta(
        seconds=_claim_lifetime_s(s))


def _start_lifetime_s(s: Settings) -> float:
    """Longer than any start lasts: its split waits for another change of the endpoint, then is applied."""
    from aimass import serving

    return serving.ENDPOINT_WAIT_S + 2 * s.traffic_apply_timeout_s + 600


def _starting(s: Settings, e: ExperimentPublic) -> bool:
    """Whether `e` is still being started: no arms yet (start writes them once its split is in force), and
    younger than any start lasts. An older one's start died: a stop may end it, or it would hold the endpoint
    (a start still alive then finds its row ended and rolls its split back)."""
    from aimass.events import as_utc

    return not e.arms and datetime.now(UTC) - as_utc(e.started_at) <= timedelta(seconds=_start_lifetime_s(s))


def _claim(s: Settings, e: ExperimentPublic, what: str, actor: str) -> str:
    """Make this caller the one that ends `e`, before it moves any traffic: one conditional UPDATE of the running
    row, so that of two stops (a person's `stop --promote`, the scheduler's decision) exactly one goes on. The
    claim (the row's decision while it runs) is returned as the token that releases or ends it."""
    now = datetime.now(UTC)
    token = f"{STOPPING}{what} (by {actor}, since {now:%Y-%m-%d %H:%M:%S} UTC)"
    stale = now - timedelta(seconds=_claim_lifetime_s(s))
    t = Experiment.__table__
    with engine_for(s.catalog).begin() as conn:
        done = conn.execute(update(t).where(t.c.id == e.id, t.c.state == "running",
                                            or_(t.c.decision.is_(None), t.c.stopped_at < stale))
                            .values(decision=token, stopped_at=now)).rowcount
    if done == 1:
        return token
    have = get(e.endpoint, experiment_id=e.experiment_id, settings=s)
    if have is None or have.state != "running":
        raise ConflictError(f"experiment {e.experiment_id} on {e.endpoint!r} already stopped "
                            f"({have.decision if have else 'deleted'})")
    raise ConflictError(f"experiment {e.experiment_id} on {e.endpoint!r} is being stopped or decided elsewhere "
                        f"({(have.decision or '').removeprefix(STOPPING)}): nothing was changed; see how it ended "
                        f"with aimass experiments show {e.endpoint} (a claim whose process died can be taken over "
                        f"{_claim_lifetime_s(s):g} s after it began)")


def _release(s: Settings, e: ExperimentPublic, token: str) -> None:
    """Give a claim back: the experiment runs on as it was, for the next stop or look."""
    t = Experiment.__table__
    with engine_for(s.catalog).begin() as conn:
        conn.execute(update(t).where(t.c.id == e.id, t.c.state == "running", t.c.decision == token)
                     .values(decision=None, stopped_at=None))


def _stopped(s: Settings, e: ExperimentPublic, token: str, decision: str) -> ExperimentPublic:
    t = Experiment.__table__
    with engine_for(s.catalog).begin() as conn:
        done = conn.execute(update(t).where(t.c.id == e.id, t.c.state == "running", t.c.decision == token)
                            .values(state="stopped", decision=decision, stopped_at=datetime.now(UTC))).rowcount
    if done != 1:  # this stop outlived its claim and another took the experiment over: its record stands
        raise ConflictError(f"experiment {e.experiment_id} on {e.endpoint!r}: this stop ran past its claim "
                            f"({_claim_lifetime_s(s):g} s) and another stop ended it; not recorded: {decision}")
    return get(e.endpoint, experiment_id=e.experiment_id, settings=s)


def check(endpoint: str, *, settings: Settings | None = None) -> str | None:
    """One look at an auto (canary) experiment: promote a treatment that wins with its guardrails held, roll
    back on a broken guardrail or a winning control; the decision made, or None (keep collecting, or another
    look or a person is deciding, or decided)."""
    s = settings or default_settings()
    e = get(endpoint, running_only=True, settings=s)
    if e is None or not e.auto or (e.decision is not None and not _stale(s, e)):  # a stop under way claims it
        return None
    view = show(endpoint, experiment_id=e.experiment_id, settings=s)
    still = get(endpoint, running_only=True, settings=s)
    if still is None or still.id != e.id or (still.decision is not None and still.decision != e.decision):
        return None  # claimed or decided meanwhile
    if not view.arms:  # still starting: its split is being applied
        return None
    try:
        return _decide(endpoint, e, view, s)
    except ConflictError:  # another stop claimed it first, or another change to the split is pending
        log.info("experiment %s on %s: decided elsewhere", e.experiment_id, endpoint)
        return None


def _decide(endpoint: str, e: ExperimentPublic, view: ExperimentView, s: Settings) -> str | None:
    control = view.arms[0].arm
    if view.guardrails_broken:
        why = "; ".join(view.guardrails_broken)
        _end(s, e, to=control, what=f"roll back to {control}", reason=f"rollback: {why}"[:200],
             decision=f"rolled back: {why}", actor="scheduler")
        return f"rolled back: {why}"
    g = {**GUARDRAILS, **(e.guardrails or {})}
    by_arm = {a.arm: a for a in view.arms}
    # a win counts once its guardrails could be judged: an unguarded challenger is never promoted
    wins = [c for c in view.comparisons if c.significant and c.winner == c.treatment.name
            and _judged(by_arm[c.treatment.name], view.arms[0], g)]
    if wins:
        best = max(wins, key=lambda c: c.treatment.value if view.higher_is_better else -c.treatment.value)
        ref = best.treatment.name
        # the scheduler's tick decides for every endpoint: it waits a moment for the model's lock, not a gate
        _end(s, e, to=ref, what=f"promote {ref}", reason=f"promote {ref} ({e.experiment_id})",
             decision=f"promoted {ref}: {e.metric} {best.treatment.value:.3f} vs {best.control.value:.3f}, "
                      f"p={best.min_p:.2g}", actor="scheduler", champion=True, wait_s=SCHEDULER_PROMOTE_WAIT_S)
        return f"promoted {ref}"
    if view.comparisons and all(c.significant and c.winner == control for c in view.comparisons):
        _end(s, e, to=control, what=f"roll back to {control}", reason="rollback: the control won",
             decision=f"rolled back: the control {control} won", actor="scheduler")
        return "rolled back: the control won"
    return None


def auto_endpoints(*, settings: Settings | None = None) -> list[str]:
    """The endpoints with a running auto (canary) experiment, which `check` decides."""
    with session(settings or default_settings()) as db:
        return sorted(set(db.exec(select(Experiment.endpoint).where(Experiment.state == "running",
                                                                   Experiment.auto.is_(True))).scalars()))


def check_all(*, settings: Settings | None = None) -> dict[str, str]:
    """`check` for every endpoint with a running auto experiment: the decisions made."""
    s = settings or default_settings()
    out = {}
    for endpoint in auto_endpoints(settings=s):
        try:
            d = check(endpoint, settings=s)
        except Exception:
            log.exception("checking the experiment on %s failed", endpoint)
            continue
        if d:
            out[endpoint] = d
    return out
