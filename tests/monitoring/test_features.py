"""The per-answer and per-window figures on hand-made answers: what each column means, exactly."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from aimass.monitoring._features import Catalogue, per_answer, window_figures
from aimass.monitoring._stats import categorical, numeric


def _catalogue(labels: bool = True) -> Catalogue:
    return Catalogue(item_ids=np.array([10, 20, 30, 40]), popularity=np.array([0.0, 1.0, 3.0, 7.0]),
                     labels=np.array(["rock", "rock", "jazz", "pop"], dtype=object) if labels else None,
                     label="genre" if labels else None, user_ids=np.array([5, 2]), activity=np.array([50, 20]))


def _answers() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [2, None, 99],
        "history_length": [3, 0, 2],
        "history_tail": [[10, 30, 30], [], [40, 777]],
        "items": [[20, 30, 40], [40, 30], [10, 20, 30, 40]],
        "scores": [[0.9, 0.5, 0.2], [7.0, 3.0], [0.8, 0.6, 0.4, 0.1]],
        "strategy": ["model", "popular", "model"],
    })


def test_per_answer_columns():
    f = per_answer(_answers(), _catalogue(), k=3)
    assert f["user_activity"].tolist() == [20, 0, 0]  # unknown and anonymous users: 0
    assert f["history_popularity"][0] == pytest.approx((math.log(1) + 2 * math.log(4)) / 3)
    assert math.isnan(f["history_popularity"][1])  # nothing to measure
    assert f["history_popularity"][2] == pytest.approx(math.log(8) / 2)  # an unknown item counts as unseen
    assert f["history_label"].tolist() == ["jazz", None, "pop"]
    # lists cut to k = 3: the 4th item of the last list is not measured
    assert f["items_popularity"][2] == pytest.approx((0 + math.log(2) + math.log(4)) / 3)
    assert f["score_top"].tolist()[0::2] == [0.9, 0.8] and f["score_spread"][2] == pytest.approx(0.8 - 0.4)
    assert math.isnan(f["score_top"][1])  # a cold start's popularity counts are another scale
    assert f["strategy"].tolist() == ["model", "popular", "model"]


def test_a_list_shorter_than_k_is_not_measured_on_what_depends_on_its_length():
    """A client asking for 2 items: its list's mean popularity and score spread sit above a full list's by
    construction (best first), which a window of such clients would report as drift."""
    short = _answers().assign(items=[[20, 30], [40, 30], [10, 20]], scores=[[0.9, 0.5], [7.0, 3.0], [0.8, 0.6]])
    f = per_answer(short, _catalogue(), k=3)
    assert f["items_popularity"].isna().all() and f["score_spread"].isna().all()
    assert f["score_top"].tolist()[0::2] == [0.9, 0.8]  # the top score does not depend on the length


def test_window_figures_with_and_without_labels():
    w = window_figures(_answers()["items"], _catalogue(), k=3)
    assert w["coverage"] == 1.0 and w["diversity_label"] == "genre"
    # the 2-item list is left out: [20, 30, 40] has 3 genres, [10, 20, 30] (cut to 3) two
    assert w["diversity"] == pytest.approx(np.mean([3 / 3, 2 / 3]), abs=1e-6)
    assert (w["answers"], w["short_lists"]) == (2, 1)
    bare = window_figures(_answers()["items"], _catalogue(labels=False), k=3)
    assert bare["diversity"] is None and per_answer(_answers(), _catalogue(False))["history_label"].isna().all()


def test_tests_need_both_a_large_and_a_significant_difference():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=2000)
    assert not numeric(ref, rng.normal(size=50) + 0.3)[2]  # large but not significant at 50 rows
    assert not numeric(ref, rng.normal(size=50_000) + 0.05)[2]  # significant but small
    d, p, drifted = numeric(ref, rng.normal(size=500) + 0.5)
    assert drifted and d >= 0.1 and p < 1e-4
    cats = np.array(["a", "b", "c"])
    assert not categorical(rng.choice(cats, 2000), rng.choice(cats, 300))[2]
    assert categorical(rng.choice(cats, 2000), rng.choice(cats, 300, p=[0.7, 0.2, 0.1]))[2]
    assert categorical(np.array(["x"] * 10), np.array(["x"] * 5)) == (0.0, 1.0, False)


def test_a_window_too_small_for_the_test_is_not_flagged_and_a_large_shift_still_is():
    """Chi-square needs expected counts of 5: one cold start against a reference that had none gave p ~ 1e-15,
    so a window of one answer flagged `strategy`."""
    assert not categorical(np.array(["model"] * 2000), np.array(["popular"]))[2]
    assert not categorical(np.array(["model"] * 1980 + ["popular"] * 20), np.array(["popular"] * 3))[2]
    # 30% cold starts in 400 answers, against a reference without any: a real shift in who is served
    assert categorical(np.array(["model"] * 2000), np.array(["model"] * 280 + ["popular"] * 120))[2]


def test_item_ids_past_2_53_are_measured_exactly():
    big = 2**60
    cat = Catalogue(item_ids=np.array([big + 1, big + 2]), popularity=np.array([100.0, 1.0]), labels=None,
                    label=None, user_ids=np.array([1]), activity=np.array([1]))
    answers = pd.DataFrame({"user_id": [1], "history_length": [1], "history_tail": [[big + 1]],
                            "items": [[big + 1, big + 2]], "scores": [[0.5, 0.4]], "strategy": ["model"]})
    f = per_answer(answers, cat, k=2)
    assert f["history_popularity"][0] == pytest.approx(math.log1p(100))  # big + 1, not big (a miss)
    assert window_figures(answers["items"], cat, k=2)["coverage"] == 1.0  # two distinct items, both listed


def test_window_figures_count_only_lists_of_k_items():
    """A client asking for 5 of the reference's 10: its lists cover half as much by construction, which read
    against the reference's full lists looked like a collapse of coverage."""
    rng = np.random.default_rng(0)
    cat = Catalogue(item_ids=np.arange(1, 201), popularity=np.ones(200), labels=None, label=None,
                    user_ids=np.array([1]), activity=np.array([1]))
    full = pd.Series([rng.choice(np.arange(1, 201), 10, replace=False).tolist() for _ in range(40)])
    short = pd.Series([x[:5] for x in full])
    reference = window_figures(full, cat, k=10)
    assert (reference["answers"], reference["short_lists"]) == (40, 0)
    only_short = window_figures(short, cat, k=10)
    assert (only_short["answers"], only_short["short_lists"], only_short["coverage"]) == (0, 40, None)
    mixed = window_figures(pd.concat([full[:20], short[20:]], ignore_index=True), cat, k=10)
    assert (mixed["answers"], mixed["short_lists"]) == (20, 20)
    assert mixed["coverage"] == window_figures(full[:20], cat, k=10)["coverage"]
    # at a fixed size: a sample of the full lists, the same one each time
    sized = window_figures(full, cat, k=10, size=20)
    assert sized["answers"] == 20 and sized == window_figures(full, cat, k=10, size=20)
    assert sized["coverage"] < reference["coverage"]
