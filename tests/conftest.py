from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from aimass.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AIMASS_BENCH_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A fresh embedded home per test: its own catalog, data registry and DVC remote."""
    return Settings(home=tmp_path / "home")


def free_port() -> int:
    """A port for a server the test starts later, outside the kernel's ephemeral range (see free_port's doc)."""
    from aimass.serving._cluster import free_port as pick

    return pick()


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory):
    """`aimass quickstart` (what `make demo` runs) once per session, small: its home holds
    the real data of a demo job (a trained, compressed, deployed model, traffic, feedback, a drift report, a
    retrain, a canary split) for the quickstart's own test and the console's. Serving and the console run on
    free ports (a demo may be running on this machine), and are stopped at the end whoever used them."""
    from tests.cli.test_datasets_cli import run

    home = tmp_path_factory.mktemp("quickstart") / "home"
    ports = {"AIMASS_SERVE_PORT": str(free_port()), "AIMASS_CONSOLE_PORT": str(free_port())}
    try:
        res = run(home, "quickstart", "--users", "60", "--tracks", "120", "--time-budget", "0.1",
                  "--traffic-users", "40", "--retrain-budget", "0.05", "--auto-budget", "0", env=ports)
        yield home, res, ports
    finally:
        stop(home)


def stop(home: Path) -> None:
    """Stop what a quickstart left running in `home`: serving and the console."""
    from tests.cli.test_datasets_cli import run

    run(home, "deployments", "shutdown", ok=False)
    run(home, "console", "--stop", ok=False)


@pytest.fixture
def quickstart_home(quickstart) -> Path:
    return quickstart[0]


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "ml-1m-seq").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set AIMASS_BENCH_DATA)")
    return SHARED_DATA


def state_of(settings: Settings) -> dict:
    """Everything a registration can change: catalog rows, registry HEAD, tags and tracked files, remote."""
    from sqlmodel import select

    from aimass.catalog import DatasetVersion, session

    out: dict = {"catalog": None, "head": None, "tags": None, "files": None, "remote": None}
    db = settings.home / "catalog.db"
    if db.exists():
        with session(settings) as s:
            out["catalog"] = sorted((r.name, r.version, r.content_hash) for r in s.exec(select(DatasetVersion)))
    reg = settings.registry_path
    if (reg / ".git").exists():
        git = ["git", "-C", str(reg)]
        out["head"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        out["tags"] = subprocess.run([*git, "tag"], capture_output=True, text=True).stdout
        out["files"] = subprocess.run([*git, "status", "--porcelain", "--ignored"], capture_output=True,
                                      text=True).stdout
    remote = Path(settings.remote)
    if remote.exists():
        out["remote"] = sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file())
    return out
