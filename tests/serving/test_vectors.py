"""Scoring by item vectors and its nearest-neighbour index (serving/_vectors.py), on a real two-tower model
trained here over a 20,000-item catalogue: the index's answers against exact scoring of every item."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aimass.evaluation import top_k
from aimass.serving._vectors import Vectors
from aimass.zoo.two_tower import TwoTower

N_ITEMS, CLUSTERS, K = 20_000, 200, 10


def clustered(n_users: int, seed: int, length: int = 10) -> list[np.ndarray]:
    """Each user plays items of one cluster (item id % CLUSTERS): structure the model can learn in seconds."""
    rng = np.random.default_rng(seed)
    out = []
    for c in rng.integers(0, CLUSTERS, n_users):
        out.append(c + CLUSTERS * rng.integers(0, N_ITEMS // CLUSTERS, length) + 1)
    return [np.minimum(s, N_ITEMS) for s in out]


@pytest.fixture(scope="module")
def model():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return TwoTower(dim=32, epochs=2, batch_size=256, max_len=8, patience=None, warmup_steps=0, lr=5e-3,
                        time_budget_s=20).fit(clustered(3000, seed=0), N_ITEMS)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def held() -> list[np.ndarray]:
    return clustered(200, seed=1)


def _exact(model, h: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return top_k(model.score([h])[0].astype(np.float64), K, ok)


def _recall(model, ann: Vectors, held, allowed: np.ndarray) -> float:
    hits = []
    for h in held:
        ok = allowed.copy()
        ok[h] = False  # the user's history is excluded, as /recommend does by default
        got, scores = ann.top(ann.user(h), ok, K)
        want, _ = _exact(model, h, ok)
        assert len(got) == K and ok[got].all(), "a blocked item came back"
        # candidates are re-scored exactly: the scores are the model's own
        np.testing.assert_allclose(scores, model.score([h])[0][got], rtol=1e-4, atol=1e-4)
        hits.append(len(set(got.tolist()) & set(want.tolist())) / K)
    return float(np.mean(hits))


def test_ann_answers_stay_above_the_recall_bound(model, held, tmp_path):
    ann = Vectors(model, 1, tmp_path)
    # the longest vectors are scored exactly besides the scan over every item
    assert ann.index is not None and ann.index.ntotal == N_ITEMS and len(ann.head) == 2048
    everything = np.ones(N_ITEMS + 1, dtype=bool)
    everything[0] = False
    assert _recall(model, ann, held, everything) >= 0.95
    half = everything.copy()
    half[1::2] = False  # a filter that keeps the even ids: candidates are drawn wider
    assert _recall(model, ann, held, half) >= 0.95


def test_a_narrow_filter_and_a_small_catalogue_are_scored_exactly(model, held, tmp_path):
    narrow = np.zeros(N_ITEMS + 1, dtype=bool)
    narrow[1:301] = True
    ann, exact = Vectors(model, 1, tmp_path), Vectors(model, N_ITEMS + 1, tmp_path)
    assert exact.index is None and ann.index is not None
    for h in held[:50]:
        for vec in (ann, exact):
            ok = narrow.copy() if vec is ann else np.r_[False, np.ones(N_ITEMS, bool)]
            got, _ = vec.top(vec.user(h), ok, K)
            want, _ = _exact(model, h, ok)
            np.testing.assert_array_equal(got, want)


def test_the_index_is_built_once_per_table_and_shared(model, held, tmp_path):
    first = Vectors(model, 1, tmp_path)
    files = list(tmp_path.glob("*.faiss"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = Vectors(model, 1, tmp_path)  # a second replica loads the same file
    assert files[0].stat().st_mtime_ns == stamp and list(tmp_path.glob("*.faiss")) == files
    ok = np.r_[False, np.ones(N_ITEMS, bool)]
    for h in held[:20]:
        np.testing.assert_array_equal(first.top(first.user(h), ok, K)[0], second.top(second.user(h), ok, K)[0])


class _Table:
    """An estimator face over fixed vectors: score = user_vectors @ item_table.T."""

    def __init__(self, table: np.ndarray):
        self.table = table

    def item_table(self) -> np.ndarray:
        return self.table

    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.stack([self.table[h].sum(0) for h in histories])


@pytest.mark.parametrize("popular_scale", [4.0, 1.0])
def test_the_scan_finds_the_exact_top_k_with_or_without_a_popular_head(popular_scale, tmp_path):
    # random directions in 63 dimensions (padded to 64 for the quantiser, which must leave the scores alone).
    # 4.0: a popular 2,000 four times longer wins most queries, and the exactly scored head must hold them;
    # 1.0: no item is longer than the rest (by design), and the scan must find most of the top 10 outside the head.
    rng = np.random.default_rng(3)
    n, dim = 40_000, 63
    table = rng.standard_normal((n + 1, dim)).astype(np.float32)
    table[0] = 0.0
    popular = rng.choice(np.arange(1, n + 1), 2_000, replace=False)
    table[popular] *= popular_scale
    ann = Vectors(_Table(table), 1, tmp_path)
    assert ann.index.ntotal == n and ann.index.d == 64 and len(ann.head) == 2048
    if popular_scale > 1:
        assert set(popular.tolist()) <= set(ann.head.tolist())
    blocked = rng.choice(np.arange(1, n + 1), 50, replace=False)
    hits, in_head = [], []
    for _ in range(100):
        u = rng.standard_normal(dim).astype(np.float32)
        ok = np.r_[False, np.ones(n, bool)]
        ok[blocked] = False
        got, scores = ann.top(u, ok, K)
        want, _ = top_k(np.r_[-np.inf, (table[1:] @ u).astype(np.float64)], K, ok)
        assert ok[got].all()
        np.testing.assert_allclose(scores, table[got] @ u, rtol=1e-5, atol=1e-5)  # re-scored exactly
        hits.append(len(set(got.tolist()) & set(want.tolist())) / K)
        in_head.append(len(set(ann.head.tolist()) & set(want.tolist())) / K)
    assert np.mean(hits) >= 0.99
    assert np.mean(in_head) > 0.9 if popular_scale > 1 else np.mean(in_head) < 0.5


def test_a_catalogue_within_the_head_needs_no_index(tmp_path):
    rng = np.random.default_rng(4)
    table = rng.standard_normal((1_001, 8)).astype(np.float32)
    table[0] = 0.0
    ann = Vectors(_Table(table), 1, tmp_path)
    assert ann.index is None and len(ann.head) == 1_000 and not list(tmp_path.glob("*.faiss"))
    for _ in range(20):
        u = rng.standard_normal(8).astype(np.float32)
        ok = rng.random(1_001) < 0.9
        ok[0] = False
        want, best = top_k(np.r_[-np.inf, (table[1:] @ u).astype(np.float64)], K, ok)
        got, scores = ann.top(u, ok, K)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(scores, best, rtol=1e-5)
