"""Serving: registered model versions as REST endpoints (a BentoML service per family, mounted in Ray Serve
with autoscaling), API keys, and Bentos.

    >>> key, _ = aimass.serving.create_key("demo-app")
    >>> d = aimass.serving.deploy("recs@champion", endpoint="recs")
    >>> d.url  # POST {url}/recommend with 'Authorization: Bearer <key>'

A Serve config names `aimass.serving.app:build`; Bentos call `pin_bento`; `Engine` is one loaded model as
the services use it (benchmarks call it without HTTP).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import re
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from aimass import _ray  # noqa: F401  (loopback-only Ray: must run before anything imports ray)
from aimass.catalog import ApiKeyPublic, TrafficSplitPublic
from aimass.errors import AimassError, BackendError, ConflictError, InvalidInputError, NotFoundError
from aimass.serving import _keys
from aimass.serving._bento import pin as pin_bento
from aimass.serving._traffic import parse_arms
from aimass.settings import Settings, default_settings, error_line, write_private

__all__ = ["CLUSTER_OWNER_ENV", "WORKER_SETUP_HOOK", "Deployment", "Engine", "TrafficView", "applications",
           "build_bento", "check_can_serve", "check_deployed", "check_endpoint", "connect", "create_key",
           "curl_example", "delete", "deploy", "deployments", "endpoints", "key_expired", "key_id_of", "key_info",
           "list_keys", "orphans", "parse_arms", "pin_bento", "revoke_key", "rollback", "running", "scaling",
           "set_traffic", "show", "shutdown", "shutdown_orphans", "traffic"]
log = logging.getLogger(__name__)


def __getattr__(name: str):
    if name == "Engine":  # numpy, pandas and the registry: only for who asks
        from aimass.serving._engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_ENDPOINT = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
# Settings a replica must share with the deployer (where the state lives); the serve_* ones are set per app.
_SHARED = ("home", "catalog_url", "data_registry", "dvc_remote", "mlflow_tracking_uri", "host",
           "serve_max_body_bytes", "feedback_positive", "feedback_negative", "feedback_neutral",
           "feedback_max_body_bytes", "feedback_max_future_s", "online_poll_s", "traffic_poll_s", "serve_cache_users",
           "serve_cache_warm_users", "serve_ann_min_items", "serve_batch_max", "serve_batch_wait_ms")


class Deployment(BaseModel):
    endpoint: str
    url: str
    model: str
    version: int
    family: str
    requested: str
    dataset: str | None
    ranker: str | None = None
    status: str = "unknown"
    proxy: str
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    config: str
    created_at: datetime


def _dir(s: Settings) -> Path:
    return s.home / "serve"


def check_endpoint(endpoint: str) -> str:
    if not isinstance(endpoint, str) or not _ENDPOINT.fullmatch(endpoint):
        raise InvalidInputError(f"invalid endpoint {endpoint!r}: use 1-40 lower-case letters, digits or '-', "
                                "starting with a letter or digit")
    return endpoint


@functools.cache
def _code_digest() -> str:
    """A digest of the installed aimass package's source: what the replicas would import."""
    import hashlib

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _env(s: Settings, model: str, ranker: str | None, endpoint: str) -> dict[str, str]:
    env = s.as_env(_SHARED, secrets_to=s.secrets_dir)
    env.update({"AIMASS_SERVE_MODEL": model, "AIMASS_SERVE_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "1",
                # new code is a new application: a redeploy after an upgrade restarts the replicas (preflight first)
                "AIMASS_CODE_DIGEST": _code_digest()})  # BentoML's own options: services.CONFIG
    if ranker:
        env["AIMASS_SERVE_RANKER"] = ranker
    return env


MAX_TARGET_ONGOING = 10_000
# replicas of one deployment: a typo's 999999999 would have Serve plan that many (and keep trying)
MAX_REPLICAS = 1_000
# how long a deploy, traffic change or delete waits for another one of its endpoint (a deploy's preflight and
# a split's switch take minutes at most) before it is refused
ENDPOINT_WAIT_S = 900.0


