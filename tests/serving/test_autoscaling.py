"""Autoscaling works and shows its decisions: under load a deployment rises from 1 to 2 replicas (its max), falls
back to 1 when the load stops, never leaves its bounds, and the serving cluster's watcher records both changes;
`deployments show --json` reports the replicas, the autoscaling target and bounds, and the decisions.

A serving cluster of its own (not the package's `served` one, whose models it serves): the load and the replica
changes must not disturb, or be disturbed by, the other serving tests."""
from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import psutil
import pytest

from aimass import serving
from aimass.serving import _procs, _scaling
from aimass.settings import Settings
from tests.serving.conftest import cluster_of, cluster_processes, free_port, sharing

pytestmark = pytest.mark.integration
ENDPOINT = "scaled"


class Load:
    """`clients` threads POSTing /recommend back to back until stopped: a bounded, steady concurrency."""

    def __init__(self, url: str, key: str, clients: int = 8):
        self.url, self.key, self.clients = url, key, clients
        self.stop = threading.Event()
        self.codes: Counter[int | str] = Counter()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(self.url + "/recommend", json={"user_id": random.randint(1, 60), "k": 5},
                               headers={"Authorization": f"Bearer {self.key}"})
                    code: int | str = r.status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                with self._lock:
                    self.codes[code] += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)


