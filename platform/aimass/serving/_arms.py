"""A replica's side of traffic splits (_traffic): the engines of the arms in force, the sticky choice of an
arm per request, and the shadow.

A background thread reads the endpoint's split every `traffic_poll_s`. A pending split's missing engines are
loaded in that thread while the split in force keeps answering, then the replica reports `prepared` (or
`failed` with the traceback); the switch happens when the deployer marks the split active. Routing reads one
immutable `Table`, replaced whole, so a request never sees half a split.

The shadow gets a copy of /recommend requests through a bounded queue, whose thread hands each to the shadow
model in a process of its own (`Shadow`: a Ray actor), so its scoring never holds the live replica's GIL: its
answers are logged (overlap with the live answer, latency) and never returned; when the queue is full, copies
are dropped (counted)."""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

from aimass.errors import BackendError, InvalidInputError
from aimass.serving import _traffic
from aimass.serving._engine import Engine
from aimass.settings import Settings

log = logging.getLogger(__name__)
_SHADOW_QUEUE = 256
_SHADOW_BATCH, _SHADOW_BATCH_S = 64, 0.05  # copies per call to the shadow's process, and how long to gather them


@dataclass(frozen=True)
class Table:
    split_id: int | None
    experiment_id: str | None
    bounds: tuple[tuple[str, int], ...]  # (ref, upper bucket) in split order
    shadow: str | None = None
    delays: dict = field(default_factory=dict)  # ref -> seconds (fault injection drills)
    engines: dict = field(default_factory=dict)  # ref -> Engine: one read of the table gives both
    shadow_engine: object = None  # an Engine in a process of its own (a Ray actor) when Ray runs

    def pick(self, user_id: int | None) -> str:
        if len(self.bounds) == 1 or user_id is None:  # no user to stick to: the first arm (the control)
            return self.bounds[0][0]
        b = _traffic.bucket(self.experiment_id or "", int(user_id))
        for ref, upper in self.bounds:
            if b < upper:
                return ref
        return self.bounds[-1][0]


def _table(split) -> Table:
    # an arm at weight 0 owns no bucket: it is neither loaded nor picked
    live = tuple((ref, upper) for (ref, upper), a in zip(_traffic.bounds(split.arms), split.arms, strict=True)
                 if a["weight"] > 0)
    delays = {ref: float(f.get("delay_ms", 0)) / 1000 for ref, f in (split.faults or {}).items()}
    return Table(split.id, split.experiment_id, live, split.shadow, delays)


def _with(t: Table, engines: dict, shadows: dict) -> Table:
    return Table(t.split_id, t.experiment_id, t.bounds, t.shadow, t.delays, {r: engines[r] for r, _ in t.bounds},
                 shadows[t.shadow] if t.shadow else None)


def replica_name() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # a bare `bentoml serve`: one process
        return f"pid-{os.getpid()}"