def _one_change(s: Settings, endpoint: str):
    """One deploy, traffic change or delete of an endpoint at a time, across processes (a person's command, the
    retrain scheduler's canary): two deploys each wrote their split and their record, the later split in force
    and possibly the other's record; a delete during a switch activated the split of an endpoint gone."""
    from aimass import console

    check_endpoint(endpoint)  # the lock file is named after it
    return console.held(s.locks / f"endpoint-{endpoint}.lock", f"another change of endpoint {endpoint!r}",
                        ENDPOINT_WAIT_S, f"another deploy, traffic change or delete of endpoint {endpoint!r} is in "
                        "progress; try again when it ends")


def deploy(ref: str, endpoint: str, *, ranker: str | None = None, min_replicas: int = 1,
           max_replicas: int = 2, target_ongoing_requests: float = 8.0, upscale_delay_s: float = 10.0,
           downscale_delay_s: float = 60.0, settings: Settings | None = None) -> Deployment:
    """Serve `ref` (NAME, NAME/VERSION or NAME@ALIAS, pinned to the version it names now) at
    http://host:serve_port/<endpoint>. With `ranker`, a multi-stage application: `ref` retrieves (two-tower),
    `ranker` ranks (SASRec), then rules. Redeploying an endpoint replaces it. The autoscaler keeps
    min_replicas..max_replicas replicas near target_ongoing_requests each, adding them once it has wanted more
    for upscale_delay_s and removing them after downscale_delay_s; `scaling(endpoint)` shows its decisions."""
    from aimass import registry
    from aimass.serving import _cluster

    s = settings or default_settings()
    check_endpoint(endpoint)
    if not 0 <= min_replicas <= max_replicas <= MAX_REPLICAS or max_replicas < 1:
        raise InvalidInputError(f"need 0 <= min_replicas <= max_replicas <= {MAX_REPLICAS:,} and max_replicas >= 1,"
                                f" got {min_replicas} and {max_replicas}")
    # bounded: Serve's queue per replica is 4x the target, a whole number (1e308 overflowed there, after the
    # cluster had started and a split was written)
    if not (math.isfinite(target_ongoing_requests) and 0 < target_ongoing_requests <= MAX_TARGET_ONGOING):
        raise InvalidInputError(f"target_ongoing_requests must be a number in (0, {MAX_TARGET_ONGOING:,}], got "
                                f"{target_ongoing_requests}")
    if not all(math.isfinite(d) and d >= 0 for d in (upscale_delay_s, downscale_delay_s)):
        raise InvalidInputError(f"scaling delays must be numbers of seconds, not negative, got {upscale_delay_s} "
                                f"(up) and {downscale_delay_s} (down)")
    _cluster.check_address(s)
    info = registry.get(ref, settings=s)
    rank_info = registry.get(ranker, settings=s) if ranker else None
    if rank_info and rank_info.dataset != info.dataset:
        raise InvalidInputError(f"retrieval {info.ref} is trained on {info.dataset} but ranker "
                                f"{rank_info.ref} on {rank_info.dataset}: stages must share it")
    family = "pipeline" if rank_info else (info.family or "")
    from aimass.serving.services import servable

    if family not in servable():
        raise InvalidInputError(f"{info.ref} has family {family!r}, which no service serves")
    from aimass.serving import _traffic, app

    with _one_change(s, endpoint):
        experiment = _traffic.running_experiment(s, endpoint)
        if experiment:  # a new deployment's split would end it unrecorded, its arms gone
            raise ConflictError(f"experiment {experiment} is running on {endpoint!r}: stop it first (aimass "
                                f"experiments stop {endpoint} [--promote ARM]); nothing was deployed")
        _cluster.check_port(s)  # before anything starts: HAProxy's own failure comes late and says little

        before = _saved(s).get(endpoint)
        running = before is not None and _live_status(s).get(endpoint) == "RUNNING"
        swap = (running and family != "pipeline" and before["args"]["family"] != "pipeline"
                and (family == "search") == (before["args"]["family"] == "search")  # another kind: new routes
                and _traffic.current(s, endpoint) is not None)  # an endpoint deployed before splits restarts
        env = _env(s, info.ref, rank_info.ref if rank_info else None, endpoint)
        if swap:  # the replicas keep running: the model changes through the split, in two phases (no lost request)
            env["AIMASS_SERVE_MODEL"] = before["args"]["env"].get("AIMASS_SERVE_MODEL", info.ref)  # a fallback only
        args = app.AppArgs(family=family, env=env, min_replicas=min_replicas, max_replicas=max_replicas,
                           target_ongoing_requests=target_ongoing_requests, upscale_delay_s=upscale_delay_s,
                           downscale_delay_s=downscale_delay_s, log_level=s.serve_log_level)
        restart = not (swap and before["args"] == args.model_dump())
        if running and restart:  # new replicas must start before the running ones are replaced: try them aside first
            _preflight(s, args, endpoint, info.ref)
        initial = prior = swapped = None
        if swap:
            prior = _traffic.current(s, endpoint)
            swapped = set_traffic(endpoint, [f"{info.ref}=100"], reason="deploy", settings=s)
        elif family != "pipeline":  # before the replicas start: they read the split in force as they load
            prior = _traffic.current(s, endpoint)
            initial = _traffic.activate_initial(s, endpoint, info.ref)
        try:
            # no replica would load the model until a first request: try one aside, or a broken model deploys
            trial = not running and min_replicas == 0
            state = _run(s, args, endpoint, info.ref, trial=trial) if restart else _cluster.connect(s)
        except BaseException:  # the deployment record still names the old model: so must the split
            if initial is not None:
                _traffic.undo_initial(s, endpoint, initial, prior.id if prior else None)
            if swapped is not None:  # the new model took the traffic before the update failed: the split before it
                # returns, in the catalog (the replicas follow it; the application is not RUNNING for set_traffic)
                _traffic.undo_initial(s, endpoint, swapped.id, prior.id)
                _retarget(s, endpoint, next(a["ref"] for a in prior.arms if a["weight"] > 0))
            raise
        if family == "pipeline":  # no split routes it: the single-model splits before it are history, not in force
            _traffic.retire(s, endpoint, "a multi-stage application serves the endpoint")
        d = Deployment(endpoint=endpoint, url=f"http://{s.host}:{s.serve_port}/{endpoint}", model=info.name,
                       version=info.version, family=family, requested=ref, dataset=info.dataset,
                       ranker=rank_info.ref if rank_info else None, status="RUNNING", proxy=state["proxy"],
                       min_replicas=min_replicas, max_replicas=max_replicas,
                       target_ongoing_requests=target_ongoing_requests, config=str(_dir(s) / "serve-config.yaml"),
                       created_at=datetime.now(UTC))
        meta = _dir(s) / "deployments"
        meta.mkdir(parents=True, exist_ok=True)
        write_private(meta / f"{endpoint}.json", json.dumps({"deployment": d.model_dump(mode="json"),
                                                             "args": args.model_dump()}, indent=2))
        _write_config(s)
        _watch_scaling(s)
        return d


