"""A replica's side of traffic splits (_traffic): the engines of the arms in force, the sticky choice of an
arm per request, and the shadow.

A background thread reads the endpoint's split every `traffic_poll_s`. A pending split's missing engines are
loaded in that thread while the split in force keeps answering, then the replica reports `prepared` (or
`failed` with the traceback); the switch happens when the deployer marks the split active. Routing reads one
immutable `Table`, replaced whole, so a request never sees half a split.

The shadow gets a copy of /recommend requests through a bounded queue served by its own thread: its answers
are logged (overlap with the live answer, latency) and never returned; when the queue is full, copies are
dropped (counted), so the shadow never slows the live answer beyond the enqueue."""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

from aimass.serving import _traffic
from aimass.serving._engine import Engine
from aimass.settings import Settings

log = logging.getLogger(__name__)
_SHADOW_QUEUE = 256


@dataclass(frozen=True)
class Table:
    split_id: int | None
    experiment_id: str | None
    bounds: tuple[tuple[str, int], ...]  # (ref, upper bucket) in split order
    shadow: str | None = None
    delays: dict = field(default_factory=dict)  # ref -> seconds (fault injection drills)
    engines: dict = field(default_factory=dict)  # ref -> Engine: one read of the table gives both

    def pick(self, user_id: int | None) -> str:
        if len(self.bounds) == 1 or user_id is None:  # no user to stick to: the first arm (the control)
            return self.bounds[0][0]
        b = _traffic.bucket(self.experiment_id or "", int(user_id))
        for ref, upper in self.bounds:
            if b < upper:
                return ref
        return self.bounds[-1][0]


def _table(split, engines: dict | None = None) -> Table:
    # an arm at weight 0 owns no bucket: it is neither loaded nor picked
    live = tuple((ref, upper) for (ref, upper), a in zip(_traffic.bounds(split.arms), split.arms, strict=True)
                 if a["weight"] > 0)
    delays = {ref: float(f.get("delay_ms", 0)) / 1000 for ref, f in (split.faults or {}).items()}
    t = Table(split.id, split.experiment_id, live, split.shadow, delays)
    return t if engines is None else _with(t, engines)


def _with(t: Table, engines: dict) -> Table:
    refs = [r for r, _ in t.bounds] + ([t.shadow] if t.shadow else [])
    return Table(t.split_id, t.experiment_id, t.bounds, t.shadow, t.delays, {r: engines[r] for r in refs})


def replica_name() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # a bare `bentoml serve`: one process
        return f"pid-{os.getpid()}"


class Arms:
    def __init__(self, settings: Settings, endpoint: str, fallback_ref: str, record_shadow):
        self.settings, self.endpoint = settings, endpoint
        self.replica = replica_name()
        self.engines: dict[str, Engine] = {}
        self.record_shadow = record_shadow
        self.shadow_queue: queue.Queue = queue.Queue(_SHADOW_QUEUE)
        self.shadow_dropped = 0
        self.prepared: set[int] = set()
        active, pending = _traffic.newest(settings, endpoint)
        if active is None:  # a bare `bentoml serve`, or a deployment made before splits existed
            table = Table(None, None, ((fallback_ref, _traffic.BUCKETS),))
        else:
            table = _table(active)
        self._load(table)
        self.table = _with(table, self.engines)
        self.failed_active: set[int] = set()
        if active is not None:
            _traffic.report(settings, endpoint, active.id, self.replica, "active")
        if pending is not None:
            self._prepare(pending)
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
        for ref in [r for r, _ in t.bounds] + ([t.shadow] if t.shadow else []):
            if ref not in self.engines:
                log.info("loading %s for %s", ref, self.endpoint)
                engine = Engine(ref, self.settings)
                _warm(engine)
                self.engines[ref] = engine

    def _prepare(self, split) -> None:
        if split.id in self.prepared:
            return
        self.prepared.add(split.id)
        try:
            self._load(_table(split))
        except Exception:
            log.exception("split #%s of %s failed to load", split.id, self.endpoint)
            _traffic.report(self.settings, self.endpoint, split.id, self.replica, "failed", traceback.format_exc())
            return
        _traffic.report(self.settings, self.endpoint, split.id, self.replica, "prepared")

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
                    t = _with(t, self.engines)
                    self.table = t
                    _traffic.report(self.settings, self.endpoint, active.id, self.replica, "active")
                    keep = {r for r, _ in t.bounds} | {t.shadow} | (
                        {r for r, _ in _table(pending).bounds} | {pending.shadow} if pending else set())
                    for ref in [r for r in self.engines if r not in keep]:
                        self.engines.pop(ref).close()  # requests that picked it hold their own reference
            except Exception:  # the catalog is away for a moment: keep serving the split in force
                log.exception("reading the split of %s failed", self.endpoint)

    def _shadow(self) -> None:
        while True:
            t, req, live, rid = self.shadow_queue.get()
            try:
                engine = t.engines[t.shadow]
                t0 = time.perf_counter()
                out = engine.recommend(**req)
                ms = (time.perf_counter() - t0) * 1000
                k = max(len(live["items"]), 1)
                overlap = len(set(out["items"]) & set(live["items"])) / k
                self.record_shadow(engine, t, rid, req.get("user_id"), out, overlap, ms)
            except Exception as e:  # the shadow's failure is logged, never the live answer's; the thread goes on
                log.info("shadow %s failed on %s: %s", t.shadow, rid, e)


def _warm(engine: Engine) -> None:
    """One answer before the first request: a fresh model's first call is slow (lazy imports, allocation), and a
    canary's latency guardrail must not judge that."""
    try:
        user = next(iter(engine.histories), None)
        engine.recommend(user, None if user is not None else [], 1)
    except Exception:
        log.debug("warming %s failed", engine.info.ref, exc_info=True)