def wait_for(what: str, check: Callable[[], bool], timeout: float, every: float = 1.0) -> float:
    """Seconds until check() holds; fails the test after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(every)
    return time.monotonic() - start


def _home(served, tmp_path) -> tuple[Settings, str]:
    """A home of its own whose catalog, MLflow store and data registry are the package's (its `recs` champion,
    an item-kNN model, and its consumer key), with its own serving cluster. Its answer cache is off: the load
    must cost the model's work, and the 60 users' repeated answers would be lookups in the event loop that never
    keep a request waiting long enough to call for a second replica."""
    return (sharing(served.settings, tmp_path / "home", serve_port=free_port(), serve_cache_users=0),
            served.keys["consumer"])


def test_the_watcher_records_each_change_once_and_never_a_first_sight(tmp_path):
    """Poll by poll, with Serve faked: (endpoint, deployment) -> what Ray says now."""
    Seen = _scaling.Seen
    key, bare = ("shop", "ingress"), ("old", "ingress")
    polls = [
        {key: Seen(1, "target", 1, "CONFIG_UPDATE_COMPLETED"), bare: Seen(1, "running", 1, "")},  # first sight
        {key: Seen(2, "target", 1, "AUTOSCALING"), bare: Seen(2, "running", 2, "")},  # the decision
        {key: Seen(2, "target", 2, "UPSCALE_COMPLETED")},  # its effect: the same target, nothing new
        {key: Seen(1, "running", 1, "AUTOSCALING")},  # Ray's details missed a poll: no decision seen
        {key: Seen(1, "target", 1, "AUTOSCALING")},  # back: 2 -> 1, once
        {},  # deleted: forgotten
        {key: Seen(2, "target", 2, "CONFIG_UPDATE_COMPLETED")},  # redeployed: a first sight again
    ]
    home = Settings(home=tmp_path / "home")
    w = _scaling.Watcher(home, observe=lambda: polls.pop(0), load=lambda endpoint, deployment, running: 1.5 * running)
    got = [[(e.endpoint, e.replicas_from, e.replicas_to, e.trigger) for e in w.poll_once()] for _ in range(7)]
    assert got == [[], [("shop", 1, 2, "AUTOSCALING"), ("old", 1, 2, "")], [], [], [("shop", 2, 1, "AUTOSCALING")],
                   [], []]
    new, old = _scaling.decisions(home, "shop")  # newest first
    assert (old.deployment, old.replicas_from, old.replicas_to, old.ongoing_per_replica) == ("ingress", 1, 2, 1.5)
    assert (new.replicas_from, new.replicas_to, new.ongoing_per_replica) == (2, 1, 1.5) and new.at > old.at
    assert old.at.tzinfo is not None and _scaling.decisions(home, "shop", limit=1) == [new]
    assert _scaling.decisions(home, "none") == []


def watchers(owner: str) -> list[int]:
    """Pids of the scaling watcher actors of the cluster marked `owner` (Ray names an actor's process after its
    class; the mark is in its environment)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if (p.info["cmdline"] or [""])[0].startswith("ray::_ScalingWatcher") \
                    and p.environ().get(serving.CLUSTER_OWNER_ENV) == owner:
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def test_replicas_rise_under_load_fall_back_after_and_the_decisions_are_recorded(served, tmp_path, monkeypatch):
    s, key = _home(served, tmp_path)
    seen: list[int] = []  # every running-replica count observed, to check the bounds held throughout

    def deployment() -> dict:
        snap = _scaling.snapshot(s, ENDPOINT)
        assert snap["running"] and [x["deployment"] for x in snap["deployments"]] == ["ingress"], snap
        return snap["deployments"][0]

    def replicas() -> int:
        seen.append(deployment()["replicas"])
        return seen[-1]

    cluster = None
    owner = _procs.owner_env(s.home)[serving.CLUSTER_OWNER_ENV]
    try:
        d = serving.deploy("recs@champion", ENDPOINT, min_replicas=1, max_replicas=2, target_ongoing_requests=1,
                           upscale_delay_s=1, downscale_delay_s=3, settings=s)
        cluster = cluster_of(s)
        x = deployment()
        assert (x["replicas"], x["target_replicas"], x["replica_states"]) == (1, 1, {"RUNNING": 1}), x
        assert (x["min_replicas"], x["max_replicas"], x["target_ongoing_requests"]) == (1, 2, 1.0), x
        assert (x["upscale_delay_s"], x["downscale_delay_s"]) == (1.0, 3.0), x
        assert x["ongoing"] is not None and list(x["ongoing"].values()) == [0], x  # idle: asked of the replica

        with Load(d.url, key, clients=8) as load:
            up = wait_for("a second replica under load", lambda: replicas() == 2, timeout=90)
            loaded = deployment()
        # What Ray reports under load: each replica's live count and the autoscaler's averaged total.
        assert set(loaded["ongoing"]) and all(v is not None for v in loaded["ongoing"].values()), loaded
        assert loaded["autoscaler_ongoing"] is not None and loaded["autoscaler_ongoing"] > 1, loaded
        assert set(load.codes) == {200}, load.codes  # adding a replica lost no request
        down = wait_for("back to one replica after the load", lambda: replicas() == 1, timeout=90)
        assert min(seen) >= 1 and max(seen) <= 2, seen

        def recorded() -> list:
            return [(e.replicas_from, e.replicas_to) for e in reversed(_scaling.decisions(s, ENDPOINT))]

        wait_for("the watcher to record both changes", lambda: recorded()[-2:] == [(1, 2), (2, 1)], timeout=15)
        events = _scaling.decisions(s, ENDPOINT)
        assert [(e.replicas_from, e.replicas_to) for e in events] == [(2, 1), (1, 2)], events  # newest first
        assert {e.deployment for e in events} == {"ingress"} and events[0].at > events[1].at
        assert events[1].trigger == "AUTOSCALING" and events[1].ongoing_per_replica > 1, events  # over the target
        # The watcher is one detached actor in this cluster: starting it again reuses it.
        status = _scaling.start_watcher(s)
        assert status["actor"] == _scaling.WATCHER and status["polls"] > 0 and status["last_error"] is None, status
        assert len(watchers(owner)) == 1

        from typer.testing import CliRunner

        from aimass.cli._common import state
        from aimass.cli.deploy import app

        monkeypatch.setattr(state, "settings", s, raising=False)
        out = CliRunner().invoke(app, ["show", ENDPOINT, "--json"])
        assert out.exit_code == 0, out.output
        shown = json.loads(out.stdout)
        assert shown["endpoint"] == ENDPOINT and shown["status"] == "RUNNING"
        sc = shown["scaling"]
        assert (sc["deployments"][0]["replicas"], sc["deployments"][0]["target_ongoing_requests"]) == (1, 1.0)
        assert [(e["replicas_from"], e["replicas_to"]) for e in sc["decisions"]] == [(2, 1), (1, 2)], sc
        human = CliRunner().invoke(app, ["show", ENDPOINT])
        assert human.exit_code == 0 and "last scaling decisions" in human.stdout and "2 -> 1" in human.stdout, \
            human.output
        print(f"scaled up in {up:.0f} s under load, down in {down:.0f} s after; requests: {dict(load.codes)}")
    finally:
        serving.shutdown(settings=s)
    if cluster:
        assert cluster_processes(*cluster) == []
    assert watchers(owner) == []  # stopping the cluster stopped its watcher
