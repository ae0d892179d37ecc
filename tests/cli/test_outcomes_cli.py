"""What a command reports about what happened: a console that died by itself, a deploy whose scheduler did
not start (--json), the quickstart's retrain line. In process, with the cluster and Streamlit replaced."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from aimass.errors import BackendError


def _invoke(tmp_path, *args: str):
    from aimass.cli import app

    return CliRunner().invoke(app, ["--home", str(tmp_path / "home"), *args])


@pytest.fixture
def fake_console(tmp_path, monkeypatch):
    """`aimass console` in the foreground over a child process standing in for Streamlit."""
    from aimass import dashboard

    stopped = []
    children = []

    def start(settings, port=None):
        code = "import time, sys; time.sleep(0.3); sys.exit(int(sys.argv[1]))"
        children.append(subprocess.Popen([sys.executable, "-c", code, str(start.exit_code)]))
        return {"url": "http://127.0.0.1:1", "pid": children[-1].pid, "log": str(tmp_path / "console.log")}

    monkeypatch.setattr(dashboard, "status", lambda settings: None)
    monkeypatch.setattr(dashboard, "start", start)
    monkeypatch.setattr(dashboard, "stop", lambda settings: stopped.append(True) or True)
    yield start, children, stopped
    for p in children:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_console_that_exits_by_itself_with_an_error_code_fails(tmp_path, fake_console):
    start, _, stopped = fake_console
    start.exit_code = 3
    r = _invoke(tmp_path, "console")
    assert isinstance(r.exception, BackendError), (r.exception, r.output)
    assert "exit code 3" in str(r.exception) and str(tmp_path / "console.log") in str(r.exception)
    assert stopped  # its record is cleaned up all the same


def test_a_console_stopped_by_a_signal_or_cleanly_exits_0(tmp_path, monkeypatch, fake_console):
    start, children, stopped = fake_console
    start.exit_code = 0
    assert _invoke(tmp_path, "console").exit_code == 0
    start.exit_code = 5  # killed before it can exit 5: a stop, as `aimass console --stop` or a kill does
    from aimass import dashboard

    real_start = dashboard.start

    def start_then_kill(settings, port=None):
        info = real_start(settings, port)
        children[-1].send_signal(signal.SIGKILL)
        return info

    monkeypatch.setattr(dashboard, "start", start_then_kill)
    r = _invoke(tmp_path, "console")
    assert r.exit_code == 0 and r.exception is None, (r.exception, r.output)
    assert len(stopped) == 2


def test_deploy_json_carries_the_scheduler_warning(tmp_path, monkeypatch):
    from aimass import retraining, serving
    from aimass.serving import Deployment

    d = Deployment(endpoint="recs", url="http://127.0.0.1:8000/recs", model="m", version=1, family="sasrec",
                   requested="m/1", dataset="demo@v1", proxy="http", min_replicas=1, max_replicas=2,
                   target_ongoing_requests=8.0, config="{}", created_at=datetime.now(UTC))
    monkeypatch.setattr(serving, "deploy", lambda *a, **k: d)

    def no_scheduler(settings):
        raise RuntimeError("the cluster refused the actor")

    monkeypatch.setattr(retraining, "start_in_cluster", no_scheduler)
    r = _invoke(tmp_path, "deploy", "m/1", "--endpoint", "recs", "--json")
    assert r.exit_code == 0, (r.exception, r.output)
    out = json.loads(r.stdout)
    assert out["endpoint"] == "recs" and out["scheduler"].startswith("warning: the drift/retrain scheduler did not")


@pytest.mark.parametrize("status,passed,says,never", [
    ("canary", True, "passed, canary", "refused"),
    ("promoted", True, "passed, promoted", "refused"),
    ("kept", False, "refused, champion kept", "passed"),
    # the gate passed but the canary did not start (or a split served): not a refusal
    ("challenger", True, "passed, not promoted", "refused"),
    ("challenger", False, "refused, champion kept", "passed"),  # --no-promote's record of a refusal
])
def test_the_quickstart_retrain_line_follows_the_result_status(status, passed, says, never):
    from aimass.cli._common import retrain_outcome
    from aimass.retraining import RetrainResult

    r = RetrainResult(endpoint="demo", reason="manual", started_at=datetime.now(UTC), status=status,
                      gate_passed=passed, promoted=status == "promoted",
                      canary="e1" if status == "canary" else None)
    line = retrain_outcome(r)
    assert line.startswith(says) and never not in line, line


def test_only_a_store_that_cannot_be_reached_is_exit_5_a_librarys_misuse_stays_a_bug():
    """Any error of MLflow's or SQLAlchemy's read as "a component is away" (5), which scripts retry: a misuse
    inside aimass (an IntegrityError, a bad parameter) is a bug (1)."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import IntegrityError, OperationalError

    from aimass.cli import _unavailable

    def raised(outer, inner=None):
        try:
            try:
                raise inner or outer
            except Exception as e:
                if inner is None:
                    raise
                raise outer from e
        except Exception as e:
            return e

    refused = OperationalError("SELECT 1", {}, Exception("connection refused"))
    assert _unavailable(raised(refused))
    assert _unavailable(raised(MlflowException("API request to http://127.0.0.1:1 failed with exception "
                                               "HTTPConnectionPool: Max retries exceeded")))
    assert _unavailable(raised(RuntimeError("wrapped"), ConnectionRefusedError(111, "refused")))
    assert not _unavailable(raised(IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))))
    misuse = MlflowException("Invalid value for parameter", error_code="INVALID_PARAMETER_VALUE")
    assert not _unavailable(raised(misuse))
    assert not _unavailable(raised(KeyError("x")))
