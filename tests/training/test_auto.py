"""Model search: the choices that need no training (which probes the baselines rule out, who gets a second
round), and the second round run for real on a tiny dataset."""
from __future__ import annotations

import mlflow
import pytest

import aimass
from aimass.settings import Settings
from aimass.training import _auto
from aimass.training._auto import Candidate, _bag_of_items_evidence, _lost, _round2


def _baselines(ease: float | None, knn: float | None = 0.10) -> list[Candidate]:
    board = [Candidate("popularity", {}, "baseline", run_id="p", val_ndcg=0.01)]
    board.append(Candidate("itemknn", {}, "baseline", run_id="k", val_ndcg=knn) if knn is not None
                 else Candidate("itemknn", {}, "baseline", skipped="failed: disk full"))
    board.append(Candidate("ease", {}, "baseline", run_id="e", val_ndcg=ease) if ease is not None
                 else Candidate("ease", {}, "baseline", skipped="EASE needs ... the limit is max_items=20,000"))
    return board


def test_mult_vae_is_ruled_out_only_when_ease_trails_item_knn():
    why = _bag_of_items_evidence(_baselines(ease=0.05))
    assert why is not None and "0.0500 vs 0.1000" in why and why.startswith("not probed")
    assert _bag_of_items_evidence(_baselines(ease=0.10)) is None  # a tie: the bag model may compete
    assert _bag_of_items_evidence(_baselines(ease=0.12)) is None
    # no evidence either way: EASE refused for its size, or item-kNN failed
    assert _bag_of_items_evidence(_baselines(ease=None)) is None
    assert _bag_of_items_evidence(_baselines(ease=0.05, knn=None)) is None
    # item-kNN's two baselines (with and without shrink): its best one is the evidence, whatever the order
    for first, second in ((0.12, 0.08), (0.08, 0.12)):
        board = _baselines(ease=0.10, knn=first)
        board.append(Candidate("itemknn", {"shrink": 0}, "baseline", run_id="k0", val_ndcg=second))
        why = _bag_of_items_evidence(board)
        assert why is not None and "0.1000 vs 0.1200" in why


def test_item_knn_s_second_pass_runs_only_when_its_first_was_cheap():
    from aimass.training._auto import _second_pass_skipped

    board = _baselines(ease=0.10)
    board[1].wall_time_s = 5.0
    assert _second_pass_skipped(board, "itemknn", 1.0) is None  # 5 s of a minute
    board[1].wall_time_s = 7.0
    why = _second_pass_skipped(board, "itemknn", 1.0)
    assert why == ("not run: the first itemknn job took 7 s (its pass, test and logging), over 10% "
                   "of the budget")
    assert _second_pass_skipped(board, "itemknn", 45.0) is None


def _probes(*vals: float) -> list[Candidate]:
    return [Candidate(f"f{i}", {}, "probe", run_id=f"r{i}", val_ndcg=v, budget_min=1.0) for i, v in enumerate(vals)]


def test_a_second_round_only_for_close_contenders_with_time_to_separate():
    probes = _probes(0.1417, 0.1669, 0.100)
    assert [c.family for c in _round2(probes, extra_min=5.0)] == ["f1", "f0"]  # the best two, best first
    assert _round2(probes, extra_min=0.5) == []  # too short to let the learning curves cross
    assert _round2(_probes(0.130, 0.167), extra_min=5.0) == []  # the runner-up is clearly behind
    assert _round2(_probes(0.167), extra_min=5.0) == []  # nothing to compare


