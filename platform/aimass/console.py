"""What a person sees: one line per stage, one progress bar (with ETA) for long work, then the result.
Everything else (library logs, warnings, Ray worker output, subprocesses' chatter) goes to a log file in
the home, whose path is printed; ``--verbose`` shows it all as well.

An entry point (the CLI) calls :func:`setup` once. Until then (the SDK inside a user's own program) the
streams are the process's own and nothing is redirected.

    >>> console.stage("[3/6] training sasrec")         # one line, on the real stdout (never with --json)
    >>> with console.progress(total=100, desc="train") as bar: bar.update()
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from aimass.errors import BackendError

_ROTATE_BYTES = 20 * 2**20  # past this the log starts afresh; the previous one is kept as aimass.log.1

# Read by libraries in this process and inherited by every child (Ray workers, DVC, `ray start`), so they are
# set before any of those start; only an entry point may change the environment.
# MLflow retries a tracking server's request 7 times with a doubling wait: a server that is down kept a command
# silent for over 4 minutes before its error. Three retries still ride out a blip (2 + 4 + 8 s).
_QUIET_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"}


class _Console:
    real_out: IO[str] | None = None  # what the person reads (results, JSON); None: sys.stdout at the time
    real_err: IO[str] | None = None  # progress bars and one-line errors; None: sys.stderr at the time
    log_path: Path | None = None
    verbose: bool = True
    json: bool = False


_c = _Console()


def out() -> IO[str]:
    return _c.real_out or sys.stdout


def err() -> IO[str]:
    return _c.real_err or sys.stderr


def setup(home: Path, *, verbose: bool = False, as_json: bool = False) -> Path:
    """Send file descriptors 1 and 2 (so every library, subprocess and Ray worker that writes to them) to
    ``home/logs/aimass.log``, keeping the real terminal streams for :func:`stage`, :func:`progress` and
    :func:`result`. With ``verbose`` the log is also copied to the real stderr, never to stdout, so that with
    ``as_json`` stdout carries only the JSON. Idempotent; returns the log's path."""
    if _c.log_path is not None:
        return _c.log_path
    path = Path(home) / "logs" / "aimass.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > _ROTATE_BYTES:
        path.replace(path.with_name(path.name + ".1"))
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    sys.stdout.flush()
    sys.stderr.flush()
    # os.dup's copies are not inherited: only this process can write to the terminal directly, and a child
    # that outlives it cannot hold a caller's pipe open
    _c.real_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    _c.real_err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    _c.log_path, _c.verbose, _c.json = path, verbose, as_json
    sink = _tee(path, _c.real_err) if verbose else _append(path)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    os.close(sink)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)  # fd 2: the log file (and the terminal when verbose)
    handler.setFormatter(_Redacting("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    # a full API key on the command line (keys revoke KEY) is logged as its public id only
    from aimass.settings import masked_keys

    line = masked_keys(" ".join(sys.argv[1:]))
    logging.getLogger("aimass").info("aimass %s", line)
    return path


class _Redacting(logging.Formatter):
    """Records and their tracebacks with every URL's credential masked: a library's message or exception may
    quote a store URL whole (MLflow names the URL it called, password included)."""

    def format(self, record: logging.LogRecord) -> str:
        from aimass.settings import redacted

        return redacted(super().format(record))


def _append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def _tee(path: Path, terminal: IO[str]) -> int:
    """The write end of a pipe whose reader appends to the log and copies to ``terminal``."""
    os.close(_append(path))  # created owner-only here: tee would create it as the umask says
    read, write = os.pipe()
    # its own session: a Ctrl-C meant for aimass must not kill the reader while aimass still writes
    proc = subprocess.Popen(["tee", "-a", str(path)], stdin=read, stdout=terminal, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    os.close(read)
    atexit.register(_drain, proc, path)
    return write


def _drain(proc: subprocess.Popen, path: Path) -> None:
    """At exit: let tee finish copying before the shell prompt returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    sink = _append(path)  # this process's last writes go straight to the log, closing its ends of the pipe
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    os.close(sink)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass  # a detached child (a Ray process) still holds the pipe; tee carries on beside it


def log_path() -> Path | None:
    return _c.log_path


def stage(message: str) -> None:
    """One line for a person (nothing with --json); also in the log, to place what follows it."""
    if not _c.json:
        _say(message, out())
    logging.getLogger("aimass").info(message)


@contextmanager
def held(lock_file: Path, what: str, wait_s: float, busy: str) -> Iterator[None]:
    """`lock_file`'s lock for the block: when another process or thread holds it, one stage line ("waiting for
    `what` to end") and a wait of up to `wait_s` (none at 0), then ConflictError(`busy`). Re-entrant within a
    thread (a deploy that changes its endpoint's split holds the endpoint once). Only the wait is `busy`: a
    lock timeout from inside the block is another lock's, and says so itself."""
    from filelock import FileLock, Timeout

    from aimass.errors import ConflictError

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, is_singleton=True)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if wait_s <= 0:
                raise
            stage(f"waiting for {what} to end")
            lock.acquire(timeout=wait_s)
    except Timeout:
        raise ConflictError(busy) from None
    try:
        yield
    finally:
        lock.release()


def result(text: str) -> None:
    """The command's result (human lines or the JSON document) on the real stdout. One that cannot be written
    there (a full disk, a reader that closed the pipe) fails the command: a script must not take a created key
    or a registered version it never saw for a success (BackendError, exit 5)."""
    stream = out()
    try:
        print(text, file=stream, flush=True)
    except OSError as e:
        with contextlib.suppress(OSError, ValueError):  # what stays buffered is never written: Python's flush
            # at exit would fail again, loudly
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        cls = ReaderGone if isinstance(e, BrokenPipeError) else BackendError
        raise cls(f"the result could not be written to standard output ({e.strerror or e})") from None


class ReaderGone(BackendError):
    """The reader of stdout closed it (`aimass ... | head`): the command fails (exit 5) as for any lost result,
    and says so in the log alone, as Unix tools stay quiet when their reader has had enough."""


def error(message: str) -> None:
    _say(message, err())
    if _c.log_path is not None:  # before setup (a usage error) logging's last resort would print it twice
        logging.getLogger("aimass").error(message)


def _say(text: str, stream) -> None:
    try:
        print(text, file=stream, flush=True)
    except OSError:  # the terminal is gone (a hang-up: EIO): the log has the line, and cleanup must go on
        pass


def progress(total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False, **kw: Any):
    """A tqdm bar on the real stderr (ETA included when ``total`` is known); off with --json."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=err(), disable=disable or _c.json, dynamic_ncols=True,
                mininterval=0.5, leave=True, **kw)
