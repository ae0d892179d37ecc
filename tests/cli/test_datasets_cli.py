"""The CLI end to end, as a user runs it: the installed `aimass` entry point in a subprocess."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

AIMASS = shutil.which("aimass") or str(Path(os.sys.executable).with_name("aimass"))


def run(home: Path, *args: str, ok: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "AIMASS_HOME": str(home)}
    res = subprocess.run([AIMASS, *args], capture_output=True, text=True, env=env, cwd=home.parent)
    if ok:
        assert res.returncode == 0, res.stderr
    return res


def test_generate_register_show_versions_pull(tmp_path):
    home = tmp_path / "home"
    out = json.loads(run(home, "datasets", "generate-demo", str(tmp_path / "demo"), "--users", "40",
                         "--tracks", "100", "--json").stdout)
    reg = json.loads(run(home, "datasets", "register", "demo", out["interactions"], "--format", "csv",
                         "--items", out["items"], "--json").stdout)
    assert reg["ref"] == "demo@v1" and reg["n_users"] == 40 and reg["has_items_table"]
    shown = json.loads(run(home, "datasets", "show", "demo@v1", "--json").stdout)
    assert shown["content_hash"] == reg["content_hash"]
    assert [v["version"] for v in json.loads(run(home, "datasets", "versions", "demo", "--json").stdout)] == [1]
    assert [d["ref"] for d in json.loads(run(home, "datasets", "list", "--json").stdout)] == ["demo@v1"]
    pulled = json.loads(run(home, "datasets", "pull", "demo", "--out", str(tmp_path / "x"), "--json").stdout)
    assert pulled["files"] == ["interactions.parquet", "items.parquet", "meta.json"]
    human = run(home, "datasets", "list").stdout
    assert "demo@v1" in human and "N_USERS" in human


@pytest.mark.parametrize("args,code,message", [
    (("datasets", "register", "x", "/nonexistent/file.csv", "--format", "csv"), 2, "path does not exist"),
    (("datasets", "register", "x", "/etc/hostname", "--format", "nope"), 2, "unknown format 'nope'"),
    (("datasets", "register", "../x", "/etc/hostname", "--format", "csv"), 2, "invalid dataset name"),
    (("datasets", "show", "ghost@v3"), 3, "no dataset named 'ghost'"),
    (("datasets", "generate-demo", "/tmp/x", "--users", "0"), 2, "invalid demo size: users"),
])
def test_errors_are_one_clear_line_and_non_zero(tmp_path, args, code, message):
    res = run(tmp_path / "home", *args, ok=False)
    assert res.returncode == code
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not (tmp_path / "home" / "data-registry").exists()


def test_help_and_usage_errors_reach_the_terminal_not_the_log(tmp_path):
    # the console is set up once a command's options are parsed, so click's own output is not swallowed
    assert "--format" in run(tmp_path / "home", "datasets", "register", "--help").stdout
    res = run(tmp_path / "home", "datasets", "register", "x", ok=False)
    # one line, as every error (Typer drew a box of usage errors whose last line was its frame)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: Missing argument 'path'. (see aimass datasets register --help)"], res.stderr
    res = run(tmp_path / "home", "models", "promote", "recs", "abc", "--json", ok=False)
    assert res.returncode == 2 and res.stdout == "" and len(res.stderr.strip().splitlines()) == 1
    assert "Invalid value for 'version'" in res.stderr
    bare = run(tmp_path / "home", "datasets", ok=False)  # a group alone: its help, no error line
    assert "register" in bare.stdout and bare.stderr == ""


def test_an_unexpected_error_of_several_lines_is_one_line_with_the_log_named(tmp_path):
    env = {**os.environ, "AIMASS_HOME": str(tmp_path / "home"),
           "AIMASS_CATALOG_URL": "postgresql://u:pw@127.0.0.1:1/db"}  # nothing listens there
    res = subprocess.run([AIMASS, "datasets", "list", "--json"], env=env, capture_output=True, text=True,
                         timeout=120)
    lines = res.stderr.strip().splitlines()
    # a catalog database that cannot be reached is a failing component (5), not a bug (1)
    assert res.returncode == 5 and res.stdout == "" and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "(details: " in lines[0] and ":pw@" not in lines[0]


def test_doctor_reports_every_component(tmp_path):
    home = tmp_path / "home"
    # another home's leftover serving cluster on this machine is reported too, as its own row
    rep = [c for c in json.loads(run(home, "doctor", "--json").stdout)
           if c["component"] != "orphaned serving cluster"]
    assert [c["component"] for c in rep] == ["catalog", "data registry", "dvc remote", "mlflow store", "ray"]
    assert {c["status"] for c in rep} <= {"ok", "absent"}
    assert all(c["version"] and c["location"] for c in rep)


def test_doctor_never_prints_a_secret_in_a_url(tmp_path):
    """Credentials in the registry's git URL, the DVC remote or the MLflow URI are shown as ***, in the table
    and in --json, also in the error a failed clone reports."""
    secret = "s3cr3t-t0ken"
    env = {"AIMASS_DATA_REGISTRY": f"https://user:{secret}@127.0.0.1:1/registry.git",
           "AIMASS_DVC_REMOTE": f"s3://key:{secret}@bucket/prefix",
           "AIMASS_MLFLOW_TRACKING_URI": f"http://{secret}@127.0.0.1:1"}
    for args in (("doctor",), ("doctor", "--json")):
        res = run(tmp_path / "home", *args, ok=False, env=env)
        out = res.stdout + res.stderr
        assert secret not in out and "user:***@127.0.0.1:1" in out and "http://***@127.0.0.1:1" in out
    log = (tmp_path / "home" / "logs" / "aimass.log").read_text()
    assert secret not in log



def _doctor(home: Path, env: dict) -> tuple[int, dict]:
    res = run(home, "doctor", "--json", ok=False, env=env)
    return res.returncode, {r["component"]: r for r in json.loads(res.stdout)}


def test_doctor_errors_on_a_dvc_remote_whose_plugin_is_missing(tmp_path):
    """Every push to an s3:// remote fails without DVC's S3 plugin: an error naming the package, not `ok`."""
    import importlib.util

    if importlib.util.find_spec("dvc_s3"):
        pytest.skip("dvc-s3 is installed here")
    code, rep = _doctor(tmp_path / "home", {"AIMASS_DVC_REMOTE": "s3://bucket/prefix"})
    assert code == 1 and rep["dvc remote"]["status"] == "error", rep["dvc remote"]
    assert "dvc_s3" in rep["dvc remote"]["detail"] and "pip install dvc-s3" in rep["dvc remote"]["detail"]
    # a scheme DVC itself handles (dvc-http comes with dvc): its reachability is a push's to find out
    code, rep = _doctor(tmp_path / "home", {"AIMASS_DVC_REMOTE": "https://127.0.0.1:1/remote"})
    assert code == 0 and rep["dvc remote"]["status"] == "ok"
    assert "checked on push" in rep["dvc remote"]["detail"]


