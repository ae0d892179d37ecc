"""`aimass quickstart` (what `make demo` runs) end to end on a small demo: data -> training -> registry ->
int8 compression -> a served endpoint answering the printed curl."""
from __future__ import annotations

import json
import shlex
import socket
import subprocess

import pytest

from tests.cli.test_datasets_cli import run

pytestmark = pytest.mark.integration


def test_quickstart_trains_registers_promotes_compresses_and_serves(tmp_path, monkeypatch):
    home = tmp_path / "home"
    with socket.socket() as sock:  # not the default 8000: a demo may be running on this machine
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AIMASS_SERVE_PORT", str(sock.getsockname()[1]))
    try:
        _quickstart(home)
    finally:
        run(home, "deployments", "shutdown", ok=False)


def _quickstart(home):
    out = json.loads(run(home, "quickstart", "--users", "60", "--tracks", "120", "--time-budget", "0.2",
                         "--json").stdout)
    assert out["dataset"]["dataset"] == "demo@v1" and out["dataset"]["users"] == 60
    assert out["training"]["family"] == "sasrec" and 0 < out["training"]["test_ndcg@10"] <= 1
    assert out["promotion"]["promoted"] and out["promotion"]["alias"] == "champion", out["promotion"]
    parent, child = out["models"]
    assert (parent["version"], parent["method"], parent["aliases"]) == ("demo-sasrec/1", "original", "champion")
    assert (child["version"], child["method"]) == ("demo-sasrec/2", "int8")
    assert child["size_bytes"] < parent["size_bytes"]
    assert parent["test_ndcg@10"] == pytest.approx(out["training"]["test_ndcg@10"], abs=1e-4)
    # the printed curl works as printed, and the answer names the champion it came from
    answer = json.loads(subprocess.run(shlex.split(out["curl"]), capture_output=True, text=True,
                                       timeout=60).stdout)
    assert (answer["model"], answer["version"]) == ("demo-sasrec", 1) and len(answer["items"]) == 10
    denied = subprocess.run(shlex.split(out["curl"].replace(out["api_key"], "aimass_0_wrong")) + [
        "-o", "/dev/null", "-w", "%{http_code}"], capture_output=True, text=True, timeout=60).stdout
    assert denied == "401"
