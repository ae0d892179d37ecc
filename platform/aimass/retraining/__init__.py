"""Retraining: an endpoint's feedback events folded into a new dataset version, the champion's recipe trained
on it, the result registered as `challenger` and put through the promotion gate.

    >>> r = aimass.retraining.retrain("recs")              # `aimass retrain recs`
    >>> r.dataset, r.challenger, r.status, [c.detail for c in r.gate]
    >>> aimass.retraining.history("recs")                   # every attempt, newest first
    >>> aimass.retraining.due("recs", settings=s)           # 'drift' | 'volume' | 'schedule' | None

The new version is the champion's dataset version plus the endpoint's positive events after what that
version's lineage already folded in, up to the newest one (`aimass.datasets.lineage(ref)` says which). Each
folded event is marked exposed (the endpoint had shown that user the item) or organic, in the version's
exposure record (`exposure(ref)`). The gate compares champion and challenger on the new version's test split,
re-scoring the champion there, and decides on its unexposed part: a target the served model picked itself
would favour it. A promoted challenger becomes `champion`; the endpoint keeps serving what it served until it
is redeployed (`aimass deploy NAME@champion --endpoint E`). `start_in_cluster` runs the triggers inside the
serving cluster."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout
from pydantic import BaseModel, Field

from aimass.errors import ConflictError, InvalidInputError, NoGPUError
from aimass.registry import GateCheck
from aimass.settings import Settings, default_settings, error_line

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
__all__ = ["REASONS", "RetrainResult", "Scheduler", "due", "exposure", "history", "retrain", "start_in_cluster"]
REASONS = ("manual", "console", "schedule", "volume", "drift")


class RetrainResult(BaseModel):
    endpoint: str
    reason: str
    status: str = Field("running", description=(
        "canary (the gate passed and the challenger serves a share of users in an auto experiment, which "
        "promotes or rolls it back), promoted (the challenger is champion now), kept (the gate refused: the "
        "champion stays), challenger (not promoted on request; the gate's decision is recorded), nothing-new "
        "(no new positive events), failed (see error)"))
    started_at: datetime
    finished_at: datetime | None = None
    seconds: float = 0.0
    served: str | None = Field(None, description="The model version the endpoint served (NAME/V)")
    champion: str | None = Field(None, description="The version whose family and params were retrained")
    family: str | None = None
    params: dict = Field(default_factory=dict)
    parent_dataset: str | None = None
    dataset: str | None = Field(None, description="The new dataset version")
    events_after_seq: int | None = None
    events_through_seq: int | None = None
    events_through_time: datetime | None = None
    events: int = 0
    positive: int = 0
    negative: int = 0
    neutral: int = 0
    exposed: int = Field(0, description="Positive events on an item the endpoint had shown that user (by the "
                                        "event's request_id, or in an earlier answer to the user)")
    organic: int = Field(0, description="The other positive events")
    exposure_record: str | None = Field(None, description="Which folded interactions were exposed (a file)")
    run_id: str | None = None
    challenger: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="The challenger's own")
    gate: list[GateCheck] = Field(default_factory=list)
    gate_passed: bool | None = None
    promoted: bool = False
    canary: str | None = Field(None, description="The experiment id of the challenger's canary")
    next_step: str | None = None
    notes: list[str] = Field(default_factory=list, description=(
        "Where the attempt departed from the champion's recipe: a GPU job retrained on CPU where no GPU is"))
    error: str | None = None
    record: str | None = None


class _NothingNew(Exception):
    pass


def retrain(endpoint: str, *, reason: str = "manual", promote: bool = True, settings: Settings | None = None,
            progress: bool = False, time_budget_min: float | None = None) -> RetrainResult:
    """Retrain what `endpoint` serves on its new feedback; every attempt is recorded (`history`). The
    champion's training budget applies unless `time_budget_min` is given. Raises
    ConflictError when there are no new positive events (nothing is written but the record) or another
    retrain of the endpoint runs; a failure after the new dataset version was made keeps that version (it is
    complete, and a retry with the same events reuses it)."""
    from aimass import serving
    from aimass.retraining import _records

    s = settings or default_settings()
    if time_budget_min is not None and not (math.isfinite(time_budget_min) and time_budget_min > 0):
        raise InvalidInputError(f"time budget must be a positive number of minutes, got {time_budget_min}")
    if reason not in REASONS:
        raise InvalidInputError(f"unknown retrain reason {reason!r}; use one of {', '.join(REASONS)}")
    d = serving.show(endpoint, settings=s)
    canary = running_canary(endpoint, s)
    if canary:
        raise ConflictError(canary)
    if d.ranker:
        raise InvalidInputError(f"endpoint {endpoint!r} is multi-stage ({d.model}/{d.version} ranked by "
                                f"{d.ranker}): retraining serves single-model endpoints only")
    s.locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(s.locks / f"retrain-{endpoint}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConflictError(f"another retrain of endpoint {endpoint!r} is in progress") from None
    canary = running_canary(endpoint, s)  # again, holding the lock: one that just ended may have started one
    if canary:
        lock.release()
        raise ConflictError(canary)
    r = RetrainResult(endpoint=endpoint, reason=reason, started_at=datetime.now(UTC),
                      served=f"{d.model}/{d.version}")
    t0 = time.perf_counter()
    try:
        _run(r, d, promote, progress, s, time_budget_min)
    except _NothingNew as e:
        r.status, r.error = "nothing-new", str(e)
        raise ConflictError(str(e)) from None
    except BaseException as e:
        r.status, r.error = "failed", error_line(e)
        raise
    finally:
        r.finished_at, r.seconds = datetime.now(UTC), round(time.perf_counter() - t0, 1)
        _records.write(s, r)
        lock.release()
    return r


def retrain_in_process(endpoint: str, *, reason: str = "manual", settings: Settings | None = None) -> RetrainResult:
    """`retrain` in a process of its own (`aimass retrain E --json`, as the scheduler runs it), for a caller whose
    process is attached to the serving cluster for other work (the console): its result, or the error the
    process ended with, as the same AimassError type."""
    import subprocess
    import sys

    from aimass.errors import AimassError, BackendError, NotFoundError
    from aimass.retraining._scheduler import child_env

    s = settings or default_settings()
    if reason not in REASONS:
        raise InvalidInputError(f"unknown retrain reason {reason!r}; use one of {', '.join(REASONS)}")
    res = subprocess.run([sys.executable, "-c", "from aimass.cli import main; main()", "retrain", endpoint,
                          "--reason", reason, "--json"], env=child_env(s), capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if res.returncode == 0:
        return RetrainResult.model_validate_json(res.stdout)
    said = (res.stderr.strip().splitlines() or [f"the retrain process exited with code {res.returncode}"])[-1]
    kinds = {k.exit_code: k for k in (InvalidInputError, NotFoundError, ConflictError, BackendError)}
    raise kinds.get(res.returncode, AimassError)(said.removeprefix("error: "))


def _run(r: RetrainResult, d, promote: bool, progress: bool, s: Settings, budget_min: float | None) -> None:
    from aimass import datasets, registry
    from aimass.retraining._fold import save_exposure
    from aimass.training import train

    champion = _champion(d, s)
    job = _training_job(champion, s)
    r.champion, r.family, r.params = champion.ref, job["family"], job["params"]
    if not champion.dataset:
        raise InvalidInputError(f"{champion.ref} records no dataset version: it cannot be retrained")
    if "split" in datasets.get(champion.dataset, settings=s).columns["interactions"]:
        # checked before the events are read (an endpoint's whole log since the fold): derive would refuse
        raise InvalidInputError(f"{champion.ref} was trained on {champion.dataset}, which has its own evaluation "
                                "split (a split column): new interactions can only be added to datasets split by "
                                "time, so its endpoint cannot be retrained on feedback")
    fold = _new_events(r, d.endpoint, champion.dataset, s)
    new = datasets.derive(fold.parent, fold.rows, settings=s, lineage=datasets.FoldedEvents(
        endpoint=d.endpoint, after_seq=fold.after_seq, through_seq=fold.through_seq,
        through_time=fold.through_time, events=r.events))
    # Identical content is an existing version: the parent itself when every new row repeats one it holds, or
    # one an earlier attempt derived (its lineage ending earlier). Training on it would retrain on data the
    # champion had, and record a fold that the lineage does not, so the next one would fold events again.
    lin = datasets.lineage(new.ref, settings=s)
    if (lin is not None and (lin.endpoint, lin.parent, lin.after_seq) == (d.endpoint, fold.parent, fold.after_seq)
            and lin.through_seq < fold.through_seq and not fold.counts(lin.through_seq)["positive"]):
        # An earlier attempt derived this version from the same events and failed after it (training, the
        # registry, the gate); only events that fold to no row (impressions, skips) came since. A retry is that
        # attempt again: it trains on the version, its lineage and this attempt's record ending where it folded,
        # so the events after it are looked at again next time (they hold no interaction, so lose nothing).
        fold = dataclasses.replace(fold, through_seq=lin.through_seq, through_time=lin.through_time)
        r.events_through_seq, r.events_through_time = lin.through_seq, lin.through_time
    if lin is None or (lin.endpoint, lin.parent, lin.after_seq, lin.through_seq) != (
            d.endpoint, fold.parent, fold.after_seq, fold.through_seq):
        raise _NothingNew(f"the {r.positive} new positive events of endpoint {d.endpoint!r} (seq "
                          f"{fold.after_seq + 1}..{fold.through_seq}) add no interaction that {new.ref} does not "
                          "hold already (repeats of its rows): nothing to retrain on")
    r.dataset = new.ref
    record = save_exposure(fold, new, s)  # what the gate reads back to leave exposed targets out
    r.exposed, r.organic, r.exposure_record = record.exposed, record.organic, str(record.path)
    same = {k: job[k] for k in ("epochs", "time_budget_min", "max_val_users", "max_test_users", "item_text", "gpu")
            if k in job}
    if budget_min is not None:
        same["time_budget_min"] = budget_min
    # on as many workers as the champion's job had (0: in the process that retrains)
    workers = job.get("workers", 1)
    try:
        run = train(job["family"], new.ref, job["params"], workers=workers, progress=progress, settings=s, **same)
    except NoGPUError as e:
        # The champion was trained where GPUs were; this home (or its cluster) has none. An unattended loop that
        # failed here would fail at every trigger: the same recipe on CPU, bounded by the same epochs and budget
        # (a GPU and a CPU run of a family differ in speed, not in the model), and the attempt says so.
        r.notes.append(f"the champion's job asked for GPU workers; {e}: retrained on CPU")
        log.warning("retraining %s on CPU: %s", champion.ref, e)
        run = train(job["family"], new.ref, job["params"], workers=workers, progress=progress, settings=s,
                    **{**same, "gpu": False})
    r.run_id, r.metrics = run.run_id, run.metrics
    v = registry.register(run.run_id, champion.name, settings=s)
    r.challenger = v.ref
    registry.set_alias(v.name, v.version, "challenger", settings=s)
    arms = _served_arms(d.endpoint, s) if promote else []
    # a canary runs beside a one-model split, when canaries are on
    control = arms[0] if s.canary_percent and len(arms) == 1 else None
    if len(arms) > 1:  # a split (a manual experiment, a ramp) serves: no canary beside it, and no alias move unseen
        r.gate = registry.gate(v.name, v.version, tolerance=s.gate_tolerance, baseline=champion.version,
                               settings=s)
        r.error = (f"{d.endpoint} serves a split of {len(arms)} arms: no canary runs beside it, and {champion.name}@"
                   "champion does not move on the offline gate alone")
    elif control is not None:  # the online experiment decides: a share of users first, then all or none
        r.gate = registry.gate(v.name, v.version, tolerance=s.gate_tolerance, baseline=champion.version,
                               settings=s)
        if all(c.passed for c in r.gate):
            r.canary, why = _start_canary(d.endpoint, control, v.ref, s)
            if why:
                r.error = f"the gate passed but the canary did not start: {why}"
    elif promote:
        try:
            r.gate = registry.promote(v.name, v.version, tolerance=s.gate_tolerance, baseline=champion.version,
                                      wait_s=registry.UNATTENDED_WAIT_S, settings=s).checks
            r.promoted = True
        except registry.GateRefusedError as e:
            r.gate = e.checks
    else:
        r.gate = registry.gate(v.name, v.version, tolerance=s.gate_tolerance, baseline=champion.version,
                               settings=s)
    r.gate_passed = all(c.passed for c in r.gate)
    r.status = ("canary" if r.canary else "promoted" if r.promoted else "kept" if promote and not r.gate_passed
                else "challenger")
    r.next_step = _next_step(r, v, d.endpoint, promote)
    _tag_version(r, v, d.endpoint, s)


def _tag_version(r: RetrainResult, v, endpoint: str, s: Settings) -> None:
    """On the version too: `aimass models show NAME/V` tells why it exists and what the gate said. The alias
    or the canary already moved: a tag that cannot be written is logged, and the attempt keeps its status."""
    from aimass.tracking import TAG, client

    try:
        client(s).set_model_version_tag(v.name, str(v.version), f"{TAG}retrain", json.dumps(
            {"endpoint": endpoint, "reason": r.reason, "dataset": r.dataset, "parent_dataset": r.parent_dataset,
             "events_through_seq": r.events_through_seq, "exposed": r.exposed, "organic": r.organic,
             "gate_passed": r.gate_passed, "promoted": r.promoted,
             "checks": [c.model_dump() for c in r.gate]}))
    except Exception:
        log.warning("the retrain tag of %s was not written", v.ref, exc_info=True)


def running_canary(endpoint: str, s: Settings) -> str | None:
    """Why `endpoint` cannot be retrained now: a canary (an auto experiment) runs there, and its decision
    promotes or rolls back the challenger it serves; a retrain meanwhile would take that challenger's place
    only for the canary's end to promote the older one over it. None when no canary runs."""
    from aimass import experiments

    e = experiments.get(endpoint, running_only=True, settings=s)
    if e is None or not e.auto:
        return None
    return (f"a canary runs on endpoint {endpoint!r} (experiment {e.experiment_id}): a retrain waits for its "
            f"decision (aimass experiments show {endpoint})")