class Arms:
    def __init__(self, settings: Settings, endpoint: str, fallback_ref: str, record_shadow, follow: bool = True):
        self.settings, self.endpoint = settings, endpoint
        self.replica = replica_name()
        self.engines: dict[str, Engine] = {}
        self.shadows: dict[str, object] = {}  # ref -> its shadow worker (see Shadow)
        self.record_shadow = record_shadow
        self.shadow_queue: queue.Queue = queue.Queue(_SHADOW_QUEUE)
        self.shadow_dropped = 0
        # counts of the engines released since start: the /metrics counters are sums over engines, and must not
        # fall when a split change drops one (Prometheus reads a fall as a reset)
        self.released = {"hits": 0, "misses": 0, "batches": 0, "rows": 0}
        self.prepared: set[int] = set()
        self.search = _family(settings, fallback_ref) == "search"  # the kind of service this replica is
        active, pending = _traffic.newest(settings, endpoint) if follow else (None, None)
        if active is None:  # a bare `bentoml serve`, or a deployment made before splits existed
            table = Table(None, None, ((fallback_ref, _traffic.BUCKETS),))
        else:
            table = _table(active)
        self._load(table)
        self.table = _with(table, self.engines, self.shadows)
        self.failed_active: set[int] = set()
        if active is not None:
            _traffic.report(settings, endpoint, active.id, self.replica, "active")
        if pending is not None:
            try:
                self._prepare(pending)
            except Exception:  # the catalog is away for a moment: the poll prepares it
                log.exception("preparing split #%s of %s failed", pending.id, endpoint)
        if follow:
            threading.Thread(target=self._poll, name="aimass-traffic", daemon=True).start()
        threading.Thread(target=self._shadow, name="aimass-shadow", daemon=True).start()

    # --- the request path -----------------------------------------------------------------------------------
    def pick(self, user_id: int | None) -> tuple[Table, str, Engine]:
        t = self.table  # one read: a switch replaces the table whole, engines included
        ref = t.pick(user_id)
        return t, ref, t.engines[ref]

    def primary(self) -> Engine:
        t = self.table
        return t.engines[t.bounds[0][0]]

    def delay(self, t: Table, ref: str) -> None:
        d = t.delays.get(ref)
        if d:
            time.sleep(d)

    def copy_to_shadow(self, t: Table, request: dict, live: dict, request_id: str) -> None:
        if t.shadow is None:
            return
        try:
            self.shadow_queue.put_nowait((t, request, live, request_id))
        except queue.Full:
            self.shadow_dropped += 1

    # --- keeping up with the catalog ------------------------------------------------------------------------
    def _load(self, t: Table) -> None:
        for ref, _ in t.bounds:
            if ref not in self.engines:
                if (_family(self.settings, ref) == "search") != self.search:
                    # a redeploy as the other kind activates its split before the old replicas are replaced:
                    # they keep answering with what they serve until then, never with a model of the other kind
                    raise InvalidInputError(f"{ref} is not a model this {'search' if self.search else 'recommender'} "
                                            "replica can serve")
                log.info("loading %s for %s", ref, self.endpoint)
                engine = Engine(ref, self.settings)
                _warm(engine)
                engine.warm(self.settings.serve_cache_warm_users)  # its hot users' answers, in the background
                self.engines[ref] = engine
        if t.shadow and t.shadow not in self.shadows:
            log.info("starting the shadow %s for %s", t.shadow, self.endpoint)
            self.shadows[t.shadow] = Shadow(t.shadow, self.settings)

    def _prepare(self, split) -> None:
        if split.id in self.prepared:
            return
        try:
            self._load(_table(split))
        except Exception:
            log.exception("split #%s of %s failed to load", split.id, self.endpoint)
            _traffic.report(self.settings, self.endpoint, split.id, self.replica, "failed", traceback.format_exc())
        else:
            _traffic.report(self.settings, self.endpoint, split.id, self.replica, "prepared")
        # only once reported: a report the catalog refused is made again at the next poll
        self.prepared.add(split.id)

    def _poll(self) -> None:
        while True:
            time.sleep(self.settings.traffic_poll_s)
            try:
                active, pending = _traffic.newest(self.settings, self.endpoint)
                if pending is not None:
                    self._prepare(pending)
                if active is not None and active.id != self.table.split_id and active.id not in self.failed_active:
                    t = _table(active)
                    try:
                        self._load(t)  # prepared already, unless this replica started after the vote
                    except Exception:  # keep answering with the split it has; say so once
                        log.exception("split #%s of %s is active but does not load here", active.id, self.endpoint)
                        self.failed_active.add(active.id)
                        _traffic.report(self.settings, self.endpoint, active.id, self.replica, "failed",
                                        traceback.format_exc())
                        continue
                    t = _with(t, self.engines, self.shadows)
                    self.table = t
                    _traffic.report(self.settings, self.endpoint, active.id, self.replica, "active")
                self._release(pending)
            except Exception:  # the catalog is away for a moment: keep serving the split in force
                log.exception("reading the split of %s failed", self.endpoint)

    def _release(self, pending) -> None:
        """Close what neither the split in force nor the pending one needs: the old arms after a switch, and
        what a pending split that failed, timed out or was replaced had loaded."""
        t, nxt = self.table, _table(pending) if pending else None
        keep = {r for r, _ in t.bounds} | ({r for r, _ in nxt.bounds} if nxt else set())
        for ref in [r for r in self.engines if r not in keep]:
            engine = self.engines.pop(ref)
            for owner, names in ((getattr(engine, "cache", None), ("hits", "misses")),
                                 (getattr(engine, "batcher", None), ("batches", "rows"))):
                for name in names if owner is not None else ():
                    self.released[name] += getattr(owner, name, 0)
            engine.close()  # requests that picked it hold their own reference
        for ref in [r for r in self.shadows if r not in {t.shadow, nxt.shadow if nxt else None}]:
            self.shadows.pop(ref).close()

    def _shadow(self) -> None:
        while True:
            batch = [self.shadow_queue.get()]
            deadline = time.monotonic() + _SHADOW_BATCH_S
            while len(batch) < _SHADOW_BATCH and (left := deadline - time.monotonic()) > 0:
                try:  # one call to the shadow's process per batch: each call costs the live replica CPU
                    batch.append(self.shadow_queue.get(timeout=left))
                except queue.Empty:
                    break
            by_shadow: dict[int, list] = {}
            for item in batch:
                by_shadow.setdefault(id(item[0].shadow_engine), []).append(item)
            for items in by_shadow.values():
                t = items[0][0]
                try:
                    answers = t.shadow_engine.recommend_many([req for _, req, _, _ in items])
                    for (_, req, live, rid), (out, ms) in zip(items, answers, strict=True):
                        if out is None:  # this request failed in the shadow: logged there, not recorded
                            continue
                        overlap = len(set(out["items"]) & set(live["items"])) / max(len(live["items"]), 1)
                        self.record_shadow(t.shadow_engine, t, rid, req.get("user_id"), out, overlap, ms)
                except Exception as e:  # the shadow's failure is logged, never the live answer's; the thread goes on
                    log.info("shadow %s failed on %d requests: %s", t.shadow, len(items), e)


