"""Online state (aimass.serving._online.Online) of a model trained through a log position: the events up to it
are in the model's data, so they neither extend histories nor add popularity again; but a retrain folds only
the positive ones, so the negative ones must still hide their items, and the recent positive ones still count
as trending."""
from __future__ import annotations

import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import numpy as np

from aimass.catalog import FeedbackEventBase
from aimass.events import EventLog
from aimass.serving._online import HALF_LIFE_S, Online
from aimass.settings import Settings


def _e(i, user, item, type_, value=None):
    return FeedbackEventBase(event_id=f"e{i}", user_id=user, item_id=item, type=type_, value=value,
                             timestamp=time.time() - 60)


def test_events_up_to_the_cutoff_still_hide_and_trend_but_are_not_applied_twice(tmp_path):
    s = Settings(home=tmp_path / "home")
    log = EventLog(s)
    folded = log.write("recs", [_e(1, 7, 100, "like"), _e(2, 7, 101, "dislike"), _e(3, 8, 102, "rating", 1.0),
                                _e(4, 8, 100, "rating", 5.0), _e(5, 9, 103, "impression")])
    cutoff = max(a.seq for a in folded)
    with log.engine.begin() as c:  # received a day ago, and six days ago: past what trending re-reads
        for eid, days in (("e1", 1), ("e4", 6)):
            c.execute(log.table.update().where(log.table.c.event_id == eid).values(
                received_at=datetime.now(UTC) - timedelta(days=days)))
    log.write("recs", [_e(6, 7, 102, "play")])  # after the cut-off: applied as usual
    popularity = np.zeros(5)
    online = Online("recs", s, {100: 1, 101: 2, 102: 3, 103: 4}, popularity, cutoff=cutoff)
    try:
        assert online.hidden_of(7) == {2} and online.hidden_of(8) == {3}  # the folded dislike and low rating
        assert online.history(7, None).tolist() == [3]  # only the event after the cut-off extends it
        assert popularity.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]  # the folded likes are in the model's counts
        scale = 2.0 ** (-(time.time() - online.t0) / HALF_LIFE_S)
        trend = online.trend[1:] * scale
        # item 100: the like a day old weighs a half, the rating of 5 six days old nothing; 102: the play now
        assert 0.499 < trend[0] < 0.501 and trend[1] == 0 and 0.999 < trend[2] <= 1.0 and trend[3] == 0
    finally:
        online.stop()


def test_a_user_generation_moves_only_after_the_change_it_counts(tmp_path):
    """The answer cache keys a user's answers by generation and reads it without the lock: a request that saw
    the new generation but the old history would keep a stale answer as current (a disliked item recommended
    until the user's next event)."""
    s = Settings(home=tmp_path / "home")
    online = Online("recs", s, {100: 1, 101: 2}, np.zeros(3))
    seen = []

    class Watched(OrderedDict):  # what a concurrent reader sees at the moment the change is made
        def setdefault(self, key, default=None):
            seen.append(online.generation.get(key, 0))
            return super().setdefault(key, default)

    try:
        online.extra, online.hidden = Watched(), Watched()
        online.apply([(1, 7, 100, "play", None, time.time()), (2, 7, 101, "dislike", None, time.time())], own=True)
        assert seen == [0, 1] and online.generation[7] == 2
        assert online.history(7, None).tolist() == [1] and online.hidden_of(7) == {2}
    finally:
        online.stop()


def test_events_read_at_start_weigh_in_trending_by_their_own_time(tmp_path):
    """A replica starting on a month of events after its cut-off (or a backfill arriving by ingest) must not
    count them as today's: each weighs by its timestamp, as it would had the replica seen it live."""
    s = Settings(home=tmp_path / "home")
    log = EventLog(s)
    month = [FeedbackEventBase(event_id=f"old{i}", user_id=i % 50, item_id=100 + i % 3, type="play",
                               timestamp=time.time() - 30 * 86400 + 60 * i) for i in range(2000)]
    log.write("recs", month)
    online = Online("recs", s, {100: 1, 101: 2, 102: 3}, np.zeros(4))
    try:
        assert online.trending() is None  # 2,000 plays of a month ago: well under MIN_TRENDING today
        log.write("recs", [FeedbackEventBase(event_id=f"new{i}", user_id=i, item_id=102, type="play",
                                             timestamp=time.time()) for i in range(30)])
        online.catch_up()
        assert online.trending() is not None and online.trending()[1:].argmax() == 2  # today's plays lead
    finally:
        online.stop()


