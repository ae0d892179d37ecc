"""`aimass quickstart` (what `make demo` runs) end to end on a small demo: data -> training -> registry ->
int8 compression -> a served endpoint answering the printed curl -> feedback -> a drift report -> a retrain
and its gate decision, in at most 60 lines on the terminal."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import stop

pytestmark = pytest.mark.integration


def test_quickstart_trains_registers_promotes_compresses_and_serves(quickstart):
    home, res, ports = quickstart
    try:
        _quickstart(home, res, ports)
    finally:
        stop(home)  # the console's tests read this home's data, with nothing left running


def _quickstart(home, res, ports):
    import aimass
    from aimass.settings import Settings

    shown = res.stdout + res.stderr  # what a person sees; a progress bar redraws with \r, one line in the end
    assert shown.count("\n") <= 80, shown  # eleven stage lines, the summary, and `aimass traffic show demo`
    log = home / "logs" / "aimass.log"
    assert f"logs: {log}" in res.stdout.splitlines()
    assert "pid=" in log.read_text() and " mlflow." in log.read_text()  # Ray's and MLflow's output went there
    s = Settings(home=home)
    # its training jobs' local Ray stopped with it: each session left the temp folder, its logs kept in the home
    from aimass import _ray

    kept = sorted((home / "logs" / "ray").glob("session_2*"))
    assert kept and all((k / "raylet.out").exists() for k in kept), kept
    assert not [k.name for k in kept if (_ray.temp_folder(s) / k.name).exists()]
    assert aimass.datasets.get("demo@v1", settings=s).n_users == 60  # v2: the retrain folded new users in
    parent, child, challenger = aimass.models.versions("demo-sasrec", settings=s)
    assert (parent.version, parent.method, parent.aliases) == (1, "original", ["champion"])
    assert (child.version, child.method, child.parent_version) == (2, "int8", 1)
    assert child.metrics["size_bytes"] < child.metrics["parent_size_bytes"]
    assert child.metrics["parent_test_ndcg_at_10"] == pytest.approx(parent.metrics["test_ndcg_at_10"], abs=1e-4)
    assert f"test NDCG@10 {parent.metrics['test_ndcg_at_10']:.4f}" in res.stdout
    # the loop: feedback stored, a drift report written, a retrain on a new dataset version with its gate decision
    stats = aimass.events.stats("demo", settings=s)
    assert stats["events"] > 40 and stats["unjoined_request_ids"] == 0
    first = int(re.search(r"^feedback ([\d,]+) events stored", res.stdout, re.M)[1].replace(",", ""))
    second = int(re.search(r"on the split and ([\d,]+) more feedback events", res.stdout)[1].replace(",", ""))
    assert first + second == stats["events"] and second > 0
    # the printed report (the scheduler in the serving cluster may have written one of its own since)
    assert any(Path(r.html).exists() and r.html in res.stdout for r in aimass.monitoring.reports("demo", settings=s))
    assert challenger.dataset == "demo@v2" and challenger.parent_version is None
    assert aimass.datasets.lineage("demo@v2", settings=s).endpoint == "demo"
    assert f"-> demo@v2 -> challenger {challenger.ref}: gate" in res.stdout
    assert "scheduler: drift reports every 3600 s" in res.stdout  # started in the serving cluster
    split = aimass.serving.traffic("demo", settings=s).split  # it ends with a canary split, and shows it
    assert len(split.arms) == 2 and split.arms[1]["weight"] == 10 and split.state == "active"
    # with a shadow version that is on neither arm, which saw copies of the second burst's requests
    assert split.shadow not in (None, *[a["ref"] for a in split.arms]) and f"{split.shadow} gets a shadow" in res.stdout
    (shadowed,) = aimass.monitoring.shadow_comparison("demo", settings=s).to_dict("records")
    assert shadowed["shadow"] == split.shadow and shadowed["copies"] > 0 and 0 <= shadowed["mean_overlap"] <= 1
    assert "$ aimass traffic show demo" in res.stdout and f"experiment: {split.experiment_id}" in res.stdout
    # the printed curl works as printed, and the answer names the arm of the split it came from
    curl, searching = [line.strip() for line in res.stdout.splitlines() if line.strip().startswith("curl ")]
    assert "/recommend" in curl and "/search" in searching
    key = next(line.split()[2] for line in res.stdout.splitlines() if line.startswith("API key "))
    answer = json.loads(subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60).stdout)
    assert answer["arm"] in [a["ref"] for a in split.arms] and answer["experiment_id"] == split.experiment_id
    assert f"{answer['model']}/{answer['version']}" == answer["arm"] and len(answer["items"]) == 10
    denied = subprocess.run(shlex.split(curl.replace(key, "aimass_0_wrong")) + [
        "-o", "/dev/null", "-w", "%{http_code}"], capture_output=True, text=True, timeout=60).stdout
    assert denied == "401"
    # step 11: the search index, deployed, answers its printed curl; the demo's searches and clicks were logged
    found = json.loads(subprocess.run(shlex.split(searching), capture_output=True, text=True, timeout=60).stdout)
    assert found["items"] and found["model"] == "demo-search" and len(found["titles"]) == len(found["items"])
    assert "9 demo searches in 3 modes, 6 clicks on results" in res.stdout
    by_mode = aimass.monitoring.search_activity("search", settings=s).by_mode.set_index("mode")
    assert {"bm25", "semantic", "hybrid", "hybrid+personal"} <= set(by_mode.index) and by_mode["clicked"].sum() == 6
    # the console, left running with its URL printed (its pages: tests/dashboards)
    url = f"http://127.0.0.1:{ports['AIMASS_CONSOLE_PORT']}"
    # every command printed as this environment runs it: bare only where the shell finds this one
    assert re.search(rf"^console  {re.escape(url)} \(stop: \S*aimass console --stop\)$", res.stdout, re.M), res.stdout
    tool = re.search(r"^Stop serving: (\S*aimass) deployments shutdown$", res.stdout, re.M)[1]
    assert subprocess.run([tool, "--help"], cwd=home.parent, capture_output=True).returncode == 0
    assert subprocess.run(["curl", "-s", f"{url}/_stcore/health"], capture_output=True, text=True,
                          timeout=60).stdout == "ok"


def test_a_quickstart_interrupted_after_its_deploy_stops_the_serving_cluster_it_started(tmp_path):
    """Ctrl-C (or any failure) in the steps after the deploy: nothing the command started keeps running."""
    import os
    import signal
    import time

    from aimass import serving
    from aimass.settings import Settings
    from tests.cli.test_datasets_cli import AIMASS
    from tests.conftest import free_port

    home = tmp_path / "home"
    env = {**os.environ, "AIMASS_HOME": str(home), "AIMASS_SERVE_PORT": str(free_port()),
           "AIMASS_CONSOLE_PORT": str(free_port())}
    p = subprocess.Popen([AIMASS, "quickstart", "--users", "60", "--tracks", "120", "--time-budget", "0.2",
                          "--traffic-users", "40", "--retrain-budget", "0.1", "--auto-budget", "0", "--no-search",
                          "--family", "ease", "--workers", "0"],  # no Ray Train job: the deploy is what counts
                         env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.monotonic() + 600
    try:
        for line in p.stdout:  # the stage lines, one a step
            seen.append(line)
            if line.startswith("[7/12]") or time.monotonic() > deadline:
                break
        assert seen and seen[-1].startswith("[7/12]"), "".join(seen)
        assert serving.running(settings=Settings(home=home))
        p.send_signal(signal.SIGINT)
        rest = p.communicate(timeout=180)[0]
        assert p.returncode != 0
        assert "the quickstart was interrupted: stopped the serving cluster it started" in rest, rest
        assert not serving.running(settings=Settings(home=home))
        # the demo key it made was never shown: revoked, not left valid
        assert [k.name for k in serving.list_keys(settings=Settings(home=home))] == []
    finally:
        if p.poll() is None:
            p.kill()
        stop(home)


def test_a_serve_port_another_process_holds_is_refused_before_any_work(tmp_path):
    """It was found at step 6, the deploy, after minutes of training (and a registered dataset and model)."""
    import os
    import socket
    import subprocess

    from tests.cli.test_datasets_cli import AIMASS

    home = tmp_path / "home"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "AIMASS_HOME": str(home), "AIMASS_SERVE_PORT": str(port)}
        res = subprocess.run([AIMASS, "quickstart", "--users", "60", "--tracks", "120"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert res.returncode == 4 and "[1/12]" not in res.stdout, res.stdout + res.stderr
    assert f"port {port}" in res.stderr.strip().splitlines()[-1], res.stderr
    assert not (home / "data-registry").exists() and not (home / "mlflow.db").exists()
