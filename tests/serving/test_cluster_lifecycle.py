"""The serving cluster leaves nothing behind: a failed deploy stops the head it started, `shutdown` stops every
process of the cluster (Ray's client server too), a cluster whose home was deleted is listed by `aimass
doctor` and stopped by `aimass deployments shutdown --orphans`, and a serve port that another home holds is
refused before anything starts, naming that home."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest

from aimass import serving
from aimass.errors import BackendError, ConflictError
from aimass.serving import _cluster, _procs
from aimass.settings import Settings
from tests.serving.conftest import cluster_of, cluster_processes, free_port, sharing

pytestmark = pytest.mark.integration
AIMASS = str(Path(sys.executable).with_name("aimass"))


def _cli(*args: str, settings: Settings) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIMASS_HOME": str(settings.home), "AIMASS_SERVE_PORT": str(settings.serve_port)}
    for k, v in (("CATALOG_URL", settings.catalog_url), ("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
                 ("DATA_REGISTRY", settings.data_registry), ("DVC_REMOTE", settings.dvc_remote)):
        if v:
            env[f"AIMASS_{k}"] = v
    return subprocess.run([AIMASS, *args], env=env, capture_output=True, text=True, timeout=300)


def _fail_serve_run(monkeypatch) -> None:
    from ray import serve

    def boom(*args, **kwargs):
        raise RuntimeError("replica failed to start (injected)")

    monkeypatch.setattr(serve, "run", boom)


def test_a_failed_deploy_stops_the_cluster_it_started_and_only_that(served, tmp_path, monkeypatch):
    other = sharing(served.settings, tmp_path / "failing", serve_port=free_port())
    _fail_serve_run(monkeypatch)
    with pytest.raises(BackendError, match="injected"):
        serving.deploy("recs/1", "doomed", settings=other)
    # the failed head was really started, then stopped: its session's logs moved into the home, and nothing of it
    # is left in the temp folder
    assert list((other.logs_dir / "serve").glob("session_2*/gcs_server.err"))
    assert not _procs.temp_dir(other.home).exists() and not _procs.haproxy_dir(other.home).exists()
    assert not _cluster.state_file(other).exists()
    assert cluster_processes(str(_procs.temp_dir(other.home)), "no address") == []
    # A head that was running before the deploy is left running.
    with pytest.raises(BackendError, match="injected"):
        serving.deploy("recs/1", "doomed", settings=served.settings)
    assert _cluster.running(served.settings)
    assert served.post("recs", "/recommend", {"user_id": 1}).status_code == 200


def test_shutdown_leaves_no_process_of_the_cluster(tmp_path):
    s = Settings(home=tmp_path / "home", serve_port=free_port())
    _cluster.ensure(s)  # a bare head: what `shutdown` must stop is Ray's, not Serve's
    temp_dir, address = cluster_of(s)
    before = cluster_processes(temp_dir, address)
    assert any("ray.util.client.server" in p for p in before), before  # the one that used to survive
    r = _cli("deployments", "shutdown", "--json", settings=s)
    assert r.returncode == 0 and json.loads(r.stdout) == {"stopped": True}, r.stderr
    assert cluster_processes(temp_dir, address) == []
    assert not any(psutil.pid_exists(int(p.split()[0])) for p in before)
    # nothing of the home is left in the temp folder; Ray's logs of the session moved into the home
    assert not Path(temp_dir).exists() and not _procs.haproxy_dir(s.home).exists()
    kept = list((s.logs_dir / "serve").glob("session_2*/gcs_server.err"))
    assert len(kept) == 1, sorted(p.name for p in (s.logs_dir / "serve").rglob("*"))


def test_doctor_lists_a_cluster_whose_home_is_gone_and_shutdown_orphans_stops_it(tmp_path):
    gone = Settings(home=tmp_path / "gone", serve_port=free_port())
    _cluster.ensure(gone)
    temp_dir, address = cluster_of(gone)
    shutil.rmtree(gone.home)
    elsewhere = Settings(home=tmp_path / "elsewhere")
    r = _cli("doctor", "--json", settings=elsewhere)
    rows = [c for c in json.loads(r.stdout) if c["component"] == "orphaned serving cluster"]
    mine = [c for c in rows if c["location"] == temp_dir]
    assert len(mine) == 1 and str(gone.home) in mine[0]["detail"], rows
    assert mine[0]["status"] == "warn" and "aimass deployments shutdown --orphans" in mine[0]["detail"]
    r = _cli("deployments", "shutdown", "--orphans", "--json", settings=elsewhere)
    assert r.returncode == 0, r.stderr
    assert str(gone.home) in [o["home"] for o in json.loads(r.stdout)["stopped"]]
    assert cluster_processes(temp_dir, address) == []
    assert not Path(temp_dir).exists() and not _procs.haproxy_dir(gone.home).exists()
    assert all(c["location"] != temp_dir for c in json.loads(_cli("doctor", "--json", settings=elsewhere).stdout))


def test_a_serve_port_held_by_another_home_is_refused_naming_it(served, tmp_path):
    other = sharing(served.settings, tmp_path / "second", serve_port=served.settings.serve_port)
    r = _cli("deploy", "recs/1", "--endpoint", "second", settings=other)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == ConflictError.exit_code and lines[-1].startswith("error: "), r.stderr
    assert f"serve port {other.serve_port}" in lines[-1] and str(served.settings.home) in lines[-1]
    assert "AIMASS_SERVE_PORT" in lines[-1] and "[ALERT]" not in r.stderr
    assert not _cluster.state_file(other).exists()  # nothing was started
    assert cluster_processes(str(_procs.temp_dir(other.home)), "no address") == []
    assert httpx.get(served.urls["recs"] + "/healthz", timeout=10).status_code == 200


def test_a_serve_port_held_by_any_other_process_is_refused_naming_it(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        s = Settings(home=tmp_path / "home", serve_port=sock.getsockname()[1])
        with pytest.raises(ConflictError) as e:
            _cluster.check_port(s)
    assert f"pid {os.getpid()} ({psutil.Process().name()})" in str(e.value)
    assert "AIMASS_SERVE_PORT" in str(e.value) and "\n" not in str(e.value)


def test_ports_picked_for_later_binds_are_not_the_kernels_to_hand_out():
    """A port chosen now and bound at the first deploy must not be one any outgoing connection may take first."""
    lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    outside = {p for p in range(20000, 32768) if not lo <= p <= hi}  # empty where the kernel hands out all ports
    picked = [_cluster.free_port() for _ in range(200)]
    ports = set(picked)
    assert len(ports) == len(picked)  # a head's start asks for several before it binds any
    for port in ports:
        assert port in outside or not outside, port
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # and it is free


def test_a_stopped_heads_folders_go_and_its_last_sessions_logs_stay(tmp_path, monkeypatch):
    """_retire_temp on folders laid out as Ray and HAProxy leave them (no head needed): the head's and HAProxy's
    folders go; the session's logs join the home's, of which the last 3 sessions stay."""
    head = tmp_path / "aimass-serve-0123abcd"
    ray = _procs.ray_dir(head)
    (ray / "session_2026-12-05_10-00-00_1" / "logs").mkdir(parents=True)
    (ray / "session_2026-12-05_10-00-00_1" / "logs" / "gcs_server.err").write_text("the head's log")
    (ray / "session_latest").symlink_to(ray / "session_2026-12-05_10-00-00_1")
    (tmp_path / "ahp-0123abcd").mkdir()
    (tmp_path / "ahp-0123abcd" / "haproxy.cfg").write_text("global")
    logs_to = tmp_path / "home" / "logs" / "serve"
    for day in ("01", "02", "03"):  # three earlier stops
        (logs_to / f"session_2026-12-{day}_10-00-00_1").mkdir(parents=True)
    _cluster._retire_temp(head, logs_to)
    assert not head.exists() and not (tmp_path / "ahp-0123abcd").exists()
    assert not list(tmp_path.glob("aimass-serve-*"))  # the renamed folder went too
    assert sorted(p.name for p in logs_to.iterdir()) == [
        "session_2026-12-02_10-00-00_1", "session_2026-12-03_10-00-00_1", "session_2026-12-05_10-00-00_1"]
    assert (logs_to / "session_2026-12-05_10-00-00_1" / "gcs_server.err").read_text() == "the head's log"
    # logs that cannot be kept (the home's folder unwritable) are logged, and the folders still go; here a head
    # started before Ray's folder moved into the head's own, its sessions at the top
    head.mkdir()
    (head / "session_2026-12-06_10-00-00_1" / "logs").mkdir(parents=True)
    monkeypatch.setattr(_cluster.shutil, "move", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    _cluster._retire_temp(head, logs_to)
    assert not head.exists() and len(list(logs_to.iterdir())) == 3


def test_a_configured_cluster_that_does_not_answer_is_said_at_once(tmp_path):
    """With AIMASS_RAY_ADDRESS naming a cluster that is down, Ray's own join retries for minutes: a listing says
    its deployments are not running, and a command that needs the cluster fails naming it."""
    s = Settings(home=tmp_path / "home", ray_address=f"127.0.0.1:{free_port()}")
    assert not _cluster.running(s)
    d = serving.Deployment(endpoint="recs", url="http://127.0.0.1:1/recs", model="recs", version=1,
                           family="itemknn", requested="recs/1", dataset="demo@v1", proxy="default", min_replicas=1,
                           max_replicas=1, target_ongoing_requests=8.0, config="",
                           created_at=datetime.now(UTC))
    folder = s.home / "serve" / "deployments"  # what `aimass deploy` recorded when the cluster ran
    folder.mkdir(parents=True)
    (folder / "recs.json").write_text(json.dumps({"deployment": d.model_dump(mode="json"), "args": {}}))
    assert [x.status for x in serving.deployments(settings=s)] == ["NOT_RUNNING"]
    with pytest.raises(BackendError, match="does not answer"):
        _cluster.connect(s)
    with pytest.raises(BackendError, match="does not answer"):
        serving.shutdown(settings=s)
    import ray

    assert not ray.is_initialized()