def _new_events(r: RetrainResult, endpoint: str, parent: str, s: Settings):
    """The events to fold into `parent`, counted into `r`; _NothingNew when no positive one is new."""
    from aimass.retraining._fold import collect

    fold = collect(endpoint, parent, s)
    r.parent_dataset, r.events_after_seq, r.events_through_seq = fold.parent, fold.after_seq, fold.through_seq
    r.events_through_time = fold.through_time
    for k, v in fold.counts().items():
        setattr(r, k, v)
    # A challenger already trained from this parent and gated used the events up to its through_seq: the same
    # events again would make the same dataset version and the same model. One whose gate never decided (it
    # failed first) did not: a retry trains and gates again.
    tried = [x for x in history(endpoint, settings=s)
             if x.parent_dataset == fold.parent and x.challenger and x.gate_passed is not None]
    seen = max(tried, key=lambda x: x.events_through_seq or 0, default=None)
    if seen is not None and (seen.events_through_seq or 0) > fold.after_seq:
        why = fold.nothing_new(seen.events_through_seq, f"the retrain of {seen.started_at:%Y-%m-%d %H:%M} UTC "
                               f"already trained {seen.challenger} on {seen.dataset} from them")
    else:
        why = fold.nothing_new(fold.after_seq, f"{fold.parent} holds the events up to it" if fold.after_seq
                               else f"{fold.parent} holds none of its events")
    if why:
        raise _NothingNew(why)
    return fold


