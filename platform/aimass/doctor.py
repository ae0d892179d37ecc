"""Health of every component of the embedded default (or its configured scale-out counterpart), and the
serving clusters on this machine that no home owns any more.

Statuses: `ok`, `absent` (created on first use; not an error), `warn` (works, but needs a person: an orphaned
serving cluster, which `aimass deployments shutdown --orphans` stops), `error` (misconfigured or broken)."""
from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

from sqlalchemy.engine import make_url

from aimass.settings import Settings, error_line, shown_url


def check(settings: Settings) -> list[dict]:
    reg = _registry_status(settings)
    return [_catalog(settings), _registry(settings, reg), _remote(settings, reg), _mlflow(settings),
            _ray(settings), *_orphans()]


def _row(component: str, location: str, ver: str, status: str, detail: str = "") -> dict:
    return {"component": component, "status": status, "version": ver, "location": location, "detail": detail}


def _catalog(s: Settings) -> dict:
    url = make_url(s.catalog)
    shown = shown_url(url.render_as_string(hide_password=True))  # a password in the query string too
    ver = f"sqlalchemy {version('sqlalchemy')}"
    if url.drivername.startswith("sqlite") and url.database and not Path(url.database).exists():
        return _row("catalog", shown, ver, "absent", "created on first use")
    try:
        from sqlmodel import func, select

        from aimass.catalog import DatasetVersion, session

        with session(s) as db:
            n = db.exec(select(func.count()).select_from(DatasetVersion)).one()
        return _row("catalog", shown, ver, "ok", f"{n} dataset versions")
    except Exception as e:
        return _row("catalog", shown, ver, "error", error_line(e))  # masked, and an empty message has a line


def _git_version() -> str:
    git = shutil.which("git")
    if not git:
        return "git missing"
    return subprocess.run([git, "--version"], capture_output=True, text=True).stdout.strip()


def _registry_status(s: Settings) -> dict | Exception:
    from aimass.datasets import registry_status

    try:
        return registry_status(settings=s)
    except Exception as e:
        return e


def _registry(s: Settings, reg: dict | Exception) -> dict:
    ver = f"dvc {version('dvc')}; {_git_version()}"
    where = str(s.registry_path) + (f" (clone of {shown_url(s.registry_origin)})" if s.registry_origin else "")
    if isinstance(reg, Exception):
        return _row("data registry", where, ver, "error", error_line(reg))
    if not reg["exists"]:
        return _row("data registry", where, ver, "absent", "created on first register")
    dirty = reg["uncommitted"]
    return _row("data registry", where, ver, "error" if dirty else "ok",
                f"uncommitted changes: {dirty[:60]}" if dirty else f"{reg['versions']} tagged versions")


def _remote(s: Settings, reg: dict | Exception) -> dict:
    url = (None if isinstance(reg, Exception) else reg["remote"]) or s.remote
    url, ver = shown_url(url), f"dvc {version('dvc')}"
    if "://" in url:
        return _row("dvc remote", url, ver, "ok", "object store (reachability checked on push)")
    p = Path(url)
    if not p.exists():
        return _row("dvc remote", url, ver, "absent", "created on first push")
    if not p.is_dir():
        return _row("dvc remote", url, ver, "error", "not a folder")
    n = sum(1 for f in p.rglob("*") if f.is_file())
    return _row("dvc remote", url, ver, "ok", f"{n} objects")


def _mlflow(s: Settings) -> dict:
    uri = shown_url(s.tracking_uri)
    ver = f"mlflow {version('mlflow')}"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return _row("mlflow store", uri, ver, "ok" if db.exists() else "absent",
                    "" if db.exists() else "created by the first training run")
    return _row("mlflow store", uri, ver, "ok", "tracking server (checked on first run)")


def _ray(s: Settings) -> dict:
    ver = f"ray {version('ray')}"
    if s.ray_address:
        return _row("ray", shown_url(s.ray_address), ver, "ok", "existing cluster")
    return _row("ray", f"local, {s.host} only", ver, "ok", "started on demand by training and serving")


def _orphans() -> list[dict]:
    """One row per serving cluster whose home is gone: nothing but its processes is left to find it by."""
    from aimass.serving import orphans

    ver = f"ray {version('ray')}"
    rows = []
    for o in orphans():
        pids = " ".join(map(str, o["pids"][:8])) + (" ..." if len(o["pids"]) > 8 else "")
        if o["home"]:
            detail = (f"home {o['home']} is gone; serve port {o['serve_port']}; pids {pids}; stop it with: "
                      "aimass deployments shutdown --orphans")
        else:
            detail = (f"started by an older aimass that did not record its home; pids {pids}; run `aimass "
                      "deployments shutdown` in its home, or end those pids")
        rows.append(_row("orphaned serving cluster", o["temp_dir"], ver, "warn", detail))
    return rows