def _watch_scaling(s: Settings) -> None:
    """Start (or reuse) the cluster's scaling watcher. The endpoint serves without it, so a failure is logged,
    not raised: only the record of scaling decisions is missing."""
    from aimass.serving import _scaling

    try:
        _scaling.start_watcher(s)
    except Exception:
        log.warning("the scaling watcher did not start: scaling decisions are not recorded", exc_info=True)


def _preflight(s: Settings, args, endpoint: str, ref: str) -> None:
    """Start the new application's replicas as a separate, unrouted Serve application and delete it again:
    replicas that cannot start (new code, new settings) fail here, while the endpoint keeps serving untouched.
    Serve's own rolling update would have routed the odd request to a replica that never came up."""
    from ray import serve

    from aimass.serving import _cluster, app

    name = f"{endpoint}.preflight"  # "." is in no endpoint's name: never another endpoint's application
    _cluster.connect(s)
    # its own endpoint name: its replicas must not answer the endpoint's split changes or read its feedback
    trial = args.model_copy(update={"env": {**args.env, "AIMASS_SERVE_ENDPOINT": name}, "min_replicas": 1,
                                        "max_replicas": 1})
    try:
        serve.run(app.build(trial.model_dump()), name=name, route_prefix=None, blocking=False)
    except Exception as e:
        raise BackendError(f"the new deployment of {ref} at {endpoint!r} did not start, so {endpoint!r} keeps "
                           f"serving what it served: {str(e)[-1500:]}") from None
    finally:
        try:
            serve.delete(name)
        except Exception:
            log.warning("the preflight application %s was not deleted", name, exc_info=True)