def _served_arms(endpoint: str, s: Settings) -> list[str]:
    """The arms of the split the running endpoint serves ([]: not running, or no split recorded, no cluster)."""
    from aimass import serving

    try:
        if serving.show(endpoint, settings=s).status != "RUNNING":
            return []
        view = serving.traffic(endpoint, settings=s)
    except Exception:  # no split recorded, no cluster: the alias path
        return []
    return [a["ref"] for a in view.split.arms] if view.split is not None else []


def _start_canary(endpoint: str, control: str, challenger: str, s: Settings) -> tuple[str | None, str | None]:
    """(experiment id, None), or (None, why it did not start)."""
    from aimass import experiments

    try:
        e = experiments.start(endpoint, [f"{control}={100 - s.canary_percent}", f"{challenger}={s.canary_percent}"],
                              s.experiment_metric, alpha=s.experiment_alpha, mde=s.experiment_mde, auto=True,
                              guardrails={"max_p99_ratio": s.guardrail_max_p99_ratio,
                                          "max_error_rate": s.guardrail_max_error_rate},
                              actor="retrain", settings=s)
    except Exception as err:
        log.exception("the canary of %s on %s did not start", challenger, endpoint)
        return None, error_line(err)
    return e.experiment_id, None


def _next_step(r: RetrainResult, v, endpoint: str, promote: bool) -> str:
    if r.canary:
        return (f"{v.ref} serves a canary share of {endpoint}'s users (experiment {r.canary}): it is "
                f"promoted when it wins, rolled back when a guardrail breaks; aimass experiments show {endpoint}")
    deploy = f"aimass deploy {v.name}@champion --endpoint {endpoint}"
    if r.promoted:  # rollouts are the deployer's (issue 14): a new champion is never served by surprise
        return f"{endpoint} keeps serving {r.served} until it is redeployed: {deploy}"
    if not promote and r.gate_passed:
        return f"the gate passes {v.ref} (not promoted: asked not to); aimass models promote {v.name} {v.version}, " \
               f"then {deploy}"
    if r.gate_passed and r.error:
        return f"{r.error}; {v.ref} stays the challenger (aimass experiments start {endpoint} --arms ...)"
    return (f"the gate refuses {v.ref}: {v.name}@champion stays; the challenger is kept for inspection (aimass "
            f"models show {v.name}@challenger)")


