"""Acknowledged means durable: while client loops on 127.0.0.1 post events (retrying a failed request with
the same event_id, as a client should), the serving replica is SIGKILLed, and in a second case every
process of the Ray head; after the restart every acknowledged event is stored exactly once: 0 lost, 0
twice. Each case runs its own cluster (a home sharing the served catalog), so the package's cluster lives on."""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import httpx
import psutil
import pytest

from aimass import events, serving
from aimass.serving import _procs
from tests.serving.conftest import free_port, sharing

pytestmark = pytest.mark.integration
WORKERS, PER_WORKER = 4, 150


class Posters:
    """WORKERS loops of PER_WORKER events each; a request that fails (connection refused, reset, 5xx) is
    retried with the same event_id until it is acknowledged or the deadline passes."""

    def __init__(self, url: str, key: str, deadline_s: float = 240):
        self.url, self.key, self.deadline = url, key, time.monotonic() + deadline_s
        self.run = uuid.uuid4().hex[:8]
        self.acked: list[str] = []
        self.failures = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(w,), daemon=True) for w in range(WORKERS)]
        for t in self.threads:
            t.start()

    def _loop(self, w: int) -> None:
        with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {self.key}"}) as c:
            for i in range(PER_WORKER):
                e = {"event_id": f"{self.run}-{w}-{i}", "user_id": 1 + i % 50, "item_id": 1 + (w * i) % 100,
                     "type": "play", "timestamp": time.time(), "value": 30}
                while time.monotonic() < self.deadline:
                    try:
                        r = c.post(self.url + "/feedback", json=e)
                        if r.status_code == 200:
                            with self.lock:
                                self.acked.append(e["event_id"])
                            break
                        # While a restarted app deploys, Serve's proxy answers 404 for its route: retry. A refusal
                        # of the event itself would be a bug of this test or of the service.
                        assert r.status_code not in (400, 401, 403, 413, 415), r.text
                    except httpx.TransportError:
                        pass
                    with self.lock:
                        self.failures += 1
                    time.sleep(0.1)

    def wait_for(self, n: int) -> None:
        while len(self.acked) < n and time.monotonic() < self.deadline:
            time.sleep(0.05)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=max(1.0, self.deadline - time.monotonic()))


def _check(s, endpoint: str, posters: Posters) -> None:
    stored = events.EventLog(s).frame(endpoint)
    mine = stored[stored["event_id"].str.startswith(posters.run)]
    assert len(posters.acked) == WORKERS * PER_WORKER, f"only {len(posters.acked)} acknowledged"
    counts = mine["event_id"].value_counts()
    assert set(posters.acked) <= set(counts.index), "an acknowledged event is lost"
    assert counts.max() == 1, "an event is stored twice"


@pytest.fixture(scope="module")
def durable(served, tmp_path_factory):
    """One endpoint on a serving cluster of its own (the package's models): first its replica is killed, then
    its whole head (the tests run in this order)."""
    s = sharing(served.settings, tmp_path_factory.mktemp("durable") / "home", serve_port=free_port())
    try:
        d = serving.deploy("recs@champion", "durable", min_replicas=1, max_replicas=1, settings=s)
        import ray

        ray.shutdown()
        yield s, d
    finally:
        serving.shutdown(settings=s)


def test_killing_the_replica_loses_no_acknowledged_event(served, durable):
    s, d = durable
    posters = Posters(d.url, served.keys["consumer"])
    posters.wait_for(100)
    replicas = [p for p in psutil.process_iter(["cmdline"])
                if "ServeReplica:durable:" in " ".join(p.info["cmdline"] or [])]
    assert replicas, "no replica process found"
    for p in replicas:
        os.kill(p.pid, signal.SIGKILL)
    posters.join()
    assert posters.failures > 0  # the kill was felt: requests failed and were retried
    _check(s, "durable", posters)


def test_killing_the_whole_head_loses_no_acknowledged_event(served, durable):
    s, d = durable
    posters = Posters(d.url, served.keys["consumer"])
    posters.wait_for(100)
    members = _procs.members(_procs.tag(s.home))
    assert members
    for p in members:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    def alive() -> list:  # a process reaped between the listing and its status is gone too
        out = []
        for p in _procs.members(_procs.tag(s.home)):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.monotonic() + 30  # SIGKILL is not instant on a loaded machine
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, left
    serving.deploy("recs@champion", "durable", min_replicas=1, max_replicas=1, settings=s)  # restart
    import ray

    ray.shutdown()
    posters.join()
    assert posters.failures > 0
    _check(s, "durable", posters)
