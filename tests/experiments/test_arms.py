"""Per-arm counts of a running experiment from the real answer and event logs (SQLite)."""
from __future__ import annotations

import re
import time

import pytest

from aimass import experiments
from aimass.catalog import Experiment, FeedbackEventBase, session
from aimass.errors import InvalidInputError
from aimass.events import EventLog, ServedLog


def _running(settings, monkeypatch, experiment_id: str) -> None:
    """A play_rate experiment on "recs", m/1 against m/2 at 50/50 (no cluster: its endpoint counts as deployed)."""
    monkeypatch.setattr("aimass.serving.check_deployed", lambda endpoint, settings=None: None)
    with session(settings) as db:
        db.add(Experiment(endpoint="recs", experiment_id=experiment_id, metric="play_rate",
                          arms=[{"ref": "m/1", "weight": 50}, {"ref": "m/2", "weight": 50}]))
        db.commit()


def test_a_user_a_ramp_moved_counts_once_in_the_arm_of_their_first_answer(settings, monkeypatch):
    """90/10 became 50/50 while the experiment ran: user 1, first answered by A, is answered by B afterwards
    and plays B's item. Counted in both arms, the samples would overlap (the test assumes them independent)."""
    _running(settings, monkeypatch, "x1")
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


def test_a_request_id_a_client_sent_with_every_request_converts_only_its_own_users_answer(settings, monkeypatch):
    """A client that sends one X-Request-ID with every request: user 1's play must not convert user 2's answer,
    nor user 3's, though all three answers carry the id the play names."""
    _running(settings, monkeypatch, "xr")
    log = ServedLog(settings)
    for user, arm in ((1, "m/1"), (2, "m/1"), (3, "m/2")):
        log.record("recs", "same", "recommend", "m", int(arm[-1]), user, [5], [7], [1.0], arm=arm,
                   experiment_id="xr", latency_ms=1.0)
    log.flush()
    EventLog(settings).write("recs", [FeedbackEventBase(event_id="p1", user_id=1, item_id=7, type="play",
                                                        timestamp=time.time(), request_id="same")])
    a, b = experiments.show("recs", settings=settings).arms
    assert (a.users, a.successes, b.users, b.successes) == (2, 1, 1, 0)


@pytest.mark.parametrize("metric,converted", [("play_rate", {1}), ("rating_rate", {2}), ("skip_rate", {3}),
                                               ("impression_rate", {4})])
def test_a_type_rate_counts_the_events_the_types_rules_count(settings, monkeypatch, metric, converted):
    """Under "play>=30" a 2-second play is no conversion, nor under "rating>=4" a 1-star rating; a type only
    negative rules name counts its negative events, a neutral type every event."""
    monkeypatch.setattr("aimass.serving.check_deployed", lambda endpoint, settings=None: None)
    s = settings.model_copy(update={"feedback_positive": ["like", "play>=30", "rating>=4"],
                                    "feedback_negative": ["skip<5", "rating<=2"], "feedback_neutral": ["impression"]})
    with session(s) as db:
        db.add(Experiment(endpoint="recs", experiment_id="xt", metric=metric, arms=[{"ref": "m/1", "weight": 100}]))
        db.commit()
    log = ServedLog(s)
    for user in range(1, 9):
        log.record("recs", f"r{user}", "recommend", "m", 1, user, [5], [7], [1.0], arm="m/1", experiment_id="xt",
                   latency_ms=1.0)
    log.flush()
    events = [(1, "play", 45.0), (5, "play", 2.0), (2, "rating", 5.0), (6, "rating", 1.0), (3, "skip", 1.0),
              (7, "skip", 20.0), (4, "impression", None)]
    EventLog(s).write("recs", [FeedbackEventBase(event_id=f"e{u}", user_id=u, item_id=7, type=t, value=v,
                                                 timestamp=time.time(), request_id=f"r{u}") for u, t, v in events])
    (arm,) = experiments.show("recs", settings=s).arms
    assert (arm.users, arm.successes) == (8, len(converted))


