"""The operator console (the Streamlit app in dashboards/) as a process of a home: started on the settings'
host (127.0.0.1 by default), its pid and URL recorded in HOME/console.json, stopped by `stop` (and at once
when it fails to start). It reads everything through the SDK, with the home's settings.

    >>> info = aimass.dashboard.start(settings)     # {"url": "http://127.0.0.1:8501", "pid": ...}
    >>> aimass.dashboard.stop(settings)
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from aimass.errors import BackendError, ConflictError
from aimass.settings import Settings, write_private

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"


def app_path() -> Path:
    if not APP.is_file():
        raise BackendError(f"the console's app is missing ({APP}): the console runs from a checkout of aimass "
                           "installed with `pip install -e`")
    return APP


def _record(s: Settings) -> Path:
    return s.home / "console.json"


def status(settings: Settings) -> dict | None:
    """The running console of this home ({url, pid, port, started_at}), or None; a stale record is removed."""
    f = _record(settings)
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text())
        if psutil.Process(info["pid"]).create_time() == info["create_time"]:
            return info
    except (psutil.Error, ValueError, KeyError, TypeError):  # gone, or a record cut short: stale either way
        pass
    f.unlink(missing_ok=True)
    return None


def start(settings: Settings, *, port: int | None = None, timeout_s: float = 90.0) -> dict:
    """Start the console for this home, or return the one already running; raises ConflictError when the port
    is taken by another process, BackendError (with the log's tail) when Streamlit does not come up."""
    s = settings
    running = status(s)
    if running is not None:
        return running
    port = s.console_port if port is None else port
    app = app_path()
    with socket.socket() as sock:
        # as Streamlit's server binds: a port a stopped console's connections still hold in TIME_WAIT is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.host, port))
            sock.listen()
        except OSError:
            raise ConflictError(f"console port {port} on {s.host} is already in use: stop what holds it, or "
                                "choose another with --port or AIMASS_CONSOLE_PORT") from None
    log = s.home / "logs" / "console.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", s.host, "--server.port",
           str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer",
           # what the pages do not catch (app.py shows theirs with URLs' passwords masked): its type only
           "--client.showErrorDetails", "type", "--", "--home", str(s.home.resolve())]
    # these settings whole, not only the home: the caller's may name other stores than its environment does
    # (credentials through a file of this user's, not in the environment)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIMASS_")},
           **s.as_env(secrets_to=s.secrets_dir)}
    with open(log, "ab") as out:  # its own session: a Ctrl-C meant for the caller does not reach it
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    url = f"http://{s.host}:{port}"
    try:
        up = _healthy(proc, url, timeout_s)
    except BaseException:  # Ctrl-C while it starts: its own session never saw it, and no record names it yet
        _terminate(proc.pid)
        raise
    if not up:
        _terminate(proc.pid)
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise BackendError(f"the console did not start within {timeout_s:g} s: {' | '.join(tail) or 'no output'}")
    info = {"url": url, "pid": proc.pid, "port": port, "create_time": psutil.Process(proc.pid).create_time(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "log": str(log)}
    write_private(_record(s), json.dumps(info))  # whole or not at all: a record cut short blocked start and stop
    return info


def stop(settings: Settings) -> bool:
    """Stop this home's console; False when none was running."""
    info = status(settings)
    if info is None:
        return False
    _terminate(info["pid"])
    _record(settings).unlink(missing_ok=True)
    return True


def _healthy(proc: subprocess.Popen, url: str, timeout_s: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            # never through the environment's HTTP proxy: it cannot reach this machine's loopback
            if httpx.get(f"{url}/_stcore/health", timeout=2, trust_env=False).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def _terminate(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
