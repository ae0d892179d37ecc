"""Traffic splits: which registered versions answer an endpoint, in what shares, and who sees which.

A split lives in the catalog (table traffic_splits) and is applied in two phases, so that a change never
answers an error: the deployer writes it `pending`; every running replica of the endpoint loads the arms it
does not hold yet (the old split keeps answering meanwhile) and reports `prepared`, or `failed` with the
reason; once all have prepared, the deployer marks it `active` and the replicas switch on their next read
(`traffic_poll_s`). A failed or timed-out split is marked `failed` and the split in force stays. One change
per endpoint at a time: a unique index admits one pending split per endpoint.

Assignment is sticky: a user's bucket is a hash of (experiment id, user id) in [0, 10000), and the arms
own consecutive bucket ranges in split order. A split that only changes weights keeps its experiment id, so
a canary raised from 10 to 50 keeps every user it had (put the canary last); a split with other arms gets
a new experiment id, which reshuffles users once."""
from __future__ import annotations

import hashlib
import logging
import re
import time
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from aimass.catalog import ReplicaReport, TrafficSplit, TrafficSplitPublic, engine_for, session
from aimass.errors import BackendError, ConflictError, InvalidInputError, NotFoundError
from aimass.settings import Settings, error_line

log = logging.getLogger(__name__)
BUCKETS = 10_000
_ARM = re.compile(r"^(?P<ref>[^=\s]+)=(?P<weight>\d{1,3})$")


class Arm(BaseModel):
    ref: str = Field(description="A registered version, NAME/VERSION")
    weight: int = Field(ge=0, le=100, description="Percent of the users")


