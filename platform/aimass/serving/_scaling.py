"""Autoscaling made visible: what Serve runs for an endpoint now (`snapshot`) and the scaling decisions seen
by a watcher inside the serving cluster (`Watcher`, `start_watcher`), kept in the catalog (`decisions`).

Where the numbers come from (Ray 2.60; only serve.status() is a public Ray API, so every read fails soft: a
field Ray stops giving is None, never an exception):
- replicas, their states, the autoscaler's target replica count and the deployment's autoscaling config: the
  controller's `get_serve_instance_details`, the call behind `serve.status()` and the dashboard's REST API;
  `serve.status()` itself is the fallback (states only, no target).
- ongoing requests per replica: each replica actor's `get_num_ongoing_requests` (what Serve's router asks a
  replica before sending it a request; it runs on its own thread, so a busy replica still answers). An
  instantaneous count.
- the autoscaler's own view: the controller's `_get_total_num_requests_for_deployment_for_testing`, the total
  ongoing requests averaged over the look-back window, i.e. what the policy compares with
  target_ongoing_requests x replicas. No public call gives it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from aimass.catalog import ScalingEvent, ScalingEventBase, session
from aimass.errors import InvalidInputError
from aimass.settings import Settings

log = logging.getLogger(__name__)
WATCHER = "aimass-scaling-watcher"
NAMESPACE = "aimass"  # serving's (aimass.serving._cluster.connect)
SERVE_NAMESPACE = "serve"  # where Serve names its controller and replica actors
WATCH_S = 2.0
_RPC_TIMEOUT_S = 5.0  # one stuck replica or controller must not hang `deployments show` or the watcher


@dataclass
class Seen:
    """One deployment as the watcher sees it. `replicas` is the autoscaler's target when Ray gives it (the
    decision itself), else the running count (its effect); `kind` says which: the two are never compared."""

    replicas: int
    kind: str  # "target" or "running"
    running: int
    trigger: str


# --- reading Serve ------------------------------------------------------------------------------------------
def _client():
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False)


def _details() -> dict | None:
    """get_serve_instance_details as a dict; None when Ray no longer answers it the way this expects."""
    try:
        client = _client()
        if client is None:
            return None
        import ray

        d = ray.get(client._controller.get_serve_instance_details.remote(), timeout=_RPC_TIMEOUT_S)
        return d if isinstance(d, dict) and isinstance(d.get("applications"), dict) else None
    except Exception as e:
        log.debug("serve instance details unavailable: %r", e)
        return None


class ServeUnreadable(RuntimeError):
    """Serve's controller did not answer (restarting, overloaded): what it runs now is unknown, which is not
    "nothing runs"."""


def _status_apps() -> dict[str, dict] | None:
    """serve.status() reshaped like the details' applications (states, no target): the public fallback. None
    when it could not be read; {} when Serve runs no application (or has not started)."""
    try:
        from ray import serve

        out = {}
        for name, a in serve.status().applications.items():
            deps = {}
            for dname, d in a.deployments.items():
                states = {_text(k): int(v) for k, v in (d.replica_states or {}).items()}
                deps[dname] = {"status": _text(d.status), "status_trigger": _text(d.status_trigger),
                               "replica_states": states}
            out[name] = {"status": _text(a.status), "deployments": deps}
        return out
    except Exception as e:
        log.debug("serve.status() unavailable: %r", e)
        return None


def _text(v: Any) -> str | None:
    return None if v is None else str(getattr(v, "value", v))


def _states(dep: dict) -> dict[str, int]:
    if "replica_states" in dep:  # the serve.status() shape
        return dict(dep["replica_states"])
    states: dict[str, int] = {}
    for r in dep.get("replicas") or []:
        state = _text(r.get("state")) or "UNKNOWN"
        states[state] = states.get(state, 0) + 1
    return states


def _applications() -> tuple[dict[str, dict] | None, bool]:
    """(applications, whether they carry details: targets, configs, replica actors); applications None when
    neither the details nor serve.status() could be read."""
    d = _details()
    if d is not None:
        return d["applications"], True
    return _status_apps(), False


def running_replica_ids(endpoint: str) -> set[str] | None:
    """The replica ids (Serve's unique ids, what a replica's context names it) of the endpoint's running
    replicas; None when Serve's details are not available."""
    d = _details()
    if d is None:
        return None
    app = d["applications"].get(endpoint)
    if app is None:
        return set()
    try:
        return {str(r["replica_id"]) for dep in (app.get("deployments") or {}).values()
                for r in dep.get("replicas") or [] if _text(r.get("state")) == "RUNNING"}
    except (KeyError, TypeError, AttributeError):
        return None