def test_an_experiment_still_starting_shows_no_arms(settings, monkeypatch):
    monkeypatch.setattr("aimass.serving.check_deployed", lambda endpoint, settings=None: None)
    with session(settings) as db:  # start() commits the row first, then applies the split (seconds)
        db.add(Experiment(endpoint="recs", experiment_id="x2", metric="play_rate", arms=[], auto=True))
        db.commit()
    view = experiments.show("recs", settings=settings)
    assert view.arms == [] and view.comparisons == [] and view.guardrails_broken == []
    assert experiments.check("recs", settings=settings) is None  # the scheduler's look: nothing to decide yet


def test_a_metric_with_a_trailing_newline_is_refused(settings):
    from aimass.experiments import _metric_type

    bad = "play_rate\n"
    assert _metric_type("play_rate", settings) == "play"
    with pytest.raises(InvalidInputError, match=re.escape(f"unknown metric {bad!r}")):
        _metric_type(bad, settings)


def _served(settings, answers: list[tuple[str, int, str, str]], plays: list[tuple[str, int]],
            experiment_id: str = "x1", endpoint: str = "recs", event: str = "play") -> None:
    """(request_id, user, arm, route) answers under the experiment, and a play (or `event`) naming each
    (request_id, user)."""
    log = ServedLog(settings)
    for rid, user, arm, route in answers:
        log.record(endpoint, rid, route, arm.split("/")[0], int(arm.split("/")[1]), user, [5], [7], [1.0],
                   arm=arm, experiment_id=experiment_id, latency_ms=1.0, query="rock" if route == "search" else None)
    log.flush()
    EventLog(settings).write(endpoint, [
        FeedbackEventBase(event_id=f"e-{rid}", user_id=user, item_id=7, type=event, timestamp=time.time(),
                          request_id=rid) for rid, user in plays])


def test_an_experiment_on_a_search_endpoint_counts_its_search_answers(settings, monkeypatch):
    """The search service logs its answers under route 'search': an experiment counted recommend and rank only,
    so an A/B test of two search indexes saw no user at all."""
    monkeypatch.setattr("aimass.serving.check_deployed", lambda endpoint, settings=None: None)
    with session(settings) as db:
        db.add(Experiment(endpoint="find", experiment_id="x1", metric="play_rate",
                          arms=[{"ref": "idx/1", "weight": 50}, {"ref": "idx/2", "weight": 50}]))
        db.commit()
    _served(settings, [("s1", 1, "idx/1", "search"), ("s2", 2, "idx/2", "search"), ("s3", 3, "idx/2", "search"),
                       ("m1", 4, "idx/1", "similar")], [("s2", 2)], endpoint="find")
    a, b = experiments.show("find", settings=settings).arms
    assert (a.users, a.answers, a.successes) == (1, 1, 0)  # /similar has no user: never an assignment
    assert (b.users, b.answers, b.successes) == (2, 2, 1)


def test_with_several_comparisons_the_text_gives_the_level_every_interval_is_at(settings, monkeypatch):
    """Alpha 0.05 over two comparisons (Bonferroni): every interval, the control's too, is at 97.5%; the text
    said the control's was at 95%."""
    from aimass.cli.experiments import view_lines

    monkeypatch.setattr("aimass.serving.check_deployed", lambda endpoint, settings=None: None)
    with session(settings) as db:
        db.add(Experiment(endpoint="recs", experiment_id="x1", metric="play_rate", alpha=0.05,
                          arms=[{"ref": f"m/{v}", "weight": w} for v, w in ((1, 34), (2, 33), (3, 33))]))
        db.commit()
    _served(settings, [(f"r{u}", u, f"m/{u % 3 + 1}", "recommend") for u in range(30)],
            [(f"r{u}", u) for u in range(0, 30, 2)])
    view = experiments.show("recs", settings=settings)
    assert [c.confidence for c in view.comparisons] == [0.975, 0.975]
    assert view.arms[0].interval == tuple(view.comparisons[0].control.interval)
    text = "\n".join(view_lines(view))
    assert "intervals at 97.5%" in text and "every interval, the control's too, is at 97.5%" in text
    assert "95.0%" not in text