def _champion(d, s: Settings):
    """The name's champion; the served version when the name has no champion (deployed by version)."""
    from aimass import registry
    from aimass.errors import NotFoundError

    try:
        return registry.get(f"{d.model}@champion", settings=s)
    except NotFoundError:
        return registry.get(f"{d.model}/{d.version}", settings=s)


def _training_job(info, s: Settings) -> dict:
    """The training job that made `info` (a compressed version's: its original ancestor's): family, params,
    epochs, validation cap, item text, exactly as the run recorded them."""
    from aimass import registry
    from aimass.tracking import TAG, client

    while info.method != "original" and info.parent_version is not None:
        info = registry.get(f"{info.name}/{info.parent_version}", settings=s)
    try:
        job = json.loads(client(s).get_run(info.run_id).data.tags.get(f"{TAG}job") or "null")
    except Exception:
        job = None
    if not job:
        raise InvalidInputError(f"{info.ref} has no recorded training job (run {info.run_id}): its family and "
                                "params are unknown, so it cannot be retrained")
    return job


def history(endpoint: str, *, limit: int | None = None, settings: Settings | None = None) -> list[RetrainResult]:
    """The endpoint's retrain attempts, newest first."""
    from aimass.retraining import _records

    return [RetrainResult.model_validate(x) for x in _records.read(settings or default_settings(), endpoint, limit)]


def exposure(ref: str, *, settings: Settings | None = None) -> pd.DataFrame | None:
    """Which interactions derived version `ref` folded in were exposed: user_id, item_id, timestamp (as the
    version holds them), seq, request_id, event_time, via ('request': in the answer the event's request_id
    names; 'earlier': in an answer to that user served before the event; '': organic) and exposed. None for a
    version without a record (registered, or derived by hand)."""
    from aimass import datasets

    record = datasets.exposure(ref, settings=settings or default_settings())
    return None if record is None else record.rows


def due(endpoint: str, *, settings: Settings | None = None, now: float | None = None) -> str | None:
    """Why `endpoint` should be retrained now: 'drift' (retrain_on_drift and the newest drift report flagged
    after the last attempt), 'volume' (retrain_min_events positive events arrived after what the served dataset and the
    last attempt hold), 'schedule' (retrain_interval_s passed since the deployment or the last attempt); None."""
    from aimass.retraining._triggers import due as _due

    return _due(endpoint, settings or default_settings(), now)


def __getattr__(name: str):
    if name in ("Scheduler", "start_in_cluster"):  # Ray only for who asks
        from aimass.retraining import _scheduler

        return getattr(_scheduler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