def _run(s: Settings, args, endpoint: str, ref: str, *, trial: bool = False) -> dict:
    """serve.run of the application (after a preflight with `trial`); a cluster this call started is stopped
    again if anything fails, so a failed deploy leaves nothing running that it started."""
    import ray
    from ray import serve

    from aimass.serving import _cluster, app

    started = not _cluster.running(s)
    try:
        state = _cluster.connect(s)
        if trial:
            _preflight(s, args, endpoint, ref)
        log.info("deploying %s at /%s", ref, endpoint)
        serve.run(app.build(args.model_dump()), name=endpoint, route_prefix=f"/{endpoint}", blocking=False)
    except BaseException as e:  # Ctrl-C included: the head must not outlive a deploy that started it
        if started and not _others(endpoint):  # ... unless another command deployed on it meanwhile
            log.info("deploy failed: stopping the serving cluster it started")
            ray.shutdown()
            _cluster.stop(s)
        if isinstance(e, Exception) and not isinstance(e, AimassError):
            # A replica that fails to start: Serve reports its traceback.
            raise BackendError(f"deployment of {ref} at {endpoint!r} failed: {str(e)[-1500:]}") from None
        raise
    return state


def _others(endpoint: str) -> bool:
    """Whether the connected Serve runs applications besides `endpoint` (and its preflight)."""
    import ray

    if not ray.is_initialized():  # never joined (the head did not start): serve.status() would start a Ray
        return False
    try:
        from ray import serve

        names = set(serve.status().applications)
    except Exception:  # never connected, or the cluster is gone: nothing of anyone's to keep
        return False
    return bool(names - {endpoint, f"{endpoint}.preflight"})


def check_can_serve(*, settings: Settings | None = None) -> None:
    """Refuse (ConflictError), before any work, what a first deploy of this home would refuse only once it
    comes: its serve port held by another process, or this home's cluster running under another address."""
    from aimass.serving import _cluster

    s = settings or default_settings()
    _cluster.check_address(s)
    _cluster.check_port(s)


def curl_example(d: Deployment, key: str, user_id: int = 1, k: int = 10, query: str | None = None) -> str:
    """A working `curl` for d's /recommend, or with `query` its /search (what `make demo` prints)."""
    body = json.dumps({"query": query, "k": k} if query is not None else {"user_id": user_id, "k": k})
    if "'" in body:
        raise InvalidInputError("the example query must not hold a single quote (the shell's quote)")
    return (f"curl -s -X POST {d.url}/{'search' if query is not None else 'recommend'} -H 'Authorization: "
            f"Bearer {key}' -H 'Content-Type: application/json' -d '{body}'")


