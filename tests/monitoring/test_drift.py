"""Drift reports against the training reference: a shifted window (only heavy users; histories of one genre)
is flagged, an unshifted window of the same size is not; each report is stored with its HTML and JSON and
listed."""
from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from aimass import monitoring
from aimass.catalog import FeedbackEventBase
from aimass.errors import InvalidInputError, NotFoundError
from aimass.events import EventLog
from aimass.settings import Settings

N = 300  # answers per window: the small end of what a report must judge well
REF = 400  # reference users, of the demo's 600: windows also hold users the reference never saw


@pytest.fixture(scope="module")
def windows(home):
    rng = np.random.default_rng(7)
    home.serve("steady", [(int(u), None) for u in rng.choice(home.users, N)])
    heavy = home.users[home.activity >= np.quantile(home.activity, 0.9)]
    home.serve("heavy", [(int(u), None) for u in rng.choice(heavy, N)])
    genre = home.engine.columns["genre"][1:]
    labels, counts = np.unique(genre, return_counts=True)
    one = home.engine.item_ids[genre == labels[np.argmax(counts)]]
    requests = []
    for u in rng.choice(home.users, N):  # the same users and history lengths, one genre's items
        n = min(len(home.engine.histories[u]), len(one))
        requests.append((int(u), rng.choice(one, n, replace=False).tolist()))
    ids = home.serve("genre", requests)
    now = datetime.now(UTC)
    EventLog(home.settings).write("genre", [
        FeedbackEventBase(event_id=f"e{i}", user_id=u, item_id=int(one[0]), type="click", timestamp=now,
                          request_id=ids[i]) for i, (u, _) in enumerate(requests[:30])])
    for i in range(5):  # answers a drift report leaves out, and says so
        home.log.record("steady", f"s{i}", "similar", "recs", 1, None, [int(one[0])], [int(one[1])], [0.5])
    for i in range(3):
        home.log.record("steady", f"v{i}", "recommend", "recs", 2, None, [], [int(one[1])], [9.0], "popular")
    home.log.flush()
    out = {e: monitoring.drift(e, reference_users=REF, settings=home.settings) for e in ("steady", "heavy", "genre")}
    return {**out, "one_genre": str(labels[np.argmax(counts)])}


def test_unshifted_window_is_not_flagged(windows):
    r = windows["steady"]
    assert (r.n_current, r.n_reference, r.model, r.version, r.dataset) == (N, REF, "recs", 1, "demo@v1")
    assert r.not_compared == {"similar": 5, "recs/2": 3}
    assert not r.drifted and r.drifted_columns == [], {c: v.score for c, v in r.columns.items()}
    assert set(r.columns) == {"history_length", "user_activity", "history_popularity", "history_label",
                              "items_popularity", "score_top", "score_spread", "strategy"}
    assert r.current["diversity_label"] == "genre" and 0 < r.current["diversity"] <= 1
    assert abs(r.current["coverage"] - r.reference["coverage"]) < 0.1  # the reference's at the same size
    assert r.reference["feedback"]["by_type"].keys() == {"play", "skip"}


def test_a_window_larger_than_the_reference_is_measured_at_the_reference_size(windows, home):
    rng = np.random.default_rng(8)
    home.serve("busy", [(int(u), None) for u in rng.choice(home.users, REF + 150)])
    r = monitoring.drift("busy", reference_users=REF, settings=home.settings)
    assert r.n_current == REF + 150 and r.current["answers"] == r.reference["answers"] == REF
    assert abs(r.current["coverage"] - r.reference["coverage"]) < 0.1 and not r.drifted


def test_heavy_users_only_are_flagged(windows):
    r = windows["heavy"]
    assert r.drifted and r.drifted_share >= monitoring.DRIFT_SHARE
    assert {"history_length", "user_activity"} <= set(r.drifted_columns)
    assert r.columns["history_length"].current > 1.5 * r.columns["history_length"].reference
    assert r.columns["history_length"].p_value < 1e-4 and r.columns["history_length"].score >= 0.1


def test_one_genre_histories_are_flagged(windows):
    r = windows["genre"]
    assert r.drifted and "history_label" in r.drifted_columns
    assert "user_activity" not in r.drifted_columns  # the same users: only what they listened to changed
    assert r.columns["history_label"].current == windows["one_genre"]
    fb = r.current["feedback"]
    assert (fb["events"], fb["positive_share"], fb["click_through"]["successes"]) == (30, 1.0, 30)
    assert r.reference["feedback"]["positive_share"] > 0.5  # the demo's plays and skips


def test_reports_are_stored_with_html_and_json_and_listed(windows, home):
    r = windows["heavy"]
    folder = Path(r.html).parent
    assert folder.parent == home.settings.home / "monitoring" / "heavy"
    assert Path(r.html).stat().st_size > 100_000 and "<html" in Path(r.html).read_text()[:2000].lower()
    snapshot = json.loads(Path(r.json_path).read_text())
    counts = [m for m in snapshot["metrics"] if m["metric_name"].startswith("DriftedColumnsCount")]
    assert counts[0]["value"]["count"] == len(r.drifted_columns)  # Evidently's verdict is the summary's
    assert monitoring.DriftReport.model_validate_json(Path(r.summary).read_text()) == r
    again = monitoring.drift("heavy", reference_users=REF, settings=home.settings)
    assert again.reference_seconds is None  # the cached reference
    listed = monitoring.reports("heavy", settings=home.settings)
    assert [x.html for x in listed] == [again.html, r.html]  # newest first
    assert listed[1].drifted and listed[1].n_current == N
    assert monitoring.reports("nothing-here", settings=home.settings) == []


