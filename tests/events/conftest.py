"""The event log on both of its stores: SQLite (the embedded default) and a throwaway Postgres cluster
(scale-out by URL), started from the machine's PostgreSQL server binaries on 127.0.0.1."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from aimass.settings import Settings
from tests.conftest import free_port


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture(scope="session")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql); `make test` installs them")
    # Not under pytest's tmp folder: it is private to this user, and the server may run as another one.
    root = Path(tempfile.mkdtemp(prefix="aimass-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own system user runs the cluster
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "aimass", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-h 127.0.0.1 -p {port} -k {root}", "start")
    try:
        yield f"postgresql+psycopg://aimass@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> Settings:
    """Settings whose catalog (and so the event log) is SQLite in the home, or a fresh Postgres database."""
    if request.param == "sqlite":
        return Settings(home=tmp_path / "home")
    url = request.getfixturevalue("postgres_url")
    import sqlalchemy

    name = f"t{time.time_ns()}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return Settings(home=tmp_path / "home", catalog_url=url.rsplit("/", 1)[0] + f"/{name}")
