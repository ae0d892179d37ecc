"""Which processes a serving cluster's shutdown takes: its own, found from the outside, never a person's
viewer of its logs."""
import subprocess
import sys
import time

import psutil

from aimass.serving import _procs

TAG = "0badc0de"


def test_an_option_naming_the_temp_folder_counts_a_tail_of_its_log_does_not(tmp_path):
    folder = tmp_path / f"aimass-serve-{TAG}"
    folder.mkdir()
    (folder / "raylet.out").write_text("")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--temp-dir={folder}"])
    viewer = subprocess.Popen(["tail", "-f", str(folder / "raylet.out")])
    try:
        time.sleep(0.5)
        pids = {p.pid for p in _procs.members(TAG)}
        assert worker.pid in pids
        assert viewer.pid not in pids
    finally:
        for p in (worker, viewer):
            p.kill()
            p.wait()


def test_named_reads_option_values_of_python_ray_and_haproxy_only():
    ray = "/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet"
    assert _procs._named([ray, f"--temp_dir=/tmp/aimass-serve-{TAG}"]) == {TAG}
    assert _procs._named(["/usr/bin/haproxy", f"--cfg=/tmp/ahp-{TAG}/haproxy.cfg"]) == {TAG}
    assert _procs._named(["/venv/bin/haproxy", "-db", "-f", f"/tmp/ahp-{TAG}/haproxy.cfg"]) == {TAG}  # as Ray starts it
    assert _procs._named(["/usr/bin/tail", "-f", f"/tmp/ahp-{TAG}/haproxy.cfg"]) == set()
    assert _procs._named(["/usr/bin/less", f"--log-file=/tmp/aimass-serve-{TAG}/x"]) == set()
    assert _procs._named(["python3", f"/tmp/aimass-serve-{TAG}/x.py"]) == set()
    assert _procs._named([]) == set()


def test_a_cluster_stops_in_rays_order_and_what_outlives_its_wait_is_killed(tmp_path):
    """The replicas (and aimass's actors, HAProxy) first, then the raylet, then the rest, the GCS last; one that
    ignores SIGTERM is killed and holds the next group back only until its wait is over."""
    stopped = tmp_path / "stopped"
    started = []

    def start(exe: str, role: str, argv0: str | None = None, stubborn: bool = False) -> None:
        script = tmp_path / exe  # the kernel names a script's process after its file: `raylet`, `gcs_server`
        trap = "trap '' TERM" if stubborn else f"trap 'echo {role} >> {stopped}; exit 0' TERM"
        script.write_text(f"#!/bin/bash\n{trap}\necho > {tmp_path / role}.up\nwhile true; do sleep 0.05; done\n")
        script.chmod(0o755)
        cmd = ["bash", "-c", f'exec -a "{argv0}" bash {script}'] if argv0 else [str(script)]
        started.append(subprocess.Popen(cmd))

    start("gcs_server", "gcs")
    start("worker", "controller", argv0="ray::ServeController")
    start("stubborn", "stubborn", argv0="ray::IDLE", stubborn=True)
    start("raylet", "raylet")
    start("replica", "replica", argv0="ray::ServeReplica:shop:ingress")
    start("watcher", "watcher", argv0="ray::_ScalingWatcher")
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("*.up"))) < len(started):  # every trap set before any signal
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _procs.terminate([psutil.Process(p.pid) for p in started], timeout=2)
    order = stopped.read_text().split()
    assert sorted(order[:2]) == ["replica", "watcher"] and order[2:] == ["raylet", "controller", "gcs"], order
    assert all(p.poll() is not None for p in started)  # the stubborn one too: killed