def _ongoing(dep: dict) -> dict[str, int | None] | None:
    """Each running replica's ongoing requests now, by replica id (None for one that did not answer)."""
    try:
        import ray

        running = [r for r in dep.get("replicas") or [] if _text(r.get("state")) == "RUNNING"]
        refs = {}
        for r in running:
            try:
                actor = ray.get_actor(r["actor_name"], namespace=SERVE_NAMESPACE)
                refs[r["replica_id"]] = actor.get_num_ongoing_requests.remote()
            except Exception as e:  # the replica stopped between the two calls
                log.debug("replica %s: %r", r.get("replica_id"), e)
        out: dict[str, int | None] = {rid: None for rid in (r.get("replica_id") for r in running)}
        if refs:
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=_RPC_TIMEOUT_S)
            for rid, ref in refs.items():
                if ref in ready:
                    try:
                        out[rid] = int(ray.get(ref))
                    except Exception as e:
                        log.debug("replica %s: %r", rid, e)
        return out
    except Exception as e:
        log.debug("ongoing requests unavailable: %r", e)
        return None


def _autoscaler_total(endpoint: str, deployment: str) -> float | None:
    """The autoscaler's total ongoing requests (averaged over the look-back window) for one deployment."""
    try:
        import ray
        from ray.serve._private.common import DeploymentID

        client = _client()
        if client is None:
            return None
        ref = client._controller._get_total_num_requests_for_deployment_for_testing.remote(
            DeploymentID(name=deployment, app_name=endpoint))
        return float(ray.get(ref, timeout=_RPC_TIMEOUT_S))
    except Exception as e:
        log.debug("autoscaler total unavailable: %r", e)
        return None


_BOUNDS = ("min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s",
           "look_back_period_s")


def _deployment(endpoint: str, name: str, dep: dict, detailed: bool, saved: dict | None) -> dict:
    states = _states(dep)
    running = states.get("RUNNING", 0)
    cfg = ((dep.get("deployment_config") or {}).get("autoscaling_config") or {}) if detailed else {}
    # Ray's view first; the arguments aimass deployed with when Ray gives none (a changed details shape)
    bounds = {k: cfg.get(k, (saved or {}).get(k)) for k in _BOUNDS}
    ongoing = _ongoing(dep) if detailed else None
    counts = [v for v in (ongoing or {}).values() if v is not None]
    total = _autoscaler_total(endpoint, name) if detailed else None
    return {
        "deployment": name, "status": _text(dep.get("status")), "trigger": _text(dep.get("status_trigger")),
        "replicas": running, "target_replicas": dep.get("target_num_replicas"), "replica_states": states,
        **bounds,
        "ongoing": ongoing,
        "ongoing_per_replica": round(sum(counts) / len(counts), 3) if counts else None,
        "autoscaler_ongoing": round(total, 3) if total is not None else None,
        "autoscaler_ongoing_per_replica": round(total / running, 3) if total is not None and running else None,
    }


def _saved_args(settings: Settings, endpoint: str) -> dict | None:
    import json

    f = settings.home / "serve" / "deployments" / f"{endpoint}.json"  # what aimass.serving.deploy writes
    try:
        return json.loads(f.read_text()).get("args")
    except (OSError, ValueError, AttributeError):
        return None


