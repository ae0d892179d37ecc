"""Starting or joining Ray, loopback-only by default (see ../shared/STACK.md: Ray binds to every interface
unless told otherwise)."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
from pathlib import Path

from aimass.errors import BackendError
from aimass.settings import Settings, private_dir, shown_url

log = logging.getLogger(__name__)
KEPT_SESSIONS = 3  # Ray's logs of the last sessions a home's Ray ran, kept in home/logs/<kind>

# Must be set before `ray` is first imported: it makes a local Ray bind to 127.0.0.1 on Linux.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray Train's controller polls its workers every 2 s and notices a finished job only at its next poll: a job
# on the demo returned 4.7 s after its worker's loop ended, 0.7-1.0 s with polls every 0.2 s. A poll is one
# small call per worker. Ray Train reads this only from the driver's environment and passes it on.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


_started: str | None = None  # the GCS address of the local Ray this process started, while it runs


def init(settings: Settings, num_cpus: int | None = None):
    """Join the configured cluster, or start a local loopback-only one; idempotent. A process attached to
    another cluster (a retrain reads its endpoint through the serving cluster first) leaves it: a job must not
    run among the serving replicas, sized by the serving head's CPU count (several times the machine's)."""
    global _started
    import ray

    if ray.is_initialized():
        if settings.ray_address or ray.get_runtime_context().gcs_address == _started:
            return ray
        ray.shutdown()
    if settings.ray_address:
        check_answers(settings)
        ray.init(address=settings.ray_address, logging_level="WARNING", log_to_driver=False)
    else:
        ray.init(
            _node_ip_address=settings.host,
            include_dashboard=False,
            num_cpus=num_cpus,
            logging_level="WARNING",
            _temp_dir=str(_short_tmp(settings)),
        )
        from ray._private import worker

        _started = ray.get_runtime_context().gcs_address
        # another job of this home may have removed the private folder (its last session) between our check and
        # Ray's makedirs, which then made it with the umask's mode: this user's alone again
        private_dir(temp_folder(settings).parent)
        session = Path(worker._global_node.get_session_dir_path())
        atexit.register(_retire_session, ray, session, settings.logs_dir / "ray")  # runs before Ray's own
    return ray


def answers(ray_address: str) -> bool:
    """Whether the configured cluster's address takes a connection: Ray's own join retries a GCS that does not
    answer for minutes, which a command, a listing or a console page must not. `auto` is Ray's to resolve."""
    where = host_port(ray_address)
    return where is None or listening(where, timeout=2)


def host_port(ray_address: str) -> str | None:
    """HOST:PORT of an address given as that or ray://[user:password@]HOST:PORT (never the credential); None
    for any other form (`auto`, `local`)."""
    where = ray_address.removeprefix("ray://").rpartition("@")[2].split("/")[0]
    host, _, port = where.rpartition(":")
    return where if host and port.isdigit() else None


def listening(address: str, timeout: float = 1) -> bool:
    """Whether HOST:PORT takes a TCP connection."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def check_answers(settings: Settings) -> None:
    if settings.ray_address and not answers(settings.ray_address):
        raise BackendError(f"the Ray cluster at {shown_url(settings.ray_address)} (AIMASS_RAY_ADDRESS) does not "
                           "answer: start it, or unset AIMASS_RAY_ADDRESS for the embedded one")


def keep_logs(sessions: list[Path], logs_to: Path) -> None:
    """Move the ``logs`` of Ray ``sessions`` (session folders) into ``logs_to``, keeping its last KEPT_SESSIONS."""
    for session in sessions:
        if (session / "logs").is_dir():
            dest = private_dir(logs_to) / session.name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(str(session / "logs"), dest)
    for old in sorted(logs_to.glob("session_2*"))[:-KEPT_SESSIONS] if logs_to.is_dir() else []:
        shutil.rmtree(old, ignore_errors=True)


def _retire_session(ray, session: Path, logs_to: Path) -> None:
    """At exit, this process's local Ray stops and its session leaves the temp folder, its logs kept in the home:
    nothing of a home outlives it there. Other jobs of the home have their own sessions beside it."""
    try:
        ray.shutdown()
        keep_logs([session], logs_to)
    except Exception as e:  # an exit must not fail over logs
        log.warning("Ray's logs of %s were not kept in %s: %s", session, logs_to, e)
    shutil.rmtree(session, ignore_errors=True)
    latest = session.parent / "session_latest"
    if latest.is_symlink() and not latest.exists():
        latest.unlink(missing_ok=True)
    try:
        session.parent.rmdir()  # the home's folders, once no other session is in them
        session.parent.parent.rmdir()
    except OSError:
        pass


def _short_tmp(settings: Settings) -> Path:
    folder = temp_folder(settings)
    private_dir(folder.parent)
    return folder


def temp_folder(settings: Settings) -> Path:
    """Where a training job's local Ray keeps its sessions while they run (none is left once its process exits).
    Ray's unix socket paths must stay under 107 bytes, so it cannot live deep in the home. Ray makes the folder
    it is given, and each session's, open to every user (0777, for shared machines): it is a subfolder of one
    of this user's alone (0700), which no other user can enter."""
    import hashlib
    import tempfile

    tag = hashlib.sha1(str(settings.home).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"aimass-ray-{tag}" / "r"


def version() -> str:
    from importlib.metadata import version as v

    return v("ray")