def test_a_moved_homes_reports_name_their_files_where_they_are(windows, home, tmp_path):
    moved = Settings(home=tmp_path / "moved")
    shutil.copytree(home.settings.home / "monitoring" / "heavy", moved.home / "monitoring" / "heavy")
    listed = monitoring.reports("heavy", settings=moved)
    assert listed and all(Path(p).is_relative_to(moved.home) and Path(p).is_file()
                          for x in listed for p in (x.html, x.json_path, x.summary))


def test_reference_answers_are_the_served_answers(windows, home):
    from aimass.monitoring import _reference

    ref = _reference.get("recs", 1, home.settings, REF)
    assert len(ref.rows) == REF and ref.catalogue.label == "genre"
    for row in ref.rows.sample(10, random_state=0).itertuples():
        served = home.engine.recommend(user_id=int(row.user_id), history=None, k=10)
        assert list(row.items) == served["items"]
        assert row.score_top == pytest.approx(served["scores"][0], rel=1e-5)


def test_an_empty_window_names_the_window_and_what_the_endpoint_has(windows, home):
    with pytest.raises(NotFoundError, match=r"'steady' has no served answers between .* UTC; it has 308 in all"):
        monitoring.drift("steady", end=datetime.now(UTC) - timedelta(hours=2), settings=home.settings)
    with pytest.raises(NotFoundError, match="'ghost' has no served answers .* 0 in all"):
        monitoring.drift("ghost", settings=home.settings)
    with pytest.raises(InvalidInputError, match="invalid endpoint"):
        monitoring.drift("../etc", settings=home.settings)
    with pytest.raises(InvalidInputError, match="window must be positive"):
        monitoring.drift("steady", window_s=0, settings=home.settings)
    with pytest.raises(NotFoundError, match=r"no recommend answers of recs/9 .* recs/1 \(300\), recs/2 \(3\)"):
        monitoring.drift("steady", model="recs/9", settings=home.settings)


def test_cli_drift_and_reports(windows, home, monkeypatch):
    from typer.testing import CliRunner

    from aimass.cli._common import state
    from aimass.cli.monitor import app

    monkeypatch.setattr(state, "settings", home.settings, raising=False)
    runner = CliRunner()
    out = runner.invoke(app, ["drift", "genre", "--window", "30m", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["drifted"] and Path(doc["html"]).is_file()
    text = runner.invoke(app, ["reports", "genre"])
    assert text.exit_code == 0 and text.stdout.count("genre/") == 2 and "yes (" in text.stdout
    human = runner.invoke(app, ["drift", "steady"])
    assert human.stdout.startswith("drift: no (0 of 8 columns drifted)"), human.stdout


def test_only_the_compared_routes_answers_are_read_whole(windows, home, monkeypatch):
    """The window's lists are read for recommend answers alone; other routes' rows give three scalar columns
    (an hour of every route's lists, read whole, was gigabytes at serving rates)."""
    from aimass.events import ServedLog

    calls, read = [], ServedLog.frame

    def recording(self, endpoint, **kw):
        calls.append(kw)
        return read(self, endpoint, **kw)

    monkeypatch.setattr(ServedLog, "frame", recording)
    r = monitoring.drift("steady", reference_users=REF, settings=home.settings)
    assert r.not_compared == {"similar": 5, "recs/2": 3} and r.n_current == N  # the same report as before
    whole = [c for c in calls if c.get("columns") is None]
    assert whole and all(c.get("route") == "recommend" for c in whole), calls
    # and of them the compared version's alone (recs/2's 3 answers are left out unread)
    assert [len(c["seqs"]) for c in whole] == [N], calls


def test_a_window_beyond_the_cap_is_judged_on_a_seeded_sample_and_says_so(windows, home, monkeypatch):
    """A busy hour holds millions of answers with their lists: beyond `max_answers` a uniform sample of that many
    is read (only those rows' lists), the same one for the same window."""
    from aimass.events import ServedLog

    calls, read = [], ServedLog.frame

    def recording(self, endpoint, **kw):
        calls.append(kw)
        return read(self, endpoint, **kw)

    monkeypatch.setattr(ServedLog, "frame", recording)
    end = datetime.now(UTC)
    r = monitoring.drift("steady", end=end, reference_users=REF, max_answers=120, settings=home.settings)
    assert (r.n_current, r.sampled_from) == (120, N) and r.not_compared == {"similar": 5, "recs/2": 3}
    (whole,) = [c for c in calls if c.get("columns") is None]
    assert len(whole["seqs"]) == 120  # only the sampled answers' lists were read
    again = monitoring.drift("steady", end=end, reference_users=REF, max_answers=120, settings=home.settings)
    assert {c: v.score for c, v in again.columns.items()} == {c: v.score for c, v in r.columns.items()}
    assert monitoring.drift("steady", end=end, reference_users=REF, settings=home.settings).sampled_from is None
    with pytest.raises(InvalidInputError, match="max_answers"):
        monitoring.drift("steady", max_answers=0, settings=home.settings)
