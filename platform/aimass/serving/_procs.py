"""The processes of the embedded serving clusters, found from the outside: a cluster must be stoppable even
when the home that started it is gone and nothing but its processes is left.

A process belongs to the cluster of tag T (T = sha1(home)[:8]) when it carries `RAY_CLUSTER_OWNER=
aimass-serve-T` in its environment (set for `ray start`, so every process of the head inherits it: Ray's
client server too, which `ray start` detaches and which names nothing else of the head), when its command
line, a Python's, Ray's or HAProxy's, names the head's temp folder `<tmp>/aimass-serve-T` or HAProxy's
`<tmp>/ahp-T` in an option's value (`--temp-dir=...`: a person's `tail -f` of a log there is not the
cluster's), or when it descends from such a process. A GCS address is never used to find processes: once a
head is gone its port may serve another cluster. A small record in the temp folder maps T back to the home."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import tempfile
import time
from pathlib import Path

import psutil

from aimass.settings import private_dir

OWNER = "RAY_CLUSTER_OWNER"  # serving.CLUSTER_OWNER_ENV, its public name
RECORD = "aimass-home.json"
_TAG = re.compile(r"(?<=/)(?:aimass-serve|ahp)-([0-9a-f]{8})(?![0-9a-f])")
_OPTION = re.compile(r"-[\w-]+=")


def tag(home: Path) -> str:
    return hashlib.sha1(str(home).encode()).hexdigest()[:8]


def temp_dir(home: Path) -> Path:
    return temp_dir_of(tag(home))


def temp_dir_of(cluster_tag: str) -> Path:
    # Short and per home: Ray's socket paths must stay under 107 bytes; never shared with another cluster.
    return Path(tempfile.gettempdir()) / f"aimass-serve-{cluster_tag}"


def ray_dir(head_temp_dir: Path) -> Path:
    """Ray's own temp folder inside the head's: Ray makes the folder it is given, and each session's, open to
    every user (0777), so it lives in one of this user's alone (0700, made by write_record), which no other user
    can enter to read or swap its sockets."""
    return head_temp_dir / "r"


def haproxy_dir(home: Path) -> Path:
    return haproxy_dir_beside(temp_dir(home))


def haproxy_dir_beside(head_temp_dir: Path) -> Path:
    # HAProxy refuses a socket path over 97 bytes and Ray nests a 56-character folder under temp_dir.
    return head_temp_dir.with_name(head_temp_dir.name.replace("aimass-serve-", "ahp-", 1))


def write_record(home: Path, address: str, serve_port: int) -> None:
    tmp = private_dir(temp_dir(home))
    (tmp / RECORD).write_text(json.dumps({"home": str(home), "address": address, "serve_port": serve_port}))


def read_record(cluster_tag: str) -> dict:
    f = temp_dir_of(cluster_tag) / RECORD
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return {}


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def owner_env(home: Path) -> dict[str, str]:
    return {OWNER: f"aimass-serve-{tag(home)}"}


def _named(cmdline: list[str]) -> set[str]:
    """The tags a command line names in an option's value, when it is a Python's, Ray's or HAProxy's (whose
    config file Ray passes as `-f PATH`)."""
    if not cmdline:
        return set()
    exe = Path(cmdline[0])
    if not ("python" in exe.name or "haproxy" in exe.name or "ray" in exe.parts):
        return set()
    values = [arg for arg in cmdline[1:] if _OPTION.match(arg)]
    if "haproxy" in exe.name:
        values += [v for flag, v in zip(cmdline[1:], cmdline[2:], strict=False) if flag == "-f"]
    return {t for arg in values for t in _TAG.findall(arg)}


def _tags_of(p: psutil.Process) -> set[str]:
    found = _named(_cmdline(p))
    try:
        owner = p.environ().get(OWNER, "")
    except psutil.Error:
        owner = ""
    if owner.startswith("aimass-serve-"):
        found.add(owner.removeprefix("aimass-serve-"))
    return found


def members(cluster_tag: str) -> list[psutil.Process]:
    """Every live process of the cluster `cluster_tag`, descendants included."""
    me = os.getpid()
    roots = [p for p in psutil.process_iter() if p.pid != me and cluster_tag in _tags_of(p)]
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    found.pop(me, None)
    return list(found.values())


def terminate(procs: list[psutil.Process], timeout: float = 10) -> None:
    """Stop `procs` in the order of Ray's own `ray stop`, each group signalled once the one before it is gone
    (killed where it outlives its wait): first what holds or brings in requests (the replicas, aimass's actors,
    HAProxy: `timeout` for them to finish), then the raylet (the other workers share its fate), then the rest,
    the GCS last. Signalled all at once, they waited on each other: the GCS, Serve's controller and proxy
    outlived SIGTERM every time, and each stop took the whole 10 s before its kills (now about 6 s)."""
    deadline = time.monotonic() + timeout
    stages: list[list[psutil.Process]] = [[], [], [], []]
    for p in procs:
        stages[_stage(p)].append(p)
    for group in (g for g in stages if g):
        for p in group:
            _signal(p, signal.SIGTERM)
        # the later groups hold nothing of aimass's: a second each at least, whatever the first group took
        _, alive = psutil.wait_procs(group, timeout=max(deadline - time.monotonic(), 1.0))
        for p in alive:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)


def _stage(p: psutil.Process) -> int:
    """0: a Serve replica, an aimass actor (its class is private: ray::_ScalingWatcher) or HAProxy; 1: the
    raylet; 3: the GCS; 2: anything else (Ray's own actors and daemons, idle workers)."""
    try:
        name, first = p.name(), (_cmdline(p) or [""])[0]
    except psutil.Error:
        return 2
    if name == "haproxy" or first.startswith(("ray::ServeReplica", "ray::_")):
        return 0
    return {"raylet": 1, "gcs_server": 3}.get(name, 2)


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass


def running_tags() -> set[str]:
    """Tags of the serving clusters that have a process on this machine."""
    return {t for p in psutil.process_iter() for t in _tags_of(p)}


def cluster_of(pid: int) -> str | None:
    """The tag of the serving cluster `pid` belongs to (itself or an ancestor names it), if any."""
    try:
        chain = [psutil.Process(pid)]
        chain += chain[0].parents()
    except psutil.Error:
        return None
    for p in chain:
        found = _tags_of(p)
        if found:
            return min(found)
    return None


def listening_pids(port: int) -> list[int]:
    """PIDs with a TCP socket listening on `port` (those this user may see)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return []
    return sorted({c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid})


def describe(pid: int) -> str:
    try:
        return f"pid {pid} ({psutil.Process(pid).name()})"
    except psutil.Error:
        return f"pid {pid}"
