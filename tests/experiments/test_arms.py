"""Per-arm counts of a running experiment from the real answer and event logs (SQLite)."""
from __future__ import annotations

import time

from aimass import experiments
from aimass.catalog import Experiment, FeedbackEventBase, session
from aimass.events import EventLog, ServedLog


def test_a_user_a_ramp_moved_counts_once_in_the_arm_of_their_first_answer(settings, monkeypatch):
    """90/10 became 50/50 while the experiment ran: user 1, first answered by A, is answered by B afterwards
    and plays B's item. Counted in both arms, the samples would overlap (the test assumes them independent)."""
    monkeypatch.setattr("aimass.serving.check_deployed", lambda endpoint, settings=None: None)
    with session(settings) as db:
        db.add(Experiment(endpoint="recs", experiment_id="x1", metric="play_rate",
                          arms=[{"ref": "m/1", "weight": 50}, {"ref": "m/2", "weight": 50}]))
        db.commit()
    log = ServedLog(settings)
    for rid, user, arm in (("r1", 1, "m/1"), ("r2", 2, "m/2"), ("r3", 1, "m/2"), ("r4", 3, "m/1")):
        log.record("recs", rid, "recommend", arm.split("/")[0], int(arm[-1]), user, [5], [7], [1.0],
                   arm=arm, experiment_id="x1", latency_ms=1.0)
    log.flush()
    EventLog(settings).write("recs", [
        FeedbackEventBase(event_id=f"e-{rid}", user_id=user, item_id=7, type="play", timestamp=time.time(),
                          request_id=rid) for rid, user in (("r3", 1), ("r2", 2))])
    view = experiments.show("recs", settings=settings)
    a, b = view.arms
    assert (a.users, a.successes, a.answers) == (2, 0, 2)  # users 1 and 3; user 1's play followed B's answer
    assert (b.users, b.successes, b.answers) == (1, 1, 2)  # user 2 only; B still answered twice
    assert a.users + b.users == 3  # each user once
    # every arm's interval at the comparison's level, the control's too
    (c,) = view.comparisons
    assert a.interval == tuple(c.control.interval) and b.interval == tuple(c.treatment.interval)


def test_an_experiment_still_starting_shows_no_arms(settings, monkeypatch):
    monkeypatch.setattr("aimass.serving.check_deployed", lambda endpoint, settings=None: None)
    with session(settings) as db:  # start() commits the row first, then applies the split (seconds)
        db.add(Experiment(endpoint="recs", experiment_id="x2", metric="play_rate", arms=[], auto=True))
        db.commit()
    view = experiments.show("recs", settings=settings)
    assert view.arms == [] and view.comparisons == [] and view.guardrails_broken == []
    assert experiments.check("recs", settings=settings) is None  # the scheduler's look: nothing to decide yet