def _saved(s: Settings) -> dict[str, dict]:
    """Every deployment record; one that cannot be read (damaged by hand, a disk that failed under an older
    aimass) is skipped with a warning naming it, never an error for every endpoint."""
    meta = _dir(s) / "deployments"
    out = {}
    for p in sorted(meta.glob("*.json")) if meta.exists() else []:
        try:
            out[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            log.warning("skipping the unreadable deployment record %s (%s): remove it, or deploy %s again",
                        p, type(e).__name__, p.stem)
    return out


def _write_config(s: Settings) -> Path:
    """One Serve config with every deployment: `serve deploy` applies a whole config, so this is the file that
    reproduces the current state."""
    import yaml

    apps = [{"name": e, "route_prefix": f"/{e}", "import_path": "aimass.serving.app:build",
             "args": m["args"]} for e, m in _saved(s).items()]
    cfg = {"proxy_location": "HeadOnly", "http_options": {"host": s.host, "port": s.serve_port},
           "applications": apps}
    path = _dir(s) / "serve-config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, "# Written by aimass; reproduce with: serve deploy " + str(path) + "\n"
                  + yaml.safe_dump(cfg, sort_keys=False))
    return path


# --- traffic splits (see _traffic: two-phase changes, sticky assignment) -------------------------------------
class TrafficView(BaseModel):
    endpoint: str
    split: TrafficSplitPublic | None = Field(description="The split in force")
    pending: TrafficSplitPublic | None = Field(None, description="A change being applied now")
    replicas: list[dict] = Field(default_factory=list, description="Each replica's answer to the split in force")
    history: list[TrafficSplitPublic] = Field(default_factory=list, description="Newest first")


def set_traffic(endpoint: str, arms: list[str] | dict[str, int], shadow: str | None = None, *,
                faults: dict | None = None, experiment_id: str | None = None, reason: str = "set",
                actor: str = "sdk", ending: str | None = None, settings: Settings | None = None) -> TrafficSplitPublic:
    """Split ENDPOINT's traffic: `arms` as ["NAME/V=90", "NAME/W=10"] or {"NAME/V": 90, ...} (weights sum to
    100, refs may be aliases: pinned now), `shadow` a ref that gets a copy of /recommend off the request path,
    `faults` drills such as {"NAME/W": {"delay_ms": 50}}. Returns once every replica has loaded every arm and
    switched; a version that fails to load is reported (BackendError) and the split in force stays. Users keep
    their arm while only weights change. While an experiment runs on the endpoint, only a change under its id
    (or one that `ending` it, what aimass.experiments does) is accepted."""
    from aimass.serving import _traffic

    s = settings or default_settings()
    with _one_change(s, endpoint):
        saved = _saved(s).get(check_deployed(endpoint, settings=s))
        parsed = _traffic.parse_arms([f"{r}={w}" for r, w in arms.items()] if isinstance(arms, dict) else list(arms))
        resolved, shadow = _traffic.validate(s, endpoint, parsed, shadow, saved["args"]["family"])
        faults = _traffic.check_faults(s, faults or {}, resolved)
        running, stopping = _traffic.running_experiment_row(s, endpoint) or (None, None)
        if running and running not in (experiment_id, ending):
            raise ConflictError(f"experiment {running} is running on {endpoint!r}: stop it first (aimass experiments "
                                f"stop {endpoint} [--promote ARM]); the split is unchanged")
        if running and stopping and ending != running:  # a ramp landing after the stop's split would undo it
            raise ConflictError(f"experiment {running} on {endpoint!r} is being stopped ({stopping}): the split is "
                                "unchanged")
        now = _traffic.current(s, endpoint)
        if (running and running == experiment_id and now is not None and now.experiment_id == running
                and [a["ref"] for a in now.arms] != [a.ref for a in resolved]):
            raise ConflictError(f"experiment {running} runs on {', '.join(a['ref'] for a in now.arms)}: its arms (and "
                                "their order) cannot change under it, only their weights and faults")
        if _live_status(s).get(endpoint) != "RUNNING":
            raise ConflictError(f"endpoint {endpoint!r} is not running (aimass deploy it first); the split is "
                                "unchanged")
        split = _traffic.propose(s, endpoint, resolved, shadow, faults=faults, experiment_id=experiment_id,
                                 reason=reason, actor=actor)
        answering = next((a.ref for a in resolved if a.weight > 0), resolved[0].ref)
        try:
            _traffic.wait(s, split, lambda: _running_replicas(s, endpoint))
        except BaseException as e:  # Ctrl-C included: a pending split must not hold the endpoint's lock
            try:
                _traffic.decide(s, split.id, "failed", f"interrupted: {error_line(e)}")  # still pending: failed
            except AimassError:  # decided already: failed by wait, or active before the failure
                now = _traffic.current(s, endpoint)
                if now is not None and now.id == split.id:  # in force: the replicas serve it, the record says so
                    _retarget(s, endpoint, answering)
                    if isinstance(e, Exception):  # only waiting for replicas to report the switch failed
                        log.warning("split #%s of %s is in force; waiting for its replicas' reports failed: %s",
                                    split.id, endpoint, error_line(e))
                        return now
            raise
        log.info("traffic of %s: %s", endpoint, ", ".join(f"{a.ref}={a.weight}" for a in resolved))
        _retarget(s, endpoint, answering)  # what answers
        return _traffic.current(s, endpoint)


