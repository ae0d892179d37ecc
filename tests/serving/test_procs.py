"""Which processes a serving cluster's shutdown takes: its own, found from the outside, never a person's
viewer of its logs."""
import subprocess
import sys
import time

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