def snapshot(settings: Settings, endpoint: str) -> dict:
    """What Serve runs for `endpoint` now: per deployment its replicas (running count, states, the autoscaler's
    target), bounds and target_ongoing_requests, ongoing requests per replica (live) and the autoscaler's
    averaged total. Does not start a cluster: `running` is False when none runs."""
    from aimass.serving import _cluster

    saved = _saved_args(settings, endpoint)
    out: dict[str, Any] = {"endpoint": endpoint, "running": False, "status": "NOT_RUNNING", "deployments": []}
    if not _cluster.running(settings):
        return out
    _cluster.connect(settings, serve_start=False)
    apps, detailed = _applications()
    out["running"] = True
    if apps is None:  # not NOT_RUNNING: Serve did not say
        out["status"] = "UNKNOWN"
        return out
    app = apps.get(endpoint)
    if app is None:
        return out
    out["status"] = _text(app.get("status")) or "UNKNOWN"
    out["deployments"] = [_deployment(endpoint, name, dep, detailed, saved)
                          for name, dep in sorted((app.get("deployments") or {}).items())]
    return out


def seen_now() -> dict[tuple[str, str], Seen]:
    """Every deployment of every Serve application: (endpoint, deployment) -> what its replica count is now.
    ServeUnreadable when Serve's controller does not answer."""
    apps, detailed = _applications()
    if apps is None:
        raise ServeUnreadable("Serve's controller did not answer (serve instance details, serve.status())")
    seen = {}
    for endpoint, app in apps.items():
        for name, dep in (app.get("deployments") or {}).items():
            running = _states(dep).get("RUNNING", 0)
            target = dep.get("target_num_replicas") if detailed else None
            trigger = _text(dep.get("status_trigger") or "")
            if isinstance(target, int):
                seen[(endpoint, name)] = Seen(target, "target", running, trigger)
            else:
                seen[(endpoint, name)] = Seen(running, "running", running, trigger)
    return seen


def report(settings: Settings, endpoint: str, limit: int = 10) -> dict:
    """`snapshot` plus the last `limit` recorded decisions (newest first), all plain JSON values."""
    return {**snapshot(settings, endpoint),
            "decisions": [e.model_dump(mode="json") for e in decisions(settings, endpoint, limit)]}


# --- recording decisions -------------------------------------------------------------------------------------
class Watcher:
    """`poll_once()` compares each deployment's replica count with the last one seen and records a ScalingEvent
    for every change. The first sight of a deployment records nothing (there is no "from"); one that is gone
    is forgotten, so a redeploy starts fresh. Changes that cancel out between two polls are not seen. A poll
    that cannot read Serve raises and forgets nothing: the next one that can compares with what was seen last.
    `observe` and `load` default to the real ones; tests pass fakes."""

    def __init__(self, settings: Settings, *, observe: Callable[[], dict[tuple[str, str], Seen]] | None = None,
                 load: Callable[[str, str, int], float | None] | None = None):
        self.settings = settings
        self._observe = observe or seen_now
        self._load = load or _load_at_decision
        self.last: dict[tuple[str, str], dict[str, int]] = {}  # per deployment: kind -> replicas

    def poll_once(self) -> list[ScalingEventBase]:
        seen = self._observe()
        events, last = [], {}
        for key, now in seen.items():
            mem = self.last.get(key, {})
            before = mem.get(now.kind)
            # A running count while the targets are known (Ray's details missed one poll) is no decision: the
            # target change, if any, is recorded when the details are back, so nothing is recorded twice.
            counts = now.kind == "target" or "target" not in mem
            if counts and before is not None and before != now.replicas:
                events.append(ScalingEventBase(endpoint=key[0], deployment=key[1], replicas_from=before,
                                               replicas_to=now.replicas, trigger=now.trigger,
                                               ongoing_per_replica=self._load(key[0], key[1], mem["running"])))
            last[key] = {**mem, now.kind: now.replicas, "running": now.running}
        if events:
            with session(self.settings) as db:
                db.add_all([ScalingEvent(**e.model_dump()) for e in events])
                db.commit()
        # Only once written: after a failed write the next poll that still sees the change records it.
        self.last = last
        for e in events:
            log.info("%s/%s scaled %d -> %d (%s)", e.endpoint, e.deployment, e.replicas_from, e.replicas_to,
                     e.trigger)
        return events