def rollback(endpoint: str, *, actor: str = "sdk", expect: int | None = None, ending: str | None = None,
             settings: Settings | None = None) -> TrafficSplitPublic:
    """Restore the split in force before the current one (its arms, shadow and user assignment; not its
    fault drills). A second rollback swaps back. With `expect`, only while split #expect is the one in force
    (ConflictError otherwise, checked under the endpoint's lock); `ending` names the experiment it ends."""
    from aimass.serving import _traffic

    s = settings or default_settings()
    with _one_change(s, endpoint):
        now = _traffic.current(s, check_deployed(endpoint, settings=s))
        if expect is not None and (now is None or now.id != expect):
            raise ConflictError(f"the split in force is no longer #{expect}: left as it is")
        prev = _traffic.previous(s, endpoint)
        # a drill's faults do not come back with its split; rolling back twice swaps back (the previous split)
        return set_traffic(endpoint, [f"{a['ref']}={a['weight']}" for a in prev.arms], prev.shadow,
                           experiment_id=prev.experiment_id, reason=f"rollback to #{prev.id}", actor=actor,
                           ending=ending, settings=s)


def traffic(endpoint: str, *, history: int = 10, settings: Settings | None = None) -> TrafficView:
    from aimass.serving import _traffic

    s = settings or default_settings()
    from aimass.serving._scaling import row_limit

    history = row_limit("history", history)
    check_deployed(endpoint, settings=s)
    active, pending = _traffic.newest(s, endpoint)
    reps = [{"replica": r.replica, "state": r.state, "at": r.at, "error": r.error}
            for r in (_traffic.reports(s, active.id) if active else [])]
    return TrafficView(endpoint=endpoint, split=active, pending=pending, replicas=reps,
                       history=_traffic.history(s, endpoint, history))


def _running_replicas(s: Settings, endpoint: str) -> set[str] | int:
    """The ids of the endpoint's running replicas (what each reports its split state under), or their number
    when Serve does not name them."""
    from ray import serve

    from aimass.serving import _cluster, _scaling

    if not _cluster.running(s):  # stopped meanwhile (a shutdown): joining would start a new, empty cluster
        raise ConflictError(f"the serving cluster stopped while the split of {endpoint!r} was being applied")
    _cluster.connect(s)
    ids = _scaling.running_replica_ids(endpoint)
    if ids is not None:
        return ids
    app = serve.status().applications.get(endpoint)
    if app is None:
        return 0
    return sum(int(d.replica_states.get("RUNNING", 0)) for d in app.deployments.values())


def _retarget(s: Settings, endpoint: str, ref: str) -> None:
    """The deployment record names the split's first arm with traffic (what `deployments list` shows as its model)."""
    from aimass import registry

    meta = _dir(s) / "deployments" / f"{endpoint}.json"
    m = json.loads(meta.read_text())
    info = registry.get(ref, settings=s)
    m["deployment"].update(model=info.name, version=info.version, requested=ref, dataset=info.dataset)
    write_private(meta, json.dumps(m, indent=2))


