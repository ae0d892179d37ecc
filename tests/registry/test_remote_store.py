"""The registry against a real MLflow tracking server (the scale-out store): a run's artifacts go to the server's
own artifact store, not to a folder of the machine that trained it, and a loaded version is copied once to this
machine and read from there after (MLflow alone copies into a new temporary folder at every load)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import aimass
from aimass.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    p = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
                          f"sqlite:///{root / 'db.sqlite'}", "--artifacts-destination", str(root / "artifacts")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert p.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", root / "artifacts"
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)


def test_a_tracking_server_keeps_the_artifacts_and_a_loaded_version_is_copied_once(server, tmp_path, monkeypatch):
    import tempfile

    uri, artifacts = server
    scratch = tmp_path / "tmp"  # where MLflow makes its temporary folders: nothing may be left there
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    s = Settings(home=tmp_path / "home", mlflow_tracking_uri=uri)
    inter, items = aimass.datasets.generate_demo(tmp_path / "demo", aimass.datasets.DemoConfig(users=60, tracks=120))
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    run = aimass.train("popularity", "demo", workers=0, progress=False, settings=s)
    v = aimass.models.register(run.run_id, "pop", settings=s)
    assert not (s.home / "mlartifacts").exists() and any(artifacts.rglob("MLmodel"))
    cache = s.home / "cache" / "models" / "pop"
    (cache / ".download-1-killed").mkdir(parents=True)  # a copy whose process was killed mid-way
    (cache / ".download-1-killed" / "MLmodel").write_text("half")
    first = aimass.models.load(v.ref, settings=s)
    assert sorted(p.name for p in cache.iterdir()) == ["1", "1.lock"]  # the copy, whole, and nothing half-made
    stamp = (cache / "1").stat().st_mtime_ns
    again = aimass.models.load(v.ref, settings=s)
    assert (cache / "1").stat().st_mtime_ns == stamp and sorted(p.name for p in cache.iterdir()) == ["1", "1.lock"]
    history = [np.array([1, 2])]
    assert np.array_equal(first.estimator.score(history), again.estimator.score(history))
    # a run's model not registered (what the DVC pipeline's evaluate stage reads): copied once too
    logged = [aimass.models.load_logged(run.model_uri, settings=s) for _ in range(2)]
    assert [p.name.startswith(".download-") for p in (s.home / "cache" / "logged").iterdir()] == [False, False]
    assert len(list((s.home / "cache" / "logged").glob("*.lock"))) == 1
    assert all(np.array_equal(m.estimator.score(history), first.estimator.score(history)) for m in logged)
    # a registered version's URI (an alias may move): read as `load` reads it, through the version's copy
    assert aimass.models.load_logged("models:/pop/1", settings=s).info.ref == "pop/1"
    assert len(list((s.home / "cache" / "logged").iterdir())) == 2  # no copy of it there
    assert list(scratch.iterdir()) == []