def _load_at_decision(endpoint: str, deployment: str, running: int) -> float | None:
    """Ongoing requests per replica as the autoscaler saw them when it decided: its averaged total over the
    replicas that were running. None when Ray does not say."""
    total = _autoscaler_total(endpoint, deployment)
    return round(total / running, 3) if total is not None and running else None


def _public(e: ScalingEvent) -> ScalingEventBase:
    data = e.model_dump(exclude={"id"})
    if data["at"].tzinfo is None:  # SQLite hands datetimes back without their offset
        data["at"] = data["at"].replace(tzinfo=UTC)
    return ScalingEventBase.model_validate(data)


def row_limit(name: str, n) -> int:
    """A count of rows to list, checked: a whole number, 0 or more; beyond what any table holds it is all of
    them (a SQL LIMIT takes 64 bits: 1e20 failed with an OverflowError)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidInputError(f"{name} must be a whole number, 0 or more, got {n!r}")
    return min(n, 2**62)


def decisions(settings: Settings, endpoint: str, limit: int = 10) -> list[ScalingEventBase]:
    """The recorded scaling changes of `endpoint`, newest first."""
    from sqlmodel import col, select

    limit = row_limit("limit", limit)

    with session(settings) as db:
        q = (select(ScalingEvent).where(ScalingEvent.endpoint == endpoint)
             .order_by(col(ScalingEvent.at).desc(), col(ScalingEvent.id).desc()).limit(limit))
        return [_public(e) for e in db.exec(q).all()]


# --- the watcher in the serving cluster ----------------------------------------------------------------------
class _ScalingWatcher:  # the name `ps` shows for the actor's process (ray::_ScalingWatcher)
    """The watcher inside the serving cluster: polls on a thread; `update` swaps in new settings."""

    def __init__(self, settings: dict, interval: float):
        self.watcher = Watcher(Settings(**settings))
        self.interval = interval
        self.polls = 0
        self.recorded = 0
        self.last_error: str | None = None
        threading.Thread(target=self._loop, name=WATCHER, daemon=True).start()

    def _loop(self) -> None:
        while True:
            self.poll()
            time.sleep(self.interval)

    def poll(self) -> None:
        try:
            self.recorded += len(self.watcher.poll_once())
            self.last_error = None
        except ServeUnreadable as e:  # a controller restart: every poll until it is back, one line for them all
            if self.last_error != repr(e):
                log.warning("scaling watcher: %s; polling on", e)
            self.last_error = repr(e)
        except Exception as e:  # the loop outlives any one failure (a locked catalog)
            self.last_error = repr(e)
            log.exception("scaling watcher poll failed")
        self.polls += 1

    def update(self, settings: dict, interval: float) -> None:
        self.watcher.settings = Settings(**settings)
        self.interval = interval

    def status(self) -> dict:
        return {"polls": self.polls, "recorded": self.recorded, "interval_s": self.interval,
                "last_error": self.last_error}


def start_watcher(settings: Settings, interval: float = WATCH_S) -> dict:
    """Start the watcher in this home's serving cluster as the detached actor `aimass-scaling-watcher`, or give
    the running one these settings. Idempotent; returns its status. Joins (or starts) the cluster."""
    import ray

    from aimass.serving import CLUSTER_OWNER_ENV, WORKER_SETUP_HOOK, _procs, connect

    connect(settings)
    # the actor's arguments stay in Ray's control store: credentials travel in the secrets file there too
    data = settings.dump(secrets_to=settings.secrets_dir)
    env = {**settings.as_env(secrets_to=settings.secrets_dir), "HF_HUB_OFFLINE": "1"}
    if not settings.ray_address:  # an embedded head's mark: stopping the cluster stops the watcher too
        env[CLUSTER_OWNER_ENV] = _procs.owner_env(settings.home)[CLUSTER_OWNER_ENV]
    actor = ray.remote(_ScalingWatcher).options(
        name=WATCHER, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
        # what the serving replicas get: the loopback hook, and the settings for whatever reads the environment
        runtime_env={"env_vars": env, "worker_process_setup_hook": WORKER_SETUP_HOOK},
    ).remote(data, interval)
    ray.get(actor.update.remote(data, interval))
    return {"actor": WATCHER, "namespace": NAMESPACE, **ray.get(actor.status.remote())}