# The variable that marks a process as belonging to a home's serving cluster: stopping the cluster stops it.
CLUSTER_OWNER_ENV = "RAY_CLUSTER_OWNER"
# What every process of the serving cluster must run first (loopback-only Ray): for actors started beside it.
WORKER_SETUP_HOOK = "aimass.serving.hooks.loopback"


def connect(settings: Settings | None = None) -> dict:
    """Join this home's serving cluster (starting it if none runs); returns its state (address, proxy)."""
    from aimass.serving import _cluster

    return _cluster.connect(settings or default_settings())


def endpoints(*, settings: Settings | None = None) -> list[str]:
    """The endpoints aimass has deployed in this home (from its records: no cluster is contacted)."""
    return list(_saved(settings or default_settings()))


def check_deployed(endpoint: str, *, settings: Settings | None = None) -> str:
    """`endpoint` if this home has deployed it, else NotFoundError naming the ones it has."""
    s = settings or default_settings()
    check_endpoint(endpoint)
    have = endpoints(settings=s)
    if endpoint not in have:
        raise NotFoundError(f"no deployment named {endpoint!r}; deployed: {', '.join(have) or 'none'}")
    return endpoint


def deployments(*, settings: Settings | None = None) -> list[Deployment]:
    """Every deployment aimass made, with its live status from Serve."""
    s = settings or default_settings()
    saved = _saved(s)
    live = _live_status(s) if saved else {}
    return [Deployment(**{**m["deployment"], "status": live.get(e, "NOT_RUNNING")}) for e, m in saved.items()]


def _live_status(s: Settings) -> dict[str, str]:
    from aimass.serving import _cluster

    if not _cluster.running(s):  # listing must not start a cluster
        return {}
    from ray import serve

    _cluster.connect(s, serve_start=False)
    return {name: str(app.status.value if hasattr(app.status, "value") else app.status)
            for name, app in serve.status().applications.items()}


def show(endpoint: str, *, settings: Settings | None = None) -> Deployment:
    s = settings or default_settings()
    check_endpoint(endpoint)
    for d in deployments(settings=s):
        if d.endpoint == endpoint:
            return d
    raise NotFoundError(f"no deployment named {endpoint!r}")


def scaling(endpoint: str, *, settings: Settings | None = None, limit: int = 10) -> dict:
    """What Serve runs for `endpoint` now (per deployment: replicas, their states and the autoscaler's target,
    ongoing requests per replica, target_ongoing_requests, bounds and delays) and its last `limit` scaling
    decisions, newest first, as plain JSON values. Does not start a cluster."""
    from aimass.serving import _scaling

    s = settings or default_settings()
    check_deployed(endpoint, settings=s)
    return _scaling.report(s, endpoint, limit)


def delete(endpoint: str, *, settings: Settings | None = None) -> Deployment:
    from ray import serve

    from aimass.serving import _cluster, _traffic

    s = settings or default_settings()
    with _one_change(s, endpoint):
        d = show(endpoint, settings=s)
        experiment = _traffic.running_experiment(s, endpoint)
        if experiment:  # its record would outlive the endpoint, and block a new deployment of the name
            raise ConflictError(f"experiment {experiment} is running on {endpoint!r}: stop it first (aimass "
                                f"experiments stop {endpoint}); nothing was deleted")
        if d.status != "NOT_RUNNING":
            _cluster.connect(s)
            serve.delete(endpoint)
        (_dir(s) / "deployments" / f"{endpoint}.json").unlink(missing_ok=True)
        _traffic.retire(s, endpoint, "the endpoint was deleted")  # a new deployment of the name starts afresh
        _write_config(s)
        return d


def applications(*, settings: Settings | None = None) -> set[str]:
    """The names of the Serve applications running on this home's cluster now, deploys still starting included
    (no cluster: none, and none is started to find out)."""
    return set(_live_status(settings or default_settings()))


