"""Engine.top, the one top-k of serving (aimass.evaluation.top_k underneath): best first, ties in catalogue
order, never the padding column nor an excluded item, scores JSON can carry."""
from __future__ import annotations

import json

import numpy as np

from aimass.serving import Engine


def _engine(n_items: int) -> Engine:
    e = Engine.__new__(Engine)  # no model: top() needs only the catalogue
    e.item_ids = np.arange(100, 100 + n_items)  # raw ids differ from dense ids on purpose
    return e


def test_top_is_best_first_with_ties_in_catalogue_order_and_never_an_excluded_item():
    e = _engine(6)
    scores = np.array([9.0, 1.0, 5.0, 5.0, 7.0, 5.0, 2.0])  # column 0 is padding: never returned
    ok = np.ones(7, dtype=bool)
    ok[4] = False
    items, top = e.top(scores, ok, 4)
    assert items == [101, 102, 104, 105] and top == [5.0, 5.0, 5.0, 2.0]
    items, _ = e.top(scores, ok, 50)  # k beyond what is allowed: all allowed, no padding
    assert items == [101, 102, 104, 105, 100]


def test_top_scores_are_finite_and_nothing_allowed_is_empty():
    e = _engine(3)
    items, top = e.top(np.array([0.0, np.inf, -np.inf, 1.0]), np.ones(4, dtype=bool), 3)
    assert items == [100, 102, 101] and json.loads(json.dumps(top, allow_nan=False)) == top  # -inf: last
    assert e.top(np.zeros(4), np.zeros(4, dtype=bool), 3) == ([], [])
