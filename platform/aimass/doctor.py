"""Health of every component of the embedded default (or its configured scale-out counterpart).

Statuses: `ok`, `absent` (created on first use; not an error), `error` (misconfigured or broken)."""
from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

from sqlalchemy.engine import make_url

from aimass.settings import Settings


def check(settings: Settings) -> list[dict]:
    return [_catalog(settings), _registry(settings), _remote(settings), _mlflow(settings), _ray(settings)]


def _row(component: str, location: str, ver: str, status: str, detail: str = "") -> dict:
    return {"component": component, "status": status, "version": ver, "location": location, "detail": detail}


def _catalog(s: Settings) -> dict:
    url = make_url(s.catalog)
    shown = url.render_as_string(hide_password=True)
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
        return _row("catalog", shown, ver, "error", str(e).splitlines()[0])


def _git_version() -> str:
    git = shutil.which("git")
    if not git:
        return "git missing"
    return subprocess.run([git, "--version"], capture_output=True, text=True).stdout.strip()


def _registry(s: Settings) -> dict:
    from aimass.datasets._registry import DataRegistry, git

    reg = DataRegistry(s)
    ver = f"dvc {version('dvc')}; {_git_version()}"
    where = str(reg.path) + (f" (clone of {reg.origin})" if reg.origin else "")
    if not reg.exists():
        return _row("data registry", where, ver, "absent", "created on first register")
    try:
        tags = git(reg.path, "tag", "--list").split()
        dirty = git(reg.path, "status", "--porcelain")
        return _row("data registry", where, ver, "error" if dirty else "ok",
                    f"uncommitted changes: {dirty[:60]}" if dirty else f"{len(tags)} tagged versions")
    except Exception as e:
        return _row("data registry", where, ver, "error", str(e).splitlines()[0])


def _remote(s: Settings) -> dict:
    from aimass.datasets._registry import DataRegistry

    url = DataRegistry(s).remote_url() or s.remote
    ver = f"dvc {version('dvc')}"
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
    uri = s.tracking_uri
    ver = f"mlflow {version('mlflow')}"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return _row("mlflow store", uri, ver, "ok" if db.exists() else "absent",
                    "" if db.exists() else "created by the first training run")
    return _row("mlflow store", uri, ver, "ok", "tracking server (checked on first run)")


def _ray(s: Settings) -> dict:
    ver = f"ray {version('ray')}"
    if s.ray_address:
        return _row("ray", s.ray_address, ver, "ok", "existing cluster")
    return _row("ray", f"local, {s.host} only", ver, "ok", "started on demand by training and serving")
