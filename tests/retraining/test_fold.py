"""Which events a retrain folds into a new dataset version, and at what time (aimass.retraining._fold)."""
from __future__ import annotations

from aimass import datasets
from aimass.events import EventLog, FeedbackEventBase
from aimass.retraining._fold import collect


def test_a_backdated_event_is_folded_after_the_users_own_data(settings):
    """A positive event stamped before its user's last interaction in the parent is folded at that time: it
    becomes the user's leave-one-out target, never a row the served model already trained on."""
    inter, items = datasets.generate_demo(settings.home.parent / "d", datasets.DemoConfig(users=10, tracks=20))
    v = datasets.register("demo", inter, "csv", items=items, settings=settings)
    assert v.timestamp_kind == "unix"
    last = datasets.load(v.ref, settings=settings).interactions.groupby("user_id")["timestamp"].max()
    user = int(last.index[0])
    EventLog(settings).write("e", [
        FeedbackEventBase(event_id="old", user_id=user, item_id=3, type="play", timestamp=1_000_000),
        FeedbackEventBase(event_id="new-user", user_id=10**9, item_id=3, type="play", timestamp=1_000_000),
        FeedbackEventBase(event_id="later", user_id=user, item_id=4, type="like", timestamp=int(last[user]) + 60)])
    fold = collect("e", v.ref, settings)
    got = list(zip(fold.rows["user_id"], fold.rows["timestamp"], strict=True))
    assert sorted(got) == sorted([(user, int(last[user])), (10**9, 1_000_000), (user, int(last[user]) + 60)])
    assert fold.shown["event_time"].min().timestamp() == 1_000_000  # the event's own time stays on record


def test_an_event_from_a_slow_clock_still_counts_as_shown_by_the_answer_before_it(settings):
    """No request_id, and the client's clock runs 10 minutes slow: the play is stamped before the answer that
    showed the item, but it reached the server after it. Exposed ('earlier'), not organic."""
    import time

    from aimass.events import ServedLog

    inter, items = datasets.generate_demo(settings.home.parent / "d", datasets.DemoConfig(users=10, tracks=20))
    v = datasets.register("demo", inter, "csv", items=items, settings=settings)
    user = 10**9
    served = ServedLog(settings)
    served.record("e", "r1", "recommend", "m", 1, user, [1], [5, 6], [0.9, 0.8])
    served.flush()
    EventLog(settings).write("e", [
        FeedbackEventBase(event_id="slow", user_id=user, item_id=5, type="play", timestamp=int(time.time()) - 600),
        FeedbackEventBase(event_id="organic", user_id=user, item_id=7, type="play", timestamp=int(time.time()))])
    fold = collect("e", v.ref, settings)
    assert dict(zip(fold.rows["item_id"], fold.shown["via"], strict=True)) == {5: "earlier", 7: ""}


def test_an_exposure_record_without_its_columns_is_refused_and_nothing_is_written(settings):
    import pandas as pd
    import pytest

    from aimass.errors import InvalidInputError

    inter, items = datasets.generate_demo(settings.home.parent / "d", datasets.DemoConfig(users=10, tracks=20))
    v = datasets.register("demo", inter, "csv", items=items, settings=settings)
    rows = pd.DataFrame({"user_id": [1], "item_id": [2], "timestamp": [3]})
    with pytest.raises(InvalidInputError, match="missing: exposed"):
        datasets.write_exposure(v.ref, "e", rows, settings=settings)
    with pytest.raises(InvalidInputError, match="must be boolean"):
        datasets.write_exposure(v.ref, "e", rows.assign(exposed=["yes"]), settings=settings)
    assert datasets.exposure(v.ref, settings=settings) is None