def test_doctor_asks_an_mlflow_tracking_server_for_its_health(tmp_path):
    """An http(s) tracking URI is asked GET /health: nothing listening is an error (exit 1), a server that
    answers 200 is ok; a file store is ok as a folder, absent when missing, an error as a file."""
    import http.server
    import threading

    from tests.conftest import free_port

    home = tmp_path / "home"
    code, rep = _doctor(home, {"AIMASS_MLFLOW_TRACKING_URI": f"http://u:pw@127.0.0.1:{free_port()}"})
    assert code == 1 and rep["mlflow store"]["status"] == "error", rep["mlflow store"]
    assert "GET /health" in rep["mlflow store"]["detail"] and ":pw@" not in json.dumps(rep)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        code, rep = _doctor(home, {"AIMASS_MLFLOW_TRACKING_URI": uri})
        assert code == 0 and rep["mlflow store"]["status"] == "ok", rep["mlflow store"]
        code, rep = _doctor(home, {"AIMASS_MLFLOW_TRACKING_URI": f"{uri}/elsewhere"})  # its /health: 404
        assert code == 1 and "HTTP 404" in rep["mlflow store"]["detail"], rep["mlflow store"]
    finally:
        server.shutdown()
        server.server_close()

    (tmp_path / "afile").write_text("")
    (tmp_path / "mlruns").mkdir()
    for uri, status in ((f"file://{tmp_path / 'afile'}", "error"), (str(tmp_path / "none"), "absent"),
                        (str(tmp_path / "mlruns"), "ok")):
        code, rep = _doctor(home, {"AIMASS_MLFLOW_TRACKING_URI": uri})
        assert rep["mlflow store"]["status"] == status and code == (status == "error"), (uri, rep["mlflow store"])


def test_doctor_errors_on_a_ray_address_where_nothing_listens(tmp_path):
    import socket

    from tests.conftest import free_port

    port = free_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        code, rep = _doctor(tmp_path / "home", {"AIMASS_RAY_ADDRESS": address})
        assert code == 1 and rep["ray"]["status"] == "error", rep["ray"]
        assert f"nothing answers at 127.0.0.1:{port}" in rep["ray"]["detail"]
    with socket.create_server(("127.0.0.1", 0)) as listener:  # something that takes a connection there
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        code, rep = _doctor(tmp_path / "home", {"AIMASS_RAY_ADDRESS": address})
    assert code == 0 and rep["ray"]["status"] == "ok", rep["ray"]

@pytest.mark.data
def test_real_datasets_counts_via_cli(tmp_path, shared_data):
    home = tmp_path / "home"
    ml = json.loads(run(home, "datasets", "register", "ml1m", str(shared_data / "ml-1m-seq"), "--format",
                        "ml1m-seq", "--json").stdout)
    assert (ml["n_users"], ml["n_items"]) == (6040, 3416)
    fm = json.loads(run(home, "datasets", "register", "lastfm", str(shared_data / "lastfm-2k"), "--format",
                        "lastfm", "--json").stdout)
    assert (fm["n_users"], fm["n_items"]) == (1892, 17632)
    rep = {c["component"]: c for c in json.loads(run(home, "doctor", "--json").stdout)}
    assert rep["data registry"]["status"] == "ok" and rep["data registry"]["detail"] == "2 tagged versions"


def test_register_maps_a_files_own_column_names(tmp_path):
    """MovieLens-25M's layout, as a user downloads it: the refusal names the mapping, which then registers."""
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.5,1100000000\n"
                                          "2,10,5.0,1100000120\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n10,Heat (1995),Action\n")
    args = ("datasets", "register", "ml25", str(tmp_path / "ratings.csv"), "--format", "csv", "--items",
            str(tmp_path / "movies.csv"))
    res = run(tmp_path / "home", *args, ok=False)
    assert res.returncode == 2 and "--columns userId=user_id,movieId=item_id,rating=value" in res.stderr
    reg = json.loads(run(tmp_path / "home", *args, "--columns", "userId=user_id,movieId=item_id,rating=value",
                         "--json").stdout)
    assert reg["ref"] == "ml25@v1" and reg["n_users"] == 2 and reg["n_items"] == 1 and reg["has_items_table"]