class _Worker:
    """A shadow model and its scoring, in whatever process holds it."""

    def __init__(self, ref: str, settings: Settings | dict):
        # a dict from Settings.dump: a Ray actor's arguments never carry a credential (they go by the secrets file)
        self.engine = Engine(ref, settings if isinstance(settings, Settings) else Settings(**settings))
        _warm(self.engine)

    def info(self):
        return self.engine.info

    def recommend_many(self, reqs: list[dict]) -> list[tuple[dict | None, float]]:
        out = []
        for req in reqs:
            t0 = time.perf_counter()
            try:
                answer = self.engine.recommend(**req, mark_hit=True)
            except Exception as e:  # one bad request must not lose the batch's other answers
                log.info("shadow %s failed: %s", self.engine.info.ref, e)
                answer = None
            out.append((answer, (time.perf_counter() - t0) * 1000))
        return out


class Shadow:
    """The shadow model in a process of its own when Ray runs (a Ray actor the replica owns: it stops with the
    replica), so that its scoring never holds the live replica's GIL; in-process under a bare `bentoml serve`. A
    model that does not load fails here, so a split naming it fails to apply."""

    def __init__(self, ref: str, settings: Settings):
        import sys

        self.actor = None
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            dumped = settings.dump(secrets_to=settings.secrets_dir)
            self.actor = ray.remote(num_cpus=0.25)(_Worker).remote(ref, dumped)
            wait = settings.traffic_apply_timeout_s
            try:  # raises what the model's loading raised
                self.info = ray.get(self.actor.info.remote(), timeout=wait)
            except ray.exceptions.GetTimeoutError:
                # never scheduled (no free CPU in the cluster) or stuck loading: the split fails, the replica's
                # traffic thread goes on (a wait without end would stop it applying any later split)
                ray.kill(self.actor)
                raise BackendError(f"the shadow {ref} did not start within {wait:g} s (AIMASS_TRAFFIC_APPLY_TIMEOUT_S):"
                                   " the cluster may have no free CPU for its worker") from None
        else:
            self.local = _Worker(ref, settings)
            self.info = self.local.info()

    def recommend_many(self, reqs: list[dict]) -> list[tuple[dict | None, float]]:
        if self.actor is None:
            return self.local.recommend_many(reqs)
        import ray

        return ray.get(self.actor.recommend_many.remote(reqs), timeout=120)

    def close(self) -> None:
        if self.actor is not None:
            import ray

            ray.kill(self.actor)
        else:
            self.local.engine.close()


def _warm(engine: Engine) -> None:
    """One answer before the first request: a fresh model's first call is slow (lazy imports, allocation), and a
    canary's latency guardrail must not judge that."""
    try:
        user = next(iter(engine.histories), None)
        engine.recommend(user, None if user is not None else [], 1)
    except Exception:
        log.debug("warming %s failed", engine.info.ref, exc_info=True)


def _family(settings: Settings, ref: str) -> str | None:
    from aimass import registry

    return registry.get(ref, settings=settings).family
