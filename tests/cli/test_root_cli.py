"""What every command shares (aimass.cli's root): settings refused before any work, errors that never show a
credential, options checked at the boundary."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.cli.test_datasets_cli import AIMASS, run
from tests.conftest import free_port


def _one_error(res, code: int, *needles: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def test_a_credential_in_a_libraries_error_is_masked_on_the_terminal_and_in_the_log(tmp_path):
    home = tmp_path / "home"
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"  # nothing listens: MLflow's error quotes the URL
    res = run(home, "runs", "list", ok=False,
              env={"AIMASS_MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    line = _one_error(res, 5, "alice:***@127.0.0.1")  # a store that cannot be reached: a failing component
    assert "s3cret" not in res.stderr + res.stdout and "s3cret" not in (home / "logs" / "aimass.log").read_text()
    assert "details: " in line  # the traceback is in the log, masked too


def test_doctor_masks_the_ray_address_credential(tmp_path):
    res = run(tmp_path / "home", "doctor", "--json", ok=False,
              env={"AIMASS_RAY_ADDRESS": "ray://alice:s3cret@10.0.0.1:10001"})
    rows = {r["component"]: r for r in json.loads(res.stdout)}
    assert rows["ray"]["location"] == "ray://alice:***@10.0.0.1:10001" and "s3cret" not in res.stdout


@pytest.mark.parametrize("env,needles", [
    ({"AIMASS_SERVE_PROT": "9000"}, ("AIMASS_SERVE_PROT", "did you mean AIMASS_SERVE_PORT")),
    ({"AIMASS_CATALOG_URL": "notaurl"}, ("catalog_url", "not a SQLAlchemy URL")),
])
def test_bad_settings_are_refused_before_any_state_is_made(tmp_path, env, needles):
    res = run(tmp_path / "home", "datasets", "list", ok=False, env=env)
    assert res.returncode == 2 and all(n in res.stderr for n in needles), res.stderr
    assert "notaurl" not in res.stderr  # a URL's value is never echoed: it may hold a password
    assert not (tmp_path / "home").exists()


def test_a_home_that_is_a_file_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "f").write_text("")
    for home in (tmp_path / "f", tmp_path / "f" / "below"):
        res = run(tmp_path / "home", "--home", str(home), "keys", "list", "--json", ok=False)
        _one_error(res, 2, "is a file")
        assert res.stdout == ""


@pytest.mark.parametrize("args,needles", [
    (("console", "--port", "70000"), ("--port",)),
    (("console", "--port", "0"), ("--port",)),
    (("models", "compress", "m", "1", "-m", "int8", "-o", "foo"), ("--option wants key=value",)),
])
def test_options_are_checked_at_the_boundary(tmp_path, args, needles):
    res = run(tmp_path / "home", *args, ok=False)
    assert res.returncode == 2 and all(n in res.stderr for n in needles), res.stderr


@pytest.mark.parametrize("args,needles", [
    (("--users", "5"), ("invalid demo size: users",)),
    (("--family", "nosuch"), ("unknown model family 'nosuch'",)),
    (("--family", "itemknn"), ("compression method 'int8' does not apply to family 'itemknn'",)),
    (("--workers", "-1"), ("workers must be 0",)),
    (("--time-budget", "0"), ("--time-budget must be a positive",)),
    (("--retrain-budget", "nan"), ("--retrain-budget must be a positive",)),
    (("--traffic-users", "0"), ("--traffic-users",)),
    (("--auto-budget", "inf"), ("--auto-budget must be 0",)),
])
def test_quickstart_refuses_a_bad_option_before_step_one(tmp_path, args, needles):
    res = run(tmp_path / "home", "quickstart", *args, ok=False)
    assert res.returncode == 2 and all(n in res.stderr for n in needles), res.stderr
    assert "[1/12]" not in res.stdout + res.stderr
    assert not (tmp_path / "home" / "data-registry").exists() and not (tmp_path / "home" / "demo-data").exists()


def test_json_output_holds_no_nan_or_infinity(capsys):
    """A diverged run's loss is NaN in MLflow: `--json` writes null, which every JSON parser reads."""
    from pydantic import BaseModel

    from aimass.cli._common import emit

    class Run(BaseModel):
        metrics: dict[str, float]

    emit({"run": Run(metrics={"loss": float("nan"), "ndcg": 0.5}), "history": [float("inf"), 1.0]}, True)
    out = capsys.readouterr().out
    parsed = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    assert parsed == {"run": {"metrics": {"loss": None, "ndcg": 0.5}}, "history": [None, 1.0]}


def test_a_reader_that_closed_the_pipe_fails_the_command_quietly(tmp_path):
    """`aimass ... | head`: the result was not all read, so the exit code says it failed (a script must not take
    an unseen result for a success), but the terminal gets no error line for what the reader chose; the log
    has it."""
    read, write = os.pipe()
    os.close(read)  # the reader has had enough before the first line
    try:
        res = subprocess.run([AIMASS, "datasets", "list"], stdout=write, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "AIMASS_HOME": str(tmp_path / "home")}, timeout=120)
    finally:
        os.close(write)
    assert res.returncode == 5 and res.stderr == "", res.stderr
    assert "could not be written to standard output" in (tmp_path / "home" / "logs" / "aimass.log").read_text()
