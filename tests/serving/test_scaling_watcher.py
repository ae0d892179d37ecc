"""The scaling watcher while Serve's controller does not answer (a restart): nothing it saw is forgotten, so the
decision made meanwhile is recorded once the controller is back, and its status says why polls fail. The
controller's two reads (its instance details, serve.status()) are replaced: one stands for the controller
down, the other for what it says when up."""
from __future__ import annotations

import logging
import time

import pytest
import ray.exceptions
from ray import serve

from aimass.serving import _scaling
from aimass.settings import Settings

KEY = ("shop", "ingress")


def details(target: int | None) -> dict:
    """What get_serve_instance_details says: `shop` autoscaled to `target` replicas (None: no application)."""
    if target is None:
        return {"applications": {}}
    replicas = [{"replica_id": f"r{i}", "state": "RUNNING", "actor_name": f"a{i}"} for i in range(target)]
    return {"applications": {"shop": {"status": "RUNNING", "deployments": {"ingress": {
        "status": "HEALTHY", "status_trigger": "AUTOSCALING", "target_num_replicas": target,
        "replicas": replicas}}}}}


def controller_down():
    raise ray.exceptions.GetTimeoutError("Get timed out: the Serve controller is restarting")


@pytest.fixture
def controller(monkeypatch) -> list[dict | None]:
    """The answers the controller gives, one per read; None: it does not answer."""
    answers: list[dict | None] = []
    monkeypatch.setattr(_scaling, "_details", lambda: answers.pop(0) if answers else None)
    monkeypatch.setattr(serve, "status", controller_down)
    return answers


def test_a_poll_that_cannot_read_serve_forgets_nothing(tmp_path, controller):
    home = Settings(home=tmp_path / "home")
    w = _scaling.Watcher(home, load=lambda endpoint, deployment, running: None)
    controller.append(details(1))
    assert w.poll_once() == []  # first sight
    seen = dict(w.last)
    with pytest.raises(_scaling.ServeUnreadable):
        w.poll_once()  # meanwhile the autoscaler decides 1 -> 2
    assert w.last == seen
    controller.append(details(2))
    assert [(e.endpoint, e.replicas_from, e.replicas_to) for e in w.poll_once()] == [("shop", 1, 2)]
    assert [(e.replicas_from, e.replicas_to) for e in _scaling.decisions(home, "shop")] == [(1, 2)]
    controller.append(details(None))  # an answer that no application runs: forgotten
    assert w.poll_once() == [] and w.last == {}


def test_the_watcher_status_says_the_controller_does_not_answer(tmp_path, controller, caplog):
    caplog.set_level(logging.WARNING, logger="aimass.serving._scaling")
    actor = _scaling._ScalingWatcher(Settings(home=tmp_path / "home").dump(), 10**6)  # polls once on its thread
    deadline = time.monotonic() + 30
    while actor.polls < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    actor.poll()
    status = actor.status()
    assert status["polls"] == 2 and "ServeUnreadable" in (status["last_error"] or "")
    assert len([r for r in caplog.records if "did not answer" in r.getMessage()]) == 1  # once for the outage
    controller.append(details(1))
    actor.poll()
    assert actor.status()["last_error"] is None and actor.watcher.last == {KEY: {"target": 1, "running": 1}}