def running(*, settings: Settings | None = None) -> bool:
    """Whether this home's embedded serving cluster is running (nothing is started to find out)."""
    from aimass.serving import _cluster

    return _cluster.running(settings or default_settings())


def shutdown(*, settings: Settings | None = None) -> bool:
    """Stop all deployments and the embedded serving cluster, every process of it (deployment records are kept
    as NOT_RUNNING)."""
    from aimass.serving import _cluster

    return _cluster.stop(settings or default_settings())


def orphans() -> list[dict]:
    """Serving clusters running on this machine whose home is gone (`home` None: started by an aimass that did
    not record it), each with its temp dir, address, serve port and pids. `aimass doctor` lists them."""
    from aimass.serving import _cluster

    return _cluster.orphans()


def shutdown_orphans() -> list[dict]:
    """Stop every serving cluster whose home is known to be gone (`aimass deployments shutdown --orphans`)."""
    from aimass.serving import _cluster

    return _cluster.stop_orphans()


def create_key(name: str, role: str = "consumer", *, endpoints: list[str] | None = None,
               expires_in_s: float | None = None, settings: Settings | None = None) -> tuple[str, ApiKeyPublic]:
    """A new API key: (the key, shown only now; its public record). role: 'consumer' or 'admin'. A consumer key
    may be scoped to `endpoints` (any other answers 403) and end after `expires_in_s` seconds (then it is
    refused like a revoked one, 401). The endpoints need not be deployed yet."""
    import math

    if endpoints is not None:
        if isinstance(endpoints, str):  # a bare name would be scoped to its letters
            raise InvalidInputError("endpoints is a list of endpoint names")
        endpoints = [check_endpoint(e) for e in endpoints]
    if expires_in_s is not None and (isinstance(expires_in_s, bool) or not isinstance(expires_in_s, int | float)
                                     or not math.isfinite(expires_in_s) or not 0 < expires_in_s <= 100 * 365 * 86400):
        raise InvalidInputError(f"expires_in_s must be a positive number of seconds (100 years at most), got "
                                f"{expires_in_s!r}")
    return _keys.create(name, role, settings or default_settings(), endpoints=endpoints, expires_in_s=expires_in_s)


def list_keys(*, include_revoked: bool = False, settings: Settings | None = None) -> list[ApiKeyPublic]:
    return _keys.list_keys(settings or default_settings(), include_revoked)


def key_info(key: str, *, include_ended: bool = False, settings: Settings | None = None) -> ApiKeyPublic | None:
    """The record (name, id, role, scope) of a valid key, neither revoked nor expired; None for anything else.
    With `include_ended`, a revoked or expired key's too (its secret checked all the same), so that a caller can
    say which."""
    from aimass.serving import _keys

    row = _keys.Verifier(settings or default_settings(), ttl=0).record(key, include_ended)
    return ApiKeyPublic.model_validate(row) if row is not None else None


def revoke_key(key_id: str, *, settings: Settings | None = None) -> ApiKeyPublic:
    return _keys.revoke(key_id, settings or default_settings())


def key_expired(row: ApiKeyPublic) -> bool:
    """Whether a key's `expires_at` has passed (it is then refused like a revoked one)."""
    return _keys.expired(row)


def key_id_of(key: str) -> str:
    """The public id of a full API key (what may be logged or recorded), or `key` itself with any full key in it
    masked."""
    return _keys.key_id_of(key)


def build_bento(ref: str, *, settings: Settings | None = None) -> str:
    """`bentoml build` of the family's service from bentos/, pinned to a registered version; the Bento lands
    in the store under home/bentos. Returns its tag."""
    from aimass.serving._bento import build

    try:
        return build(ref, settings or default_settings())
    except (InvalidInputError, NotFoundError):
        raise
    except Exception as e:
        raise BackendError(f"bentoml build of {ref} failed: {e}") from None