def test_folded_events_received_lately_weigh_in_trending_by_their_own_time(tmp_path):
    """A month of old events ingested yesterday, then folded into a retrain: the new version's replicas read them
    as folded events (up to the cut-off), and must weigh them by their time as a live replica did, not by when
    they arrived (a cold start's "trending" would be the backfill's most common items for days)."""
    s = Settings(home=tmp_path / "home")
    log = EventLog(s)
    month = [FeedbackEventBase(event_id=f"old{i}", user_id=i % 50, item_id=100 + i % 3, type="play",
                               timestamp=time.time() - 30 * 86400 + 60 * i) for i in range(2000)]
    cutoff = max(a.seq for a in log.write("recs", month))
    online = Online("recs", s, {100: 1, 101: 2, 102: 3}, np.zeros(4), cutoff=cutoff)
    try:
        assert online.trending() is None  # 2,000 plays of a month ago: well under MIN_TRENDING today
    finally:
        online.stop()


def test_the_events_kept_after_the_cutoff_are_bounded(tmp_path, monkeypatch):
    """An app sending a new user id per visit, or one user's endless plays, must not grow a replica without end:
    the users whose latest event is oldest are dropped past MAX_USERS, a user's oldest items past MAX_EXTRA, and
    a dropped user who comes back gets a generation no cached answer holds."""
    from aimass.serving import _online

    monkeypatch.setattr(_online, "MAX_USERS", 3)
    monkeypatch.setattr(_online, "MAX_EXTRA", 4)
    s = Settings(home=tmp_path / "home")
    online = Online("recs", s, {100: 1, 101: 2}, np.zeros(3))
    try:
        now = time.time()
        online.apply([(i, 7, 100, "play", None, now) for i in range(1, 12)], own=True)  # 11 plays of user 7
        assert len(online.history(7, None)) == 4
        before = online.generation[7]
        online.apply([(20 + u, u, 101, "play", None, now) for u in (1, 2, 3)], own=True)  # three newer users
        assert list(online.extra) == [1, 2, 3] and online.history(7, None) is None  # 7 dropped: the oldest
        online.apply([(30, 7, 101, "play", None, now)], own=True)
        assert online.generation[7] > before and online.history(7, None).tolist() == [2]
        online.apply([(40 + u, 100 + u, 100, "dislike", None, now) for u in range(3)], own=True)  # dislikes only
        assert list(online.recent) == [100, 101, 102] and online.hidden_of(7) == set()
        assert set(online.extra) | set(online.hidden) | set(online.generation) == {100, 101, 102}
    finally:
        online.stop()


def test_negative_events_up_to_the_cutoff_are_restored_under_the_same_bound(tmp_path, monkeypatch):
    """A long-lived endpoint's skips and dislikes, all read back at a replica's start, keep only the MAX_USERS
    users whose latest is newest (they were kept without end)."""
    from aimass.serving import _online

    monkeypatch.setattr(_online, "MAX_USERS", 3)
    s = Settings(home=tmp_path / "home")
    log = EventLog(s)
    acks = log.write("recs", [_e(i, 50 + i, 100, "dislike") for i in range(10)])
    online = Online("recs", s, {100: 1}, np.zeros(2), cutoff=max(a.seq for a in acks))
    try:
        assert sorted(online.hidden) == [57, 58, 59] and list(online.recent) == [57, 58, 59]
        assert online.hidden_of(59) == {1} and online.hidden_of(50) == set()
    finally:
        online.stop()


def test_a_users_events_are_read_in_log_order_whichever_replica_acknowledged_them(tmp_path):
    """A replica applies its own acknowledged event at once; the user's earlier events, acknowledged by another
    replica, arrive later by the poll. The history is still the log's order (SASRec reads order: replicas holding
    [B, A1, A2] and [A1, A2, B] answer differently), and the own event, polled again, counts once."""
    s = Settings(home=tmp_path / "home")
    popularity = np.zeros(4)
    online = Online("recs", s, {100: 1, 101: 2, 102: 3}, popularity)
    try:
        now = time.time()
        online.apply([(3, 7, 102, "play", None, now)], own=True)  # this replica's own event: B
        assert online.history(7, None).tolist() == [3]
        # the poll: A1 and A2 (another replica's), then B again
        online.apply([(1, 7, 100, "play", None, now), (2, 7, 101, "play", None, now),
                      (3, 7, 102, "play", None, now)])
        assert online.history(7, np.array([2])).tolist() == [2, 1, 2, 3]  # training history, then the log's order
        assert popularity[1:].tolist() == [1.0, 1.0, 1.0] and online.seq == 3 and not online.applied
        online.apply([(4, 7, 100, "play", None, now)], own=True)
        online.apply([(4, 7, 100, "play", None, now)])
        assert online.history(7, None).tolist() == [1, 2, 3, 1]
    finally:
        online.stop()