def test_a_failed_continuation_takes_its_probe_off_the_board():
    # the continuation went on in the probe's run: that run may be marked failed, its checkpoints moved on
    probes = _probes(0.15, 0.16)
    ran = list(probes)
    _lost(probes[1], Candidate("f1", {}, "final", skipped="failed: disk full"), ran, intact=False)
    assert ran == [probes[0]] and probes[1].run_id is None and probes[1].skipped.endswith("failed: disk full")
    # refused before it started (training's checks), the run is still FINISHED: it stays
    refused = "run f0 has trained 0.6 minutes already, its whole budget of 0.5"
    _lost(probes[0], Candidate("f0", {}, "final", skipped=refused), ran, intact=True)
    assert ran == [probes[0]] and probes[0].run_id and probes[0].note == f"not continued: {refused}"


@pytest.mark.integration
def test_the_second_round_continues_both_contenders_and_the_final_continues_the_better(tmp_path, monkeypatch):
    """Real jobs (Ray Train's local mode, a real MLflow store), the round forced on a tiny dataset: each
    continuation resumes its predecessor's checkpoint in the same run, so the final run holds every epoch."""
    monkeypatch.setattr(_auto, "ROUND2_MIN_MIN", 0.0)
    monkeypatch.setattr(_auto, "ROUND2_CLOSE", 0.0)
    s = Settings(home=tmp_path / "home")
    inter, items = aimass.datasets.generate_demo(tmp_path / "demo", aimass.datasets.DemoConfig(users=60, tracks=120))
    aimass.datasets.register("demo", inter, "csv", items=items, settings=s)
    r = aimass.train_auto("demo", 3, workers=0, epochs=1, progress=False, settings=s)
    board = r.leaderboard
    second = [c for c in board if c.stage == "round 2"]
    final = next(c for c in board if c.stage == "final")
    assert len(second) == 2 and final.run_id and final.epochs == 3  # 1 probe epoch + 1 + 1
    # the probes that went on say where; the round-2 candidate that became the final says so too
    assert sorted(c.skipped for c in board if c.stage == "probe" and c.skipped and "round 2" in c.skipped) == \
        sorted(f"continued in round 2 (run {c.run_id or final.run_id})" for c in second)
    became = [c for c in second if c.run_id is None]
    assert len(became) == 1 and became[0].skipped == f"continued as the final candidate (run {final.run_id})"
    assert became[0].family == final.family and became[0].val_ndcg >= max(
        c.val_ndcg for c in second)  # the better of the two went on
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(final.run_id, "loss")]
    assert steps == [1, 2, 3]


def test_ease_runs_in_a_search_only_when_this_machine_fits_its_pass_in_its_share(settings):
    """A search checks EASE's estimate against its share itself: a budget given to EASE's job would be replayed
    by every retrain of the model, against a grown catalogue on a busy serving machine."""
    from aimass.training._auto import _ease_too_slow

    assert _ease_too_slow(settings, 1_000, 0.0) is None  # too small to be timed: a second at most
    why = _ease_too_slow(settings, 3_000, 0.001)
    assert why.startswith("ease on 3,000 items takes about ") and "the time budget is 0 s" in why
    assert _ease_too_slow(settings, 3_000, 3600.0) is None
    joined = settings.model_copy(update={"ray_address": "127.0.0.1:1"})
    assert _ease_too_slow(joined, 3_000, 0.001) is None  # a cluster's nodes are not timed from here
    assert _ease_too_slow(settings, 30_000, 0.001) is None  # past its size limit: its job names the limit


def test_a_search_tests_fewer_users_on_a_large_catalogue_but_never_fewer_than_it_validates():
    """Test cost is users x items: a million-item search tests as many users as it validates on, a small
    catalogue's the full sample."""
    assert _auto.auto_test_users(3_416, 2048) == _auto.AUTO_TEST_USERS
    assert _auto.auto_test_users(135_000, 2048) == _auto.AUTO_TEST_CELLS // 135_000 < _auto.AUTO_TEST_USERS
    assert _auto.auto_test_users(1_000_000, 2048) == 2048 and _auto.auto_test_users(1_000_000, 6040) == 6040
    assert _auto.auto_test_users(10**9, None) == 2048  # validation's own default when it is not capped