@pytest.mark.parametrize(("skips", "decided"), [
    ({"m/1": 60, "m/2": 30, "m/3": 10}, ("m/3", "promoted m/3")),  # both skip less: the fewest skips wins
    ({"m/1": 10, "m/2": 60, "m/3": 40}, ("m/1", "rolled back: the control won")),  # both skip more
])
def test_on_a_negative_event_types_rate_the_lower_rate_wins(settings, monkeypatch, skips, decided):
    """An auto experiment on skip_rate promoted the arm that users skipped most: the test called the higher
    rate the winner whatever the event type."""
    from aimass.cli.experiments import view_lines

    monkeypatch.setattr("aimass.serving.check_deployed", lambda endpoint, settings=None: None)
    ended = {}
    monkeypatch.setattr(experiments, "_end", lambda s, e, *, to, decision, **kw: ended.update(to=to, why=decision))
    with session(settings) as db:
        db.add(Experiment(endpoint="recs", experiment_id="x1", metric="skip_rate", auto=True, min_samples=50,
                          arms=[{"ref": ref, "weight": 34 if ref == "m/1" else 33} for ref in skips]))
        db.commit()
    answers, skipped = [], []
    for k, (ref, percent) in enumerate(skips.items()):  # 200 users per arm, `percent` of them skip
        for u in range(k * 200, (k + 1) * 200):
            answers.append((f"r{u}", u, ref, "recommend"))
            if u - k * 200 < percent * 2:
                skipped.append((f"r{u}", u))
    _served(settings, answers, skipped, event="skip")
    view = experiments.show("recs", settings=settings)
    winner, decision = decided
    significant = [c for c in view.comparisons if c.significant]
    assert significant and all(c.winner == (c.treatment.name if winner != "m/1" else "m/1") for c in significant)
    assert experiments.check("recs", settings=settings).startswith(decision)
    assert ended["to"] == winner
    assert not view.higher_is_better and not view.guardrails_broken
    assert "metric skip_rate (lower wins)" in "\n".join(view_lines(view))


def test_only_a_type_no_positive_rule_names_is_lower_is_better(settings):
    from aimass.experiments import _higher_is_better

    # by default skip and dislike are negative; rating is both (rating>=4 positive, rating<=2 negative)
    assert [_higher_is_better(k, settings) for k in (None, "play", "rating", "skip", "dislike", "view")] == [
        True, True, True, False, False, True]


def test_an_arms_latency_is_its_computed_answers_not_its_cache_hits(settings, monkeypatch):
    """The control's answer cache is warm when a canary's starts cold: counted, its hits (a lookup each) made
    the control's p50 0.0 ms beside the canary's 7.6, and the latency guardrail compared a cache with a model."""
    _running(settings, monkeypatch, "xc")
    log = ServedLog(settings)
    for i in range(20):  # the control: 18 hits of its warm cache, 2 computed; the canary: all computed
        log.record("recs", f"a{i}", "recommend", "m", 1, 2 * i, [5], [7], [1.0], arm="m/1", experiment_id="xc",
                   latency_ms=0.01 if i < 18 else 8.0, cached=i < 18)
        log.record("recs", f"b{i}", "recommend", "m", 2, 2 * i + 1, [5], [7], [1.0], arm="m/2", experiment_id="xc",
                   latency_ms=7.5)
    log.flush()
    a, b = experiments.show("recs", settings=settings).arms
    assert (a.answers, a.computed, a.latency_p50_ms, b.computed, b.latency_p50_ms) == (20, 2, 8.0, 20, 7.5)