def bucket(experiment_id: str, user_id: int) -> int:
    """The user's sticky position in [0, BUCKETS) for this experiment."""
    h = hashlib.blake2b(f"{experiment_id}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % BUCKETS


def bounds(arms: list[Arm] | list[dict]) -> list[tuple[str, int]]:
    """(ref, upper bucket) per arm in split order: arm i owns [upper(i-1), upper(i))."""
    out, total = [], 0
    for a in arms:
        a = a if isinstance(a, Arm) else Arm(**a)
        total += a.weight * BUCKETS // 100
        out.append((a.ref, total))
    return out


def parse_arms(specs: list[str]) -> list[Arm]:
    """`["demo-sasrec/3=90", "demo-sasrec/4=10"]` -> arms (refs not yet resolved)."""
    arms = []
    for spec in specs:
        m = _ARM.match(spec.strip())
        if not m or int(m["weight"]) > 100:
            raise InvalidInputError(f"invalid arm {spec!r}: write REF=WEIGHT with a whole percent 0-100, e.g. "
                                    "demo-sasrec/3=90")
        arms.append(Arm(ref=m["ref"], weight=int(m["weight"])))
    return arms


def check_faults(s: Settings, faults: dict, arms: list[Arm]) -> dict:
    """Fault-injection drills keyed by resolved arm ref: {ref: {"delay_ms": 0-60000}}."""
    from aimass import registry

    out = {}
    for ref, f in (faults or {}).items():
        resolved = registry.get(ref, settings=s).ref
        if resolved not in {a.ref for a in arms}:
            raise InvalidInputError(f"a fault names {ref}, which is not an arm of the split")
        if not isinstance(f, dict) or set(f) - {"delay_ms"}:
            raise InvalidInputError(f"fault of {ref} must be {{'delay_ms': MS}}, got {f!r}")
        d = f.get("delay_ms", 0)
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d <= 60_000:
            raise InvalidInputError(f"delay_ms of {ref} must be a number of milliseconds in [0, 60000], got {d!r}")
        out[resolved] = {"delay_ms": float(d)}
    return out


def running_experiment(s: Settings, endpoint: str) -> str | None:
    """The id of the experiment running on the endpoint (aimass.experiments records it in the catalog)."""
    return (running_experiment_row(s, endpoint) or (None, None))[0]


def running_experiment_row(s: Settings, endpoint: str) -> tuple[str, str | None] | None:
    """(id, decision) of the experiment running on the endpoint; a running one's decision names a stop under way
    (aimass.experiments claims it so before it moves the traffic)."""
    from aimass.catalog import Experiment

    with session(s) as db:
        row = db.exec(select(Experiment.experiment_id, Experiment.decision).where(
            Experiment.endpoint == endpoint, Experiment.state == "running")).first()
    return (row[0], row[1]) if row is not None else None


def validate(s: Settings, endpoint: str, arms: list[Arm], shadow: str | None, family: str) -> tuple[list[Arm],
                                                                                                       str | None]:
    """Arms and shadow with every ref resolved to NAME/VERSION, or InvalidInputError/NotFoundError naming what
    is wrong. Nothing is stored here."""
    from aimass import registry
    from aimass.serving.services import servable

    if family == "pipeline" or family not in servable():
        raise InvalidInputError(f"endpoint {endpoint!r} serves a {family!r} application: traffic splits apply to "
                                "single-model endpoints")
    if not arms:
        raise InvalidInputError("a split needs at least one arm (REF=WEIGHT)")
    total = sum(a.weight for a in arms)
    if total != 100:
        raise InvalidInputError(f"arm weights must sum to 100, got {total} "
                                f"({' + '.join(str(a.weight) for a in arms)})")
    def answers_here(info, what: str) -> None:
        """An arm answers the endpoint's routes: search indexes beside search indexes, recommenders beside
        recommenders (the other kind would answer every request of its users with a 400)."""
        if info.family not in servable() or info.family == "pipeline":
            raise InvalidInputError(f"{what}{info.ref} has family {info.family!r}, which no service serves")
        if (info.family == "search") != (family == "search"):
            raise InvalidInputError(f"{what}{info.ref} is a {info.family!r} model and endpoint {endpoint!r} serves "
                                    f"{family!r}: every arm must answer its routes (a search index beside search "
                                    "indexes, a recommender beside recommenders)")

    resolved = []
    for a in arms:
        info = registry.get(a.ref, settings=s)  # NotFoundError names the unknown model or version
        answers_here(info, "")
        resolved.append(Arm(ref=info.ref, weight=a.weight))
    refs = [a.ref for a in resolved]
    if len(set(refs)) != len(refs):
        raise InvalidInputError(f"an arm is named twice: {', '.join(refs)}")
    if shadow is not None:
        info = registry.get(shadow, settings=s)
        answers_here(info, "shadow ")
        shadow = info.ref
        if shadow in refs:
            raise InvalidInputError(f"shadow {shadow} is also a live arm: a shadow's answers are never returned")
    return resolved, shadow


# --- reading ------------------------------------------------------------------------------------------------
def _public(row: TrafficSplit | None) -> TrafficSplitPublic | None:
    return TrafficSplitPublic.model_validate(row, from_attributes=True) if row is not None else None


def current(s: Settings, endpoint: str) -> TrafficSplitPublic | None:
    """The split in force: the newest active one."""
    with session(s) as db:
        row = db.exec(select(TrafficSplit).where(TrafficSplit.endpoint == endpoint, TrafficSplit.state == "active")
                      .order_by(TrafficSplit.id.desc()).limit(1)).scalars().first()
        return _public(row)


def newest(s: Settings, endpoint: str) -> tuple[TrafficSplitPublic | None, TrafficSplitPublic | None]:
    """(active, pending) splits of the endpoint: what a replica polls."""
    with session(s) as db:
        rows = db.exec(select(TrafficSplit).where(TrafficSplit.endpoint == endpoint,
                                                  TrafficSplit.state.in_(("active", "pending")))
                       .order_by(TrafficSplit.id.desc()).limit(4)).scalars().all()
    active = next((r for r in rows if r.state == "active"), None)
    pending = next((r for r in rows if r.state == "pending" and (active is None or r.id > active.id)), None)
    return _public(active), _public(pending)


def history(s: Settings, endpoint: str, limit: int = 20) -> list[TrafficSplitPublic]:
    with session(s) as db:
        rows = db.exec(select(TrafficSplit).where(TrafficSplit.endpoint == endpoint)
                       .order_by(TrafficSplit.id.desc()).limit(limit)).scalars().all()
        return [_public(r) for r in rows]


def reports(s: Settings, split_id: int) -> list[ReplicaReport]:
    with session(s) as db:
        return list(db.exec(select(ReplicaReport).where(ReplicaReport.split_id == split_id)).scalars().all())


def report(s: Settings, endpoint: str, split_id: int, replica: str, state: str, error: str | None = None) -> None:
    """A replica's answer to a split (idempotent per replica)."""
    with session(s) as db:
        have = db.exec(select(ReplicaReport).where(ReplicaReport.split_id == split_id,
                                                   ReplicaReport.replica == replica)).scalars().first()
        if have is None:
            db.add(ReplicaReport(split_id=split_id, endpoint=endpoint, replica=replica, state=state,
                                 error=error and error[-2000:]))
        else:
            have.state, have.error, have.at = state, error and error[-2000:], datetime.now(UTC)
            db.add(have)
        db.commit()


# --- writing ------------------------------------------------------------------------------------------------
def activate_initial(s: Settings, endpoint: str, ref: str, reason: str = "deploy", actor: str = "cli") -> int:
    """The first split of a new deployment (no replica runs yet, so nothing to wait for): `ref` takes all."""
    engine = engine_for(s.catalog)
    with engine.begin() as conn:
        conn.execute(update(TrafficSplit.__table__).where(TrafficSplit.endpoint == endpoint,
                                                          TrafficSplit.state == "active")
                     .values(state="superseded", decided_at=datetime.now(UTC)))
        conn.execute(update(TrafficSplit.__table__).where(TrafficSplit.endpoint == endpoint,
                                                          TrafficSplit.state == "pending")
                     .values(state="failed", error="replaced by a new deployment", decided_at=datetime.now(UTC)))
    with session(s) as db:
        row = TrafficSplit(endpoint=endpoint, arms=[{"ref": ref, "weight": 100}], shadow=None,
                           experiment_id=f"{endpoint}-{int(time.time() * 1000):x}", state="active", reason=reason,
                           actor=actor, decided_at=datetime.now(UTC))
        db.add(row)
        db.commit()
        return row.id


def undo_initial(s: Settings, endpoint: str, split_id: int, prior_id: int | None) -> None:
    """A deployment whose replicas did not start: its split is marked failed, and the one it superseded (if
    any) is in force again, as the deployment record (unchanged) says."""
    now = datetime.now(UTC)
    with engine_for(s.catalog).begin() as conn:
        t = TrafficSplit.__table__
        conn.execute(update(t).where(t.c.id == split_id).values(state="failed", error="the deployment did not start",
                                                                decided_at=now))
        if prior_id is not None:
            conn.execute(update(t).where(t.c.id == prior_id, t.c.state == "superseded").values(state="active"))


def propose(s: Settings, endpoint: str, arms: list[Arm], shadow: str | None, *, faults: dict | None = None,
            experiment_id: str | None = None, reason: str = "set", actor: str = "cli") -> TrafficSplitPublic:
    """Store a pending split; ConflictError while another change to the endpoint is pending."""
    _expire_stale(s, endpoint)
    now = current(s, endpoint)
    if experiment_id is None:  # weights only: keep the assignment (a ramp keeps its users); else reshuffle
        same = now is not None and [a["ref"] for a in now.arms] == [a.ref for a in arms]
        experiment_id = now.experiment_id if same else f"{endpoint}-{int(time.time() * 1000):x}"
    row = TrafficSplit(endpoint=endpoint, arms=[a.model_dump() for a in arms], shadow=shadow,
                       experiment_id=experiment_id, faults=faults or {}, state="pending", reason=reason, actor=actor)
    try:
        with session(s) as db:
            db.add(row)
            db.commit()
            return _public(row)
    except IntegrityError:
        _, pending = newest(s, endpoint)
        since = f" (split #{pending.id}, {pending.reason}, since {pending.created_at:%H:%M:%S})" if pending else ""
        raise ConflictError(f"another change to {endpoint!r} is in progress{since}: wait for it, then retry; "
                            "the split in force is unchanged") from None


def _expire_stale(s: Settings, endpoint: str) -> None:
    """A pending split whose deployer died holds the endpoint's lock: fail it after twice the apply timeout."""
    cutoff = datetime.now(UTC) - timedelta(seconds=2 * s.traffic_apply_timeout_s)
    with engine_for(s.catalog).begin() as conn:
        conn.execute(update(TrafficSplit.__table__)
                     .where(TrafficSplit.endpoint == endpoint, TrafficSplit.state == "pending",
                            TrafficSplit.created_at < cutoff)
                     .values(state="failed", error="abandoned: its deployer stopped waiting",
                             decided_at=datetime.now(UTC)))


def decide(s: Settings, split_id: int, state: str, error: str | None = None) -> None:
    """Mark a pending split active (superseding the one in force) or failed; ConflictError when it is no longer
    pending (failed meanwhile: abandoned, interrupted)."""
    engine = engine_for(s.catalog)
    t = TrafficSplit.__table__
    with engine.begin() as conn:
        row = conn.execute(select(t.c.endpoint, t.c.state).where(t.c.id == split_id)).first()
        if row is None or row.state != "pending":
            raise ConflictError(f"split #{split_id} is {row.state if row else 'missing'}, not pending")
        done = conn.execute(update(t).where(t.c.id == split_id, t.c.state == "pending")
                            .values(state=state, error=error, decided_at=datetime.now(UTC)))
        if done.rowcount != 1:
            raise ConflictError(f"split #{split_id} stopped being pending while it was decided")
        if state == "active":
            conn.execute(update(t).where(t.c.endpoint == row.endpoint, t.c.state == "active", t.c.id != split_id)
                         .values(state="superseded"))


def _ready(got: list[ReplicaReport], running: set[str] | int, states: tuple[str, ...]) -> bool:
    """Whether every running replica has a report in `states`: by replica id when Serve names them (a report
    of a replica that stopped does not count), else by count."""
    if isinstance(running, set):
        have = {r.replica for r in got if r.state in states}
        return running <= have
    return sum(r.state in states for r in got) >= running


def wait(s: Settings, split: TrafficSplitPublic, running: callable, timeout: float | None = None) -> None:
    """Until every running replica has prepared `split` (then it is activated), one has failed, or the timeout
    passes (then it is failed): BackendError names the replica's reason. `running()` -> the ids of the replicas
    serving now (or their number). With no replica running (scaled to zero) no replica can try the split: its
    versions are loaded here, as a replica loads them, and it is activated when they load (a replica that starts
    loads the split in force: one that could not would fail every start, the endpoint down)."""
    timeout = timeout or s.traffic_apply_timeout_s
    deadline = time.monotonic() + timeout
    while True:
        got = reports(s, split.id)
        failed = [r for r in got if r.state == "failed"]
        if failed:
            why = failed[0].error or "unknown"
            decide(s, split.id, "failed", why)
            raise BackendError(f"the split was not applied: a replica of {split.endpoint!r} could not load it "
                               f"({why.strip().splitlines()[-1][:500] if why.strip() else why}); the split in "
                               "force is unchanged and keeps serving")
        now = running()
        if not now:
            _load_here(s, split)
        if not now or _ready(got, now, ("prepared", "active")):
            decide(s, split.id, "active")
            if now:
                _switched(s, split, running)
            return
        if time.monotonic() > deadline:
            decide(s, split.id, "failed", "timed out waiting for replicas")
            n = len(now) if isinstance(now, set) else now
            raise BackendError(f"the split was not applied: {sum(r.state == 'prepared' for r in got)} of {n} "
                               f"replicas of {split.endpoint!r} loaded it within {timeout:g} s; "
                               "the split in force is unchanged")
        time.sleep(0.2)


def _load_here(s: Settings, split: TrafficSplitPublic) -> None:
    """Each version of `split` loaded in this process as a replica's engine loads it; the split failed (and
    BackendError) when one cannot be."""
    from aimass.serving._engine import Engine

    for ref in dict.fromkeys([*(a["ref"] for a in split.arms), *([split.shadow] if split.shadow else [])]):
        try:
            Engine(ref, s).close()
        except Exception as e:
            why = f"{ref} could not be loaded: {error_line(e)}"
            decide(s, split.id, "failed", why)
            raise BackendError(f"the split was not applied: no replica of {split.endpoint!r} runs (scaled to "
                               f"zero), and loaded here {why}; the split in force is unchanged") from None


def _switched(s: Settings, split: TrafficSplitPublic, running: callable, timeout: float = 10.0) -> None:
    """Until every replica answers with the new split (they switch on their next read), so that a caller's
    next request sees it; a replica that is slow to notice only delays this, it cannot fail the change."""
    deadline = time.monotonic() + max(timeout, 10 * s.traffic_poll_s)
    while time.monotonic() < deadline:
        if _ready(reports(s, split.id), running(), ("active",)):
            return
        time.sleep(min(0.05, s.traffic_poll_s))
    log.warning("not every replica of %s reported split #%s within %g s", split.endpoint, split.id, timeout)


def retire(s: Settings, endpoint: str, why: str) -> None:
    """The endpoint's splits in force and before (active, superseded) leave its history of splits to roll back
    to: after a delete, or once a multi-stage application (which no split routes) serves the endpoint, the
    split in force names versions that no longer serve, and a rollback would bring back one of them."""
    with engine_for(s.catalog).begin() as conn:
        t = TrafficSplit.__table__
        conn.execute(update(t).where(t.c.endpoint == endpoint, t.c.state.in_(("active", "superseded")))
                     .values(state="retired", error=why, decided_at=datetime.now(UTC)))


def previous(s: Settings, endpoint: str) -> TrafficSplitPublic:
    """The split that was in force before the current one (what a rollback restores)."""
    with session(s) as db:
        rows = db.exec(select(TrafficSplit).where(TrafficSplit.endpoint == endpoint,
                                                  TrafficSplit.state.in_(("active", "superseded")))
                       .order_by(TrafficSplit.id.desc()).limit(2)).scalars().all()
    if len(rows) < 2 or rows[0].state != "active":
        raise NotFoundError(f"{endpoint!r} has no earlier split to roll back to")
    return _public(rows[1])
