"""The count families (popularity, item-kNN, EASE) on the inputs that broke them: empty histories among the
training sequences, and EASE's scoring of long histories."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from aimass.zoo import family_class
from aimass.zoo.contract import N_ITEMS, contract_data
from aimass.zoo.ease import EASE, _distinct


@pytest.mark.parametrize("family, params", [("popularity", {}), ("popularity", {"recency_half_life": 2.0}),
                                            ("itemknn", {}), ("ease", {})])
def test_an_empty_sequence_among_the_training_ones_and_the_histories(family, params):
    cls = family_class(family)
    for empty in ([], np.array([]), np.zeros(0, np.int64)):  # a bare [] and np.array([]) are float64
        est = cls(**params).fit([[1, 2, 3], empty, np.array([2, 3])], 3)
        for histories in ([[1], empty], [empty], [[3, 1], []]):
            scores = est.score(histories)
            assert scores.shape == (len(histories), 4) and np.isneginf(scores[:, 0]).all()
            assert np.isfinite(scores[:, 1:]).all()


def _old_scores(est: EASE, histories) -> np.ndarray:
    """EASE's scores as they were computed before scoring went a block of rows at a time."""
    n = est.n_items_ + 1
    out = np.empty((len(histories), n), dtype=np.float32)
    prior = 1e-6 * est.popularity_ / max(float(est.popularity_.max()), 1.0)
    for r, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)
        h = h[(h > 0) & (h < n)]
        if est.config_.decay == 1.0:
            out[r] = est.weights_[_distinct(h)].sum(0) + prior
            continue
        last = len(h) - 1 - np.unique(h[::-1], return_index=True)[1]
        w = est.config_.decay ** (len(h) - 1 - last).astype(np.float32)
        out[r] = w @ est.weights_[h[last]] + prior
    out[:, 0] = -np.inf
    return out


@pytest.mark.parametrize("decay", [1.0, 0.7])
def test_ease_scores_are_those_of_the_one_product(decay, tmp_path):
    train, held = contract_data()
    est = EASE(decay=decay).fit(train, N_ITEMS)
    held = [*held, np.array([3, 3, 7, 3, 1, 0, 99, 12])]  # repeats, padding and an unknown id
    np.testing.assert_array_equal(est.score(held), _old_scores(est, held))
    est.save(tmp_path / "m")
    loaded = EASE.load(tmp_path / "m")  # memory-mapped weights
    np.testing.assert_array_equal(loaded.score(held), _old_scores(est, held))


def test_ease_row_sums_over_many_blocks():
    """Blocks of 3 rows: an unweighted sum is still exact (rows added in the same order), a weighted one
    equal up to float rounding."""
    from aimass.zoo.ease import _row_sum

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((200, 64)).astype(np.float32)
    rows = np.sort(rng.choice(np.arange(1, 200), 50, replace=False))
    w = (0.9 ** np.arange(50)).astype(np.float32)
    small = 3 * 64 * 4
    np.testing.assert_array_equal(_row_sum(weights, rows, block_bytes=small), weights[rows].sum(0))
    np.testing.assert_allclose(_row_sum(weights, rows, w, block_bytes=small), w @ weights[rows], rtol=1e-5,
                               atol=1e-5)
    assert _row_sum(weights, rows[:0]).shape == (64,) and not _row_sum(weights, rows[:0]).any()


def test_itemknn_similarity_is_the_same_whatever_the_pairs_and_rows_taken_at_once(monkeypatch):
    """Statistics summed a few pairs at a time and the similarity pruned a few rows at a time (what bounds the
    memory of a large dataset) give the similarity of one pass, to the bit."""
    from aimass.zoo import item_knn

    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 301, rng.integers(0, 40)) for _ in range(300)]
    whole = item_knn.ItemKNN(symmetric=0.3).fit(seqs, 300).similarity_
    monkeypatch.setattr(item_knn, "_PAIRS_AT_ONCE", 50)
    monkeypatch.setattr(item_knn, "_ROWS_AT_ONCE", 7)
    parts = item_knn.ItemKNN(symmetric=0.3).fit(seqs, 300).similarity_
    assert whole.nnz > 1000 and whole.shape == parts.shape == (301, 301) and parts.dtype == np.float32
    np.testing.assert_array_equal(parts.indptr, whole.indptr)
    np.testing.assert_array_equal(parts.indices, whole.indices)
    np.testing.assert_array_equal(parts.data, whole.data)
    assert not parts.diagonal().any()  # no item is its own neighbour, in any block


def test_itemknn_shrink_ranks_a_pair_seen_often_above_one_seen_once_among_rare_items():
    """Cosine alone gives two items seen once, together, the top similarity (1.0), above a pair seen together
    50 times out of 100 (0.5): chance over taste, which cost real sparse data most of item-kNN's accuracy."""
    from aimass.zoo import item_knn

    seqs = [np.array([1, 2])] * 50 + [np.array([1, 3])] * 50 + [np.array([2, 5])] * 50 + [np.array([4, 6])]
    sims = {}
    for shrink in (0, 20):
        sim = item_knn.ItemKNN(shrink=shrink, symmetric=0.0).fit(seqs, 6).similarity_.toarray()
        sims[shrink] = sim
        assert sim[4, 6] > 0 and sim[1, 2] > 0
    assert sims[0][4, 6] > sims[0][1, 2]  # the pair seen once wins without shrink
    assert sims[20][1, 2] > sims[20][4, 6]  # and loses with it
    np.testing.assert_allclose(sims[20][1, 2], 50 / (np.sqrt(100 * 100) + 20), rtol=1e-6)


def test_an_itemknn_saved_before_shrink_loads_as_fitted_without_it(tmp_path):
    import json

    from aimass.zoo import item_knn

    est = item_knn.ItemKNN(shrink=0).fit([np.array([1, 2, 3])] * 3, 4)
    est.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    del meta["config"]["shrink"]  # as a model saved before session 47
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    assert item_knn.ItemKNN.load(tmp_path / "m").config_.shrink == 0  # not the new default it was not fitted with


@pytest.mark.parametrize("decay", [1.0, 0.8])
def test_ease_scoring_a_long_history_does_not_copy_its_rows(decay, tmp_path):
    """A history of 3,000 items on 3,000: the [history x catalogue] copy was 36 MB (800 MB at 10,000 of
    20,000 items), per call; a block of rows at a time it is 4 MB."""
    n = 3000
    est = EASE(decay=decay)
    est.config_, est.n_items_ = EASE.Config(decay=decay), n
    weights = np.random.default_rng(0).standard_normal((n + 1, n + 1), dtype=np.float32)
    np.save(tmp_path / "w.npy", weights)
    del weights
    est.weights_ = np.load(tmp_path / "w.npy", mmap_mode="r")  # as a loaded model holds them
    est.popularity_ = np.ones(n + 1, dtype=np.float32)
    history = np.random.default_rng(1).permutation(np.arange(1, n + 1))
    tracemalloc.start()
    try:
        scores = est.score([history])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10e6, f"scoring one history peaked at {peak / 1e6:.0f} MB"
    assert scores.shape == (1, n + 1) and np.isfinite(scores[0, 1:]).all()
