"""Online metrics from the served-answer log and the feedback log: click-through joined by request_id, rates
per event type, hit rate by user and item whether or not the event names the request; Wilson intervals."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aimass import monitoring
from aimass.catalog import FeedbackEventBase
from aimass.cli._common import seconds
from aimass.errors import InvalidInputError, NotFoundError
from aimass.events import EventLog, ServedLog
from aimass.monitoring._stats import wilson


def _serve(settings, version: int, n: int, start: int = 0) -> None:
    log = ServedLog(settings)
    for i in range(start, start + n):
        log.record("shop", f"r{i}", "recommend", "recs", version, i, [1, 2, 3], [100 + i, 200 + i, 300 + i],
                   [0.9, 0.5, 0.1])
    log.flush()


def _event(i: int, user: int, item: int, type_: str, rid: str | None, when: datetime) -> FeedbackEventBase:
    return FeedbackEventBase(event_id=f"e{i}", user_id=user, item_id=item, type=type_, timestamp=when,
                             request_id=rid)


def test_click_through_by_type_and_hit_rate_with_intervals(settings):
    _serve(settings, 1, 10)
    _serve(settings, 2, 5, start=10)
    later, earlier = datetime.now(UTC) + timedelta(seconds=5), datetime.now(UTC) - timedelta(hours=1)
    EventLog(settings).write("shop", [
        _event(0, 0, 100, "click", "r0", later), _event(1, 1, 201, "click", "r1", later),
        _event(2, 2, 302, "like", "r2", later), _event(3, 2, 102, "click", "r2", later),  # two on one answer
        _event(4, 3, 103, "skip", "r3", later),
        _event(5, 4, 104, "play", None, later),  # no request_id: a hit, not a click-through
        _event(6, 5, 999, "play", None, later),  # not a listed item
        _event(7, 6, 106, "play", None, earlier),  # before the answer
        _event(8, 7, 999, "click", "unknown-request", later),
    ])
    got = {m.version: m for m in monitoring.online_metrics("shop", settings=settings)}
    v1, v2 = got[1], got[2]
    assert (v1.model, v1.answers, v1.answers_with_request_events) == ("recs", 10, 4)
    assert (v1.click_through.successes, v1.click_through.trials) == (3, 10)
    assert v1.click_through.low == pytest.approx(0.1078, abs=1e-4)
    assert v1.click_through.high == pytest.approx(0.6032, abs=1e-4)
    assert v1.negative.successes == 1
    assert {t: r.successes for t, r in v1.by_type.items()} == {"click": 3, "like": 1, "play": 0, "skip": 1}
    assert (v1.hit_rate.successes, v1.hit_rate.trials) == (4, 10)
    assert (v2.answers, v2.click_through.successes, v2.hit_rate.successes) == (5, 0, 0)
    assert v2.click_through.low == 0.0 and v2.click_through.high == pytest.approx(0.4345, abs=1e-4)
    assert monitoring.online_metrics("shop", window_s=60, end=datetime.now(UTC) - timedelta(hours=1),
                                     settings=settings) == []
    with pytest.raises(NotFoundError, match="'nobody' has no served answers"):
        monitoring.online_metrics("nobody", settings=settings)


def test_one_event_naming_a_request_id_several_answers_shared_is_credited_to_one_answer(settings):
    log = ServedLog(settings)
    for user in range(3):  # a client that sent the same X-Request-Id with three /recommend requests
        log.record("shop", "same", "recommend", "recs", 1, user, [1, 2], [100 + user], [0.9])
    log.flush()
    EventLog(settings).write("shop", [_event(0, 0, 999, "click", "same", datetime.now(UTC) + timedelta(seconds=5))])
    (m,) = monitoring.online_metrics("shop", settings=settings)
    assert (m.answers, m.answers_with_request_events) == (3, 1)
    assert (m.click_through.successes, m.click_through.trials) == (1, 3) and m.by_type["click"].successes == 1


def test_wilson_interval():
    assert wilson(0, 0) == (None, None, None)
    r, low, high = wilson(50, 100)
    assert r == 0.5 and low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson(10, 10)[2] == 1.0


def test_window_durations():
    assert [seconds(x) for x in ("90", "90s", "30m", "1h", "1.5h", "2d", "1w")] == [
        90, 90, 1800, 3600, 5400, 172800, 604800]
    for bad in ("0", "-1h", "1y", "", "h"):
        with pytest.raises(InvalidInputError, match="invalid window"):
            seconds(bad)


def test_cli_metrics(settings, monkeypatch):
    from typer.testing import CliRunner

    from aimass.cli._common import state
    from aimass.cli.monitor import app

    _serve(settings, 1, 4)
    monkeypatch.setattr(state, "settings", settings, raising=False)
    out = CliRunner().invoke(app, ["metrics", "shop", "--window", "1h"])
    assert out.exit_code == 0, out.output
    assert "recs/1" in out.stdout and "0.000 [0.000, 0.490]" in out.stdout


def test_a_drift_reports_feedback_is_per_answer_of_the_endpoint_and_counts_late_clicks(settings):
    """The window's events are the endpoint's, of every route and version: per answer of the whole window, not
    of the recommend answers a report compares; a click on a compared answer received after the window counts,
    as online metrics count it."""
    import time
    from datetime import UTC, datetime

    import pandas as pd

    from aimass.catalog import FeedbackEventBase
    from aimass.events import EventLog
    from aimass.monitoring import _window_feedback

    start = datetime.now(UTC)
    log = EventLog(settings)
    log.write("recs", [FeedbackEventBase(event_id=f"p{i}", user_id=1, item_id=7, type="play", timestamp=time.time(),
                                         request_id="r1") for i in range(4)])
    end = datetime.now(UTC)
    time.sleep(0.01)
    log.write("recs", [FeedbackEventBase(event_id="late", user_id=2, item_id=7, type="click", timestamp=time.time(),
                                         request_id="r2")])
    answers = pd.DataFrame({"request_id": ["r1", "r2"]})  # the compared answers; the window served 8 in all
    fb = _window_feedback(settings, "recs", answers, 8, start, end)
    assert fb["events"] == 4 and fb["events_per_answer"] == 0.5 and fb["by_type"] == {"play": 1.0}
    assert (fb["click_through"]["successes"], fb["click_through"]["trials"]) == (2, 2)


def _listed(users, items, served_at):
    import pandas as pd

    return pd.DataFrame({"user_id": users, "items": items, "served_at": pd.to_datetime(served_at, utc=True)})


def _positive(users, items, times):
    import pandas as pd

    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": pd.to_datetime(times, utc=True)})


def test_hit_rate_with_repeated_events_is_the_brute_force_one():
    """Any positive event on a listed item at or after the answer: repeats of (user, item) at times before and
    after answers, answers listing the same item again, one event exactly at the serving time."""
    import numpy as np

    from aimass.monitoring._online import _hits

    rng = np.random.default_rng(3)
    t0 = np.datetime64("2026-01-01T00:00:00", "s")
    n, m = 300, 2000
    users = rng.integers(0, 6, n)
    items = [rng.choice(12, 3, replace=False).tolist() for _ in range(n)]
    served = t0 + rng.integers(0, 1000, n).astype("timedelta64[s]")
    ev_user, ev_item = rng.integers(0, 6, m), rng.integers(0, 12, m)
    ev_time = t0 + rng.integers(0, 1000, m).astype("timedelta64[s]")
    ev_user[0], ev_item[0], ev_time[0] = users[0], items[0][0], served[0]  # at the very time: a hit
    answers = _listed(users, items, served)
    got = set(_hits(answers, _positive(ev_user, ev_item, ev_time)).tolist())
    want = {a for a in range(n) if any(ev_user[e] == users[a] and ev_item[e] in items[a] and ev_time[e] >= served[a]
                                       for e in range(m))}
    assert 0 in got and 0 < len(want) < n and got == want


def test_many_events_on_one_listed_item_do_not_multiply_the_hit_rate_join():
    """One user, 2,000 answers each listing the item they then played 2,000 times: joined whole that was
    4 million rows (about 200 MB); the latest play per (user, item) decides as well."""
    import tracemalloc

    import numpy as np

    from aimass.monitoring._online import _hits

    n = 2000
    t0 = np.datetime64("2026-01-01T00:00:00", "s")
    served = t0 + np.arange(n).astype("timedelta64[s]")
    answers = _listed(np.zeros(n, np.int64), [[7, 100 + i % 50] for i in range(n)], served)
    plays = _positive(np.zeros(n, np.int64), np.full(n, 7), t0 + np.arange(n).astype("timedelta64[s]") // 2)
    tracemalloc.start()
    try:
        got = _hits(answers, plays)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the last play is at (n - 1) // 2 s: the answers served up to then are hits
    assert sorted(got.tolist()) == list(range((n - 1) // 2 + 1))
    assert peak < 20_000_000, f"{peak / 1e6:.0f} MB held while joining"


def test_a_window_beyond_the_cap_is_measured_on_a_seeded_sample_that_says_so(settings, monkeypatch):
    """Every answer of a busy day, with its lists, read whole was more than a process holds: a uniform sample of
    `max_answers` (the same one each time), whose rows say how many the window held."""
    from typer.testing import CliRunner

    _serve(settings, 1, 60)
    _serve(settings, 2, 40, start=60)
    later = datetime.now(UTC) + timedelta(seconds=5)
    EventLog(settings).write("shop", [_event(i, i, 100 + i, "click", f"r{i}", later) for i in range(100)]
                             + [_event(100, 5, 105, "impression", None, later)])  # counts for nothing: a type
    whole = {m.version: m for m in monitoring.online_metrics("shop", settings=settings)}
    assert whole[1].sampled_from is None and whole[1].click_through.successes == 60
    assert set(whole[1].by_type) == {"click", "impression"} and whole[1].by_type["impression"].successes == 0
    got = monitoring.online_metrics("shop", max_answers=30, settings=settings)
    again = monitoring.online_metrics("shop", max_answers=30, settings=settings)
    assert [m.model_dump(exclude={"window_end"}) for m in again] == [m.model_dump(exclude={"window_end"}) for m in got]
    assert sum(m.answers for m in got) == 30 and {m.sampled_from for m in got} == {100}
    assert all(m.click_through.successes == m.answers == m.hit_rate.trials for m in got)  # every answer clicked
    with pytest.raises(InvalidInputError, match="max_answers"):
        monitoring.online_metrics("shop", max_answers=0, settings=settings)

    from aimass.cli import monitor
    from aimass.cli._common import state

    monkeypatch.setattr(state, "settings", settings, raising=False)
    monkeypatch.setitem(monitoring.online_metrics.__kwdefaults__, "max_answers", 30)
    out = CliRunner().invoke(monitor.app, ["metrics", "shop"])
    assert out.exit_code == 0 and "measured on a uniform sample of 30 of the window's 100 answers" in out.stdout, \
        out.output
