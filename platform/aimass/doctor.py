"""Health of every component of the embedded default (or its configured scale-out counterpart), and the
serving clusters on this machine that no home owns any more.

Statuses: `ok`, `absent` (created on first use; not an error), `warn` (works, but needs a person: an orphaned
serving cluster, which `aimass deployments shutdown --orphans` stops), `error` (misconfigured or broken).

Each check is quick: a DVC remote in an object store is checked for the DVC plugin its scheme needs (its
reachability only on push), an MLflow tracking server for an answer to GET /health and a Ray cluster for a TCP
connection, each within 2 s."""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from sqlalchemy.engine import make_url

from aimass.settings import Settings, error_line, shown_url

TIMEOUT_S = 2  # for each network check: a server that answers at all answers /health or a connect well within it


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
    raw = (None if isinstance(reg, Exception) else reg["remote"]) or s.remote
    url, ver = shown_url(raw), f"dvc {version('dvc')}"
    if "://" in raw:
        from dvc.fs import LocalFileSystem, get_cloud_fs, known_implementations

        scheme = raw.split("://", 1)[0].lower()
        try:  # DVC's own choice of a filesystem for the URL, as a push makes it
            cls = get_cloud_fs({}, url=raw)[0]
        except Exception as e:  # a plugin not installed (every push would fail), a scheme DVC does not know
            entry = known_implementations.get(scheme)
            if not (isinstance(e, ImportError) and entry):
                return _row("dvc remote", url, ver, "error", error_line(e))
            plugin = entry["class"].split(".", 1)[0]
            return _row("dvc remote", url, ver, "error", f"DVC's plugin for {scheme}:// remotes ({plugin}) is not "
                        f"installed: pip install {plugin.replace('_', '-')}")
        if issubclass(cls, LocalFileSystem):  # DVC keeps file:///x as the relative path "file:/x"
            return _row("dvc remote", url, ver, "error", f"DVC takes a {scheme}:// URL for a relative path (a "
                        f"folder named '{scheme}:' in the registry): give the folder's path instead")
        return _row("dvc remote", url, ver, "ok", f"{scheme} object store (reachability checked on push)")
    p = Path(raw)
    if not p.exists():
        return _row("dvc remote", url, ver, "absent", "created on first push")
    if not p.is_dir():
        return _row("dvc remote", url, ver, "error", "not a folder")
    n = sum(1 for f in p.rglob("*") if f.is_file())
    return _row("dvc remote", url, ver, "ok", f"{n} objects")


def _mlflow(s: Settings) -> dict:
    raw = s.tracking_uri
    uri = shown_url(raw)
    ver = f"mlflow {version('mlflow')}"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return _row("mlflow store", uri, ver, "ok" if db.exists() else "absent",
                    "" if db.exists() else "created by the first training run")
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme in ("http", "https"):
        return _row("mlflow store", uri, ver, *_mlflow_server(raw))
    if raw == "databricks":
        return _row("mlflow store", uri, ver, "ok", "Databricks workspace (not checked here: checked on first run)")
    if not scheme or raw.startswith("file:"):  # a folder of MLflow's file store
        folder = Path(url2pathname(urlsplit(raw).path)) if raw.startswith("file:") else Path(raw)
        if not folder.exists():
            return _row("mlflow store", uri, ver, "absent", "file store, created by the first training run")
        if not folder.is_dir():
            return _row("mlflow store", uri, ver, "error", "not a folder")
        return _row("mlflow store", uri, ver, "ok", "file store")
    return _row("mlflow store", uri, ver, "ok", f"{scheme} store (not checked here: checked on first run)")


def _mlflow_server(uri: str) -> tuple[str, str]:
    """(status, detail) of the tracking server at `uri`, by its GET /health."""
    import httpx

    url = uri.split("?", 1)[0].split("#", 1)[0].rstrip("/") + "/health"
    try:
        # a proxy of the environment would answer for (or refuse) an address of this machine
        with httpx.Client(timeout=TIMEOUT_S, trust_env=not _loopback(urlsplit(uri).hostname)) as c:
            code = c.get(url).status_code
    except Exception as e:
        return "error", f"tracking server does not answer GET /health: {error_line(e)}"
    if code != 200:
        return "error", f"tracking server answered GET /health with HTTP {code}"
    return "ok", "tracking server (answers GET /health)"


def _loopback(host: str | None) -> bool:
    if not host or host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def _ray(s: Settings) -> dict:
    ver = f"ray {version('ray')}"
    if not s.ray_address:
        return _row("ray", f"local, {s.host} only", ver, "ok", "started on demand by training and serving")
    shown, address = shown_url(s.ray_address), s.ray_address
    if address == "local":
        return _row("ray", shown, ver, "ok", "a new local cluster, started by each job (Ray's 'local')")
    if address == "auto":  # Ray resolves it as a job starts (RAY_ADDRESS, else this machine's running cluster)
        return _row("ray", shown, ver, "warn", "not checked: 'auto' is resolved by Ray when a job starts")
    from aimass._ray import host_port, listening

    where = host_port(address)
    if where is None:
        return _row("ray", shown, ver, "warn", "not checked: an address other than HOST:PORT or ray://HOST:PORT")
    if not listening(where, timeout=TIMEOUT_S):
        return _row("ray", shown, ver, "error", f"nothing answers at {where}: start the cluster, or unset "
                    "AIMASS_RAY_ADDRESS for the embedded one")
    return _row("ray", shown, ver, "ok", f"existing cluster (answers at {where})")


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
