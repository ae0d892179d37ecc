"""Golden signals, search activity and shadow comparisons from the served-answer log: every replica's answers
and failures count, shadow answers do not (but are compared with the live ones), and each lands in its
bucket."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aimass import monitoring
from aimass.catalog import ServedAnswer, engine_for
from aimass.errors import InvalidInputError


def _answer(at: datetime, latency: float, strategy: str = "model", shadow: bool = False, route: str = "recommend",
            query: str | None = None, request_id: str | None = None, **more) -> dict:
    return {"endpoint": "recs", "request_id": request_id or f"r{at.timestamp()}{latency}{shadow}", "route": route,
            "model": "recs",
            "version": 1, "user_id": 1, "history_length": 0, "history_tail": [], "items": [] if strategy != "model"
            else [1], "scores": [], "strategy": strategy, "served_at": at, "latency_ms": latency, "shadow": shadow,
            "query": query, **more}


def test_signals_count_every_answer_and_failure_in_its_bucket(settings):
    settings.home.mkdir(parents=True)
    end = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    rows = [_answer(end - timedelta(seconds=170), 10.0), _answer(end - timedelta(seconds=150), 30.0),
            _answer(end - timedelta(seconds=130), 50.0, "error"),  # a failed request: counted, and an error
            _answer(end - timedelta(seconds=30), 5.0),
            _answer(end - timedelta(seconds=30), 999.0, shadow=True),  # never seen by a consumer
            _answer(end - timedelta(seconds=500), 1.0)]  # before the window
    with engine_for(settings.catalog).begin() as conn:
        conn.execute(ServedAnswer.__table__.insert(), rows)
    sig = monitoring.golden_signals("recs", window_s=180, bucket_s=60, end=end, settings=settings)
    assert (sig.requests, sig.errors) == (4, 1) and sig.error_rate == 0.25
    assert sig.p50_ms == pytest.approx(20.0) and sig.requests_per_s == pytest.approx(4 / 180)
    b = sig.buckets
    assert b["errors"].tolist() == [1, 0, 0] and (b["requests_per_s"] * 60).round().tolist() == [3, 0, 1]
    assert b["p50_ms"].tolist()[0] == pytest.approx(30.0) and b["p99_ms"].isna().tolist() == [False, True, False]
    empty = monitoring.golden_signals("recs", window_s=60, end=end - timedelta(days=1), settings=settings)
    assert (empty.requests, empty.p99_ms, len(empty.buckets)) == (0, None, 1)
    with pytest.raises(InvalidInputError, match="bucket must be positive"):
        monitoring.golden_signals("recs", bucket_s=0, settings=settings)


@pytest.mark.parametrize(("window_s", "bucket_s", "match"), [
    (3600, float("inf"), "bucket must be positive, finite and at least 1 ms"),  # was OverflowError
    (1e-6, 1e-7, "bucket must be positive, finite and at least 1 ms"),  # a zero timedelta: ZeroDivisionError
    (3600, float("nan"), "bucket must be positive, finite"),
    (None, 60, "golden signals need a window"),  # was TypeError
])
def test_a_bucket_no_timedelta_can_hold_is_refused_before_anything_is_read(settings, window_s, bucket_s, match):
    with pytest.raises(InvalidInputError, match=match):
        monitoring.golden_signals("recs", window_s=window_s, bucket_s=bucket_s, settings=settings)
    assert not settings.home.exists()
    one_ms = monitoring.golden_signals("recs", window_s=0.01, bucket_s=0.001, settings=settings)
    assert (one_ms.requests, len(one_ms.buckets)) == (0, 10)


def test_search_activity_counts_queries_and_those_that_found_nothing(settings):
    settings.home.mkdir(parents=True)
    now = datetime.now(UTC)
    rows = [_answer(now - timedelta(minutes=m), 1.0, route="search", query=q,
                    strategy="no_results" if q.startswith("zz") else "model")
            for m, q in enumerate(["Jazz", "jazz ", "rock", "zzqx", "zzqx", "jazz"])]
    rows.append(_answer(now, 1.0))  # a recommendation: not a query
    with engine_for(settings.catalog).begin() as conn:
        conn.execute(ServedAnswer.__table__.insert(), rows)
    a = monitoring.search_activity("recs", settings=settings)
    assert (a.queries, a.no_results) == (6, 2) and a.no_result_rate == pytest.approx(1 / 3)
    assert a.top[0] == ("jazz", 3) and a.top_no_results == [("zzqx", 2)]
    assert int(a.per_hour["queries"].sum()) == 6


def test_search_activity_gives_click_through_by_mode_from_positive_feedback(settings):
    from aimass import events

    settings.home.mkdir(parents=True)
    now = datetime.now(UTC)
    modes = ["bm25", "bm25", "hybrid", "hybrid", "hybrid", "hybrid+personal", None]
    rows = [_answer(now - timedelta(minutes=j), 1.0, route="search", query="q", request_id=f"s{j}", mode=m)
            for j, m in enumerate(modes)]
    with engine_for(settings.catalog).begin() as conn:
        conn.execute(ServedAnswer.__table__.insert(), rows)
    log = events.EventLog(settings)
    clicks = [("s0", "click"), ("s0", "click"), ("s2", "click"), ("s3", "skip"), ("s5", "like")]  # skip: negative
    log.write("recs", [events.FeedbackEventBase(event_id=f"e{j}", user_id=1, item_id=1, type=kind, request_id=rid,
                                                timestamp=now) for j, (rid, kind) in enumerate(clicks)])
    by = monitoring.search_activity("recs", settings=settings).by_mode.set_index("mode")
    assert by["queries"].to_dict() == {"bm25": 2, "hybrid": 3, "hybrid+personal": 1, "unknown": 1}
    assert by["clicked"].to_dict() == {"bm25": 1, "hybrid": 1, "hybrid+personal": 1, "unknown": 0}
    assert by.loc["bm25", "click_through"] == 0.5 and by.loc["bm25", "low"] < 0.5 < by.loc["bm25", "high"]
    (per_index,) = monitoring.search_activity("recs", settings=settings).by_index.to_dict("records")
    assert (per_index["index"], per_index["queries"], per_index["clicked"]) == ("recs/1", 7, 3)


def test_shadow_comparison_sets_each_shadows_lists_and_latency_beside_the_live_answers(settings):
    settings.home.mkdir(parents=True)
    now = datetime.now(UTC)
    rows = []
    for j in range(4):
        at = now - timedelta(seconds=10 * j)
        rows.append(_answer(at, 2.0 + j, request_id=f"r{j}", arm="recs/1", overlap=None))
        rows.append(_answer(at, 10.0 + j, shadow=True, request_id=f"r{j}", arm="recs/2", overlap=[1, 1, .5, 0][j]))
    rows.append(_answer(now, 100.0, request_id="r9", arm="recs/1", overlap=None))  # no copy: not on the live side
    # a cache's lookups, live and shadow: copies and overlap count them, latency is computed answers' alone
    hits = [_answer(now, 0.01, request_id="r5", arm="recs/1", overlap=None, cached=True),
            _answer(now, 0.02, shadow=True, request_id="r5", arm="recs/2", overlap=1.0, cached=True),
            _answer(now, 0.03, shadow=True, request_id="r6", arm="recs/2", overlap=1.0, cached=True),
            _answer(now, 0.04, request_id="r6", arm="recs/1", overlap=None, cached=True)]
    with engine_for(settings.catalog).begin() as conn:
        conn.execute(ServedAnswer.__table__.insert(), rows)
        conn.execute(ServedAnswer.__table__.insert(), hits)
    (row,) = monitoring.shadow_comparison("recs", settings=settings).to_dict("records")
    assert (row["shadow"], row["copies"], row["mean_overlap"], row["identical"]) == ("recs/2", 6, 0.75, 0.6667)
    assert row["shadow_p50_ms"] == pytest.approx(11.5) and row["live_p50_ms"] == pytest.approx(3.5)
    assert row["live_p99_ms"] < 6  # r9's 100 ms is not a copied request
    assert monitoring.shadow_comparison("recs", window_s=1, end=now - timedelta(days=1), settings=settings).empty


def test_a_window_too_long_for_a_datetime_is_refused_before_any_reading(settings):
    settings.home.mkdir(parents=True)  # an empty store: only the window's own check can answer
    end = datetime(2026, 1, 1, tzinfo=UTC)
    for window in (float("inf"), 1e12):
        for call in (monitoring.golden_signals, monitoring.online_metrics, monitoring.drift,
                     monitoring.search_activity, monitoring.shadow_comparison):
            with pytest.raises(InvalidInputError, match="window must be positive and at most 100 years"):
                call("recs", window_s=window, end=end, settings=settings)
    assert monitoring.golden_signals("recs", window_s=99 * 365 * 86400, bucket_s=86400 * 365, end=end,
                                     settings=settings).requests == 0  # a long window that fits still answers


def test_the_last_bucket_of_a_window_it_does_not_divide_is_a_rate_over_its_own_seconds(settings):
    settings.home.mkdir(parents=True)
    end = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    # 90 s in buckets of 60 s: [end-90, end-30) holds 6 answers, the last bucket [end-30, end) 30 s with 3
    at = [85, 80, 70, 60, 50, 40] + [25, 15, 5]
    with engine_for(settings.catalog).begin() as conn:
        conn.execute(ServedAnswer.__table__.insert(), [_answer(end - timedelta(seconds=s), 1.0) for s in at])
    sig = monitoring.golden_signals("recs", window_s=90, bucket_s=60, end=end, settings=settings)
    assert sig.buckets["start"].tolist() == [end - timedelta(seconds=90), end - timedelta(seconds=30)]
    assert sig.buckets["requests_per_s"].tolist() == pytest.approx([6 / 60, 3 / 30])
    assert sig.requests_per_s == pytest.approx(9 / 90)


def test_a_click_on_a_request_id_several_searches_shared_counts_for_one_of_them(settings):
    from aimass import events

    settings.home.mkdir(parents=True)
    now = datetime.now(UTC)
    # one client sent X-Request-Id "same" with three queries (newest last), and "own" with one more
    rows = [_answer(now - timedelta(minutes=m), 1.0, route="search", query="q", request_id="same", mode=mode)
            for m, mode in [(3, "bm25"), (2, "hybrid"), (1, "hybrid+personal")]]
    rows.append(_answer(now, 1.0, route="search", query="q", request_id="own", mode="bm25"))
    with engine_for(settings.catalog).begin() as conn:
        conn.execute(ServedAnswer.__table__.insert(), rows)
    events.EventLog(settings).write("recs", [events.FeedbackEventBase(
        event_id="e0", user_id=1, item_id=1, type="click", request_id="same", timestamp=now)])
    a = monitoring.search_activity("recs", settings=settings)
    (per_index,) = a.by_index.to_dict("records")
    assert (per_index["queries"], per_index["clicked"]) == (4, 1)
    by = a.by_mode.set_index("mode")["clicked"].to_dict()
    assert by == {"bm25": 0, "hybrid": 0, "hybrid+personal": 1}  # the last query that named it
