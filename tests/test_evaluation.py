"""Splits and ranking metrics: exact expected splits, leakage guarantees, agreement with ir_measures."""
from __future__ import annotations

import math

import ir_measures
import numpy as np
import pandas as pd
import pytest
from ir_measures import RR, Qrel, R, ScoredDoc, nDCG

from aimass.evaluation import EvalSplits, _full_ranks, evaluate, make_splits, rank_metrics


def frame(rows: list[tuple], split: bool = False) -> pd.DataFrame:
    cols = ["user_id", "item_id", "timestamp"] + (["split"] if split else [])
    df = pd.DataFrame(rows, columns=cols)
    return df.astype({"user_id": "int64", "item_id": "int64", "timestamp": "int64"})


def as_lists(seqs: list[np.ndarray]) -> list[list[int]]:
    return [s.tolist() for s in seqs]


def random_frame(rng: np.random.Generator, n_users: int = 40, n_items: int = 15) -> pd.DataFrame:
    """Small catalogue so items recur within a user: leakage checks must rely on positions, not values."""
    lengths = rng.integers(1, 12, size=n_users)
    users = np.repeat(np.arange(100, 100 + n_users), lengths)
    df = pd.DataFrame({"user_id": users, "item_id": rng.integers(1000, 1000 + n_items, size=len(users)),
                       "timestamp": rng.integers(0, 50, size=len(users))})
    return df.sort_values("timestamp", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ splits

def test_leave_one_out_exact_sequences() -> None:
    df = frame([(1, 30, 1), (2, 10, 1), (1, 10, 2), (1, 20, 3), (2, 40, 2), (1, 30, 4), (3, 20, 5)])
    s = make_splits(df)
    assert s.item_ids.tolist() == [10, 20, 30, 40] and s.n_items == 4  # dense: 10->1, 20->2, 30->3, 40->4
    assert s.train_users.tolist() == [1, 2, 3]
    assert as_lists(s.train_sequences) == [[3, 1], [1, 4], [2]]  # user 1 loses 20 (val) and 30 (test)
    assert s.val_users.tolist() == [1] and as_lists(s.val_histories) == [[3, 1]]
    assert s.val_targets.tolist() == [2]
    assert s.test_users.tolist() == [1] and as_lists(s.test_histories) == [[3, 1, 2]]
    assert s.test_targets.tolist() == [3]
    assert s.val_targets.dtype == np.int64 and s.train_sequences[0].dtype == np.int64
    assert "leave-one-out" in repr(s) and isinstance(s, EvalSplits)


def test_leave_one_out_ignores_split_column_and_sorts_by_time() -> None:
    df = frame([(1, 3, 9, "test"), (1, 1, 1, "test"), (1, 2, 5, "train"), (1, 1, 5, "val")], split=True)
    s = make_splits(df, "leave-one-out")
    # time order 1, (2, 1) tie kept in row order, 3
    assert as_lists(s.train_sequences) == [[1, 2]]
    assert s.val_targets.tolist() == [1] and s.test_targets.tolist() == [3]


def test_ml1m_seq_exact_sequences() -> None:
    df = frame([
        (1, 10, 1, "train"), (1, 20, 2, "train"), (1, 30, 3, "val_input"), (1, 40, 4, "val"),
        (1, 50, 5, "test"),
        (2, 20, 1, "train"), (2, 60, 2, "test"),  # test user without a validation row
        (3, 10, 1, "train"), (3, 30, 2, "train"),  # train-only user
    ], split=True)
    s = make_splits(df, "ml1m-seq")
    assert s.n_items == 6 and s.item_ids.tolist() == [10, 20, 30, 40, 50, 60]
    assert s.train_users.tolist() == [1, 2, 3]
    assert as_lists(s.train_sequences) == [[1, 2], [2], [1, 3]]
    assert s.val_users.tolist() == [1] and as_lists(s.val_histories) == [[1, 2, 3]]
    assert s.val_targets.tolist() == [4]
    assert s.test_users.tolist() == [1, 2]
    assert as_lists(s.test_histories) == [[1, 2, 3, 4], [2]]
    assert s.test_targets.tolist() == [5, 6]


def test_ml1m_seq_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="split"):
        make_splits(frame([(1, 1, 1), (1, 2, 2)]), "ml1m-seq")
    with pytest.raises(ValueError, match="more than one 'test'"):
        make_splits(frame([(1, 1, 1, "train"), (1, 2, 2, "test"), (1, 3, 3, "test")], split=True), "ml1m-seq")
    with pytest.raises(ValueError, match="unknown split value"):
        make_splits(frame([(1, 1, 1, "train"), (1, 2, 2, "holdout")], split=True), "ml1m-seq")


def test_empty_and_malformed_frames_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        make_splits(frame([]))
    with pytest.raises(ValueError, match="empty"):
        make_splits(frame([], split=True), "ml1m-seq")
    with pytest.raises(ValueError, match="timestamp"):
        make_splits(pd.DataFrame({"user_id": [1], "item_id": [1]}))
    with pytest.raises(ValueError, match="protocol"):
        make_splits(frame([(1, 1, 1)]), "random")


@pytest.mark.parametrize("seed", range(5))
def test_leave_one_out_held_out_positions_never_reach_training(seed: int) -> None:
    df = random_frame(np.random.default_rng(seed))
    s = make_splits(df)
    full = {u: g["item_id"].to_numpy() for u, g in df.groupby("user_id", sort=True)}  # rows already time-ordered
    train = dict(zip(s.train_users.tolist(), s.train_sequences, strict=False))
    evaluated = set(s.test_users.tolist())
    for user, seq in full.items():
        dense_seq = np.searchsorted(s.item_ids, seq) + 1
        if user in evaluated:
            # train is exactly the prefix before the validation position: positions n-2, n-1 are absent
            assert len(train[user]) == len(seq) - 2
            assert train[user].tolist() == dense_seq[:-2].tolist()
        else:
            assert len(seq) < 3 and train[user].tolist() == dense_seq.tolist()
    for user, hist, target in zip(s.test_users.tolist(), s.test_histories, s.test_targets.tolist(), strict=False):
        assert len(hist) == len(full[user]) - 1 and target == np.searchsorted(s.item_ids, full[user][-1]) + 1
    for user, hist, target in zip(s.val_users.tolist(), s.val_histories, s.val_targets.tolist(), strict=False):
        assert hist.tolist() == train[user].tolist() and target == s.test_histories[
            s.test_users.tolist().index(user)][-1]
    with pytest.raises(ValueError):  # the shared buffer is read-only: a caller cannot corrupt a split
        s.train_sequences[0][0] = 0


@pytest.mark.parametrize("seed", range(3))
def test_ml1m_seq_training_sees_only_train_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    df = random_frame(rng)
    # per user: all but the last 3 rows train, then val_input, val, test (short users: what fits)
    pos_from_end = df.groupby("user_id").cumcount(ascending=False).to_numpy()
    df["split"] = np.select([pos_from_end == 0, pos_from_end == 1, pos_from_end == 2],
                            ["test", "val", "val_input"], "train")
    s = make_splits(df, "ml1m-seq")
    n_train = df[df["split"] == "train"].groupby("user_id").size()
    assert s.train_users.tolist() == n_train.index.tolist()
    assert [len(t) for t in s.train_sequences] == n_train.tolist()
    for user, hist in zip(s.test_users.tolist(), s.test_histories, strict=False):
        assert len(hist) == (df["user_id"] == user).sum() - 1  # everything but the test row
    n_val_seen = df[df["split"].isin(["train", "val_input"])].groupby("user_id").size()
    for user, hist in zip(s.val_users.tolist(), s.val_histories, strict=False):
        assert len(hist) == n_val_seen.get(user, 0)


def test_max_val_users_is_seeded_subset() -> None:
    df = random_frame(np.random.default_rng(0), n_users=60)
    full = make_splits(df)
    a, b = make_splits(df, max_val_users=10, seed=3), make_splits(df, max_val_users=10, seed=3)
    assert len(a.val_users) == 10 and a.val_users.tolist() == b.val_users.tolist()
    assert set(a.val_users.tolist()) <= set(full.val_users.tolist())
    lookup = dict(zip(full.val_users.tolist(), full.val_targets.tolist(), strict=False))
    assert a.val_targets.tolist() == [lookup[u] for u in a.val_users.tolist()]
    assert len(a.test_users) == len(full.test_users)  # test set is never sampled


# ----------------------------------------------------------------------------------------------- metrics

def test_hand_checked_ranks() -> None:
    scores = np.array([[9.0, 0.5, 0.4, 0.3, 0.2, 0.1]], dtype=np.float32)  # column 0 (padding) scores highest
    first = rank_metrics(scores, [1], [np.array([], np.int64)], ks=(10,))
    assert first["ndcg@10"] == 1.0 and first["recall@10"] == 1.0 and first["mrr"] == 1.0
    third = rank_metrics(scores, [3], [np.array([], np.int64)], ks=(2, 10))
    assert third["ndcg@10"] == pytest.approx(1 / math.log2(4)) and third["mrr"] == pytest.approx(1 / 3)
    assert third["recall@2"] == 0.0 and third["ndcg@2"] == 0.0
    # excluding item 1 from history moves target 3 up to rank 2
    hist = rank_metrics(scores, [3], [np.array([1])], ks=(10,))
    assert hist["ndcg@10"] == pytest.approx(1 / math.log2(3)) and hist["n_users"] == 1


def test_a_target_in_the_history_is_a_miss() -> None:
    """Kept rankable alone among the history, it was the one history item left: a model that scored the user's
    own items first hit it every time. A served answer leaves it out, so no model can."""
    scores = np.array([[0.0, 0.9, 0.8, 0.7], [0.0, 0.9, 0.8, 0.7]], dtype=np.float32)
    out = rank_metrics(scores, [2, 2], [np.array([1, 2]), np.array([1])])
    assert (out["mrr"], out["recall@10"]) == (0.5, 0.5)  # the first user's target is a miss, the second's 1st
    own_first = np.array([[0.0, 5.0, 4.0, 0.1, 0.2]], dtype=np.float32)  # the user's items scored highest
    assert rank_metrics(own_first, [1], [np.array([1, 2])])["ndcg@10"] == 0.0


def test_ties_count_against_target() -> None:
    n_items, k = 50, 10
    scores = np.zeros((4, n_items + 1), dtype=np.float32)
    out = rank_metrics(scores, [1, 7, 25, 50], [np.array([2, 3])] * 4, ks=(k,))
    assert out["ndcg@10"] == 0.0 and out["recall@10"] == 0.0
    assert out["mrr"] == pytest.approx(1 / (n_items - 2))  # last among the 48 candidates
    # a single tie with a better item is enough to lose a position
    tie = np.array([[0.0, 1.0, 1.0, 0.5]], dtype=np.float32)
    assert rank_metrics(tie, [1], [np.array([], np.int64)])["mrr"] == 0.5
    assert rank_metrics(tie, [2], [np.array([], np.int64)])["mrr"] == 0.5


def _reference(scores: np.ndarray, targets: np.ndarray, histories: list[np.ndarray]) -> dict[str, float]:
    qrels, run = [], []
    for u, (row, target, hist) in enumerate(zip(scores, targets, histories, strict=False)):
        qrels.append(Qrel(str(u), str(target), 1))
        excluded = set(hist.tolist()) | {0}  # a target among them is not in the run: a miss
        run += [ScoredDoc(str(u), str(i), float(s)) for i, s in enumerate(row) if i not in excluded]
    agg = ir_measures.calc_aggregate([nDCG @ 10, R @ 10, RR], qrels, run)
    return {"ndcg@10": agg[nDCG @ 10], "recall@10": agg[R @ 10], "mrr": agg[RR]}


def _random_case(seed: int, n_users: int = 30, n_items: int = 80):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n_users, n_items + 1)).astype(np.float32)
    targets = rng.integers(1, n_items + 1, size=n_users)
    histories = [rng.integers(1, n_items + 1, size=rng.integers(0, 20)) for _ in range(n_users)]
    histories[0] = np.append(histories[0], targets[0])  # one target that also sits in its history
    return scores, targets, histories


@pytest.mark.parametrize("seed", range(3))
def test_matches_ir_measures(seed: int) -> None:
    scores, targets, histories = _random_case(seed)
    ours, ref = rank_metrics(scores, targets, histories, ks=(10,)), _reference(scores, targets, histories)
    for name, value in ref.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_history_and_padding_never_in_top_k() -> None:
    rng = np.random.default_rng(1)
    n_items, k = 30, 10
    scores = rng.standard_normal((20, n_items + 1)).astype(np.float32)
    histories = [rng.choice(np.arange(1, n_items + 1), size=25, replace=False) for _ in range(20)]
    targets = np.array([h[0] for h in histories])  # target in history: a miss, in no list
    for row, hist in zip(scores, histories, strict=False):
        row[hist] += 100.0  # history items would dominate the top-K if they were not excluded
        row[0] = 1e9
    # 5 candidates per user (the unseen items) < K: coverage counts only real candidates
    out = rank_metrics(scores, targets, histories, ks=(k,))
    allowed = set()
    for hist in histories:
        allowed |= set(range(1, n_items + 1)) - set(hist.tolist())
    assert out["coverage@10"] == pytest.approx(len(allowed) / n_items) and out["recall@10"] == 0.0
    _, top, ok = _full_ranks(scores, targets, histories, k)  # the top-K lists themselves
    for row_top, row_ok, hist in zip(top, ok, histories, strict=False):
        shown = set(row_top[row_ok].tolist())
        assert 0 not in shown and not (shown & set(hist.tolist()))
        assert len(shown) == 5


def test_coverage_of_identical_lists() -> None:
    scores = np.tile(np.arange(21, dtype=np.float32), (5, 1))  # everyone's top-3 is items 20, 19, 18
    out = rank_metrics(scores, [1] * 5, [np.array([], np.int64)] * 5, ks=(3,))
    assert out["coverage@3"] == pytest.approx(3 / 20)


def test_evaluate_batches_match_one_shot() -> None:
    scores, targets, histories = _random_case(7, n_users=53)
    table = {id(h): i for i, h in enumerate(histories)}

    def score_fn(batch: list[np.ndarray]) -> np.ndarray:
        return scores[[table[id(h)] for h in batch]]

    one_shot = rank_metrics(scores, targets, histories, ks=(5, 10))
    for batch_size in (1, 7, 53, 500):
        done: list[int] = []  # what a progress bar is fed: each batch's users, as they are done
        streamed = evaluate(score_fn, histories, targets, 80, ks=(5, 10), batch_size=batch_size,
                            progress=done.append)
        assert sum(done) == 53 and len(done) == -(-53 // batch_size)
        assert streamed.keys() == one_shot.keys()
        for name in one_shot:
            assert streamed[name] == pytest.approx(one_shot[name], abs=1e-12), (batch_size, name)


def test_sampled_protocol_is_seeded_and_prefixed() -> None:
    scores, targets, histories = _random_case(3, n_users=40, n_items=300)
    table = {id(h): i for i, h in enumerate(histories)}

    def score_fn(batch: list[np.ndarray]) -> np.ndarray:
        return scores[[table[id(h)] for h in batch]]

    a = evaluate(score_fn, histories, targets, 300, protocol="sampled", batch_size=8, seed=1)
    b = evaluate(score_fn, histories, targets, 300, protocol="sampled", batch_size=13, seed=1)
    c = evaluate(score_fn, histories, targets, 300, protocol="sampled", batch_size=8, seed=2)
    assert a == pytest.approx(b, abs=1e-12)  # same samples whatever the batching (sums differ by rounding)
    assert a == evaluate(score_fn, histories, targets, 300, protocol="sampled", batch_size=8, seed=1)
    assert a["sampled_mrr"] != c["sampled_mrr"]
    assert all(key.startswith("sampled_") for key in a) and "sampled_ndcg@10" in a
    full = evaluate(score_fn, histories, targets, 300)
    assert a["sampled_mrr"] > full["mrr"]  # 100 negatives are an easier contest than 300 items
    # with every unseen item as a negative, sampled ranking equals full ranking
    everything = evaluate(score_fn, histories, targets, 300, protocol="sampled", n_negatives=10_000)
    assert everything["sampled_mrr"] == pytest.approx(full["mrr"], abs=1e-12)


def test_evaluate_rejects_bad_input() -> None:
    def bad_shape(batch: list[np.ndarray]) -> np.ndarray:
        return np.zeros((len(batch), 5), dtype=np.float32)

    hist = [np.array([1])]
    with pytest.raises(ValueError, match="shape"):
        evaluate(bad_shape, hist, [2], n_items=10)
    with pytest.raises(ValueError, match="protocol"):
        evaluate(bad_shape, hist, [2], n_items=10, protocol="popular")
    with pytest.raises(ValueError, match="targets"):
        rank_metrics(np.zeros((1, 4), np.float32), [0], hist)
    with pytest.raises(ValueError, match="NaN"):
        rank_metrics(np.full((1, 4), np.nan, np.float32), [1], hist)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [21, 401])  # 300 x 401 scores: large enough for torch's topk, loaded here
def test_top_k_matches_a_sort_by_score_then_column_even_with_ties_at_the_cutoff(n_cols: int, dtype):
    import torch  # noqa: F401  (top_k selects with torch's topk only where a process has loaded torch)

    from aimass.evaluation import top_k

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, (300, n_cols)).astype(dtype)  # many ties, often across the k-th place
    scores[rng.random(scores.shape) < 0.05] = -np.inf  # allowed but hopeless: still ranked, last
    scores[rng.random(scores.shape) < 0.05] = np.nan  # as hopeless as -inf (a tie with it)
    scores[rng.random(scores.shape) < 0.02] = np.inf  # first
    allowed = rng.random(scores.shape) > 0.2

    def key(x: float) -> float:
        return np.inf if np.isnan(x) or x == -np.inf else -x

    got, values = top_k(scores, 4, allowed)
    for row, ok, cols, vals in zip(scores, allowed, got, values, strict=True):
        want = [c for c in sorted(range(1, n_cols), key=lambda c: (key(row[c]), c)) if ok[c]][:4]
        assert [c for c in cols if c >= 0] == want
        np.testing.assert_array_equal(vals[: len(want)], [row[c] for c in want])
    one, _ = top_k(np.array([0, 2, 0, 1, 0, 2, 2, 2.0]), 3)
    assert one.tolist() == [1, 5, 6]  # the tie at the cutoff goes to the lowest-numbered columns


def test_without_coverage_the_ranks_are_the_same_and_no_list_is_built() -> None:
    scores, targets, histories = _random_case(5, n_users=40)
    whole = evaluate(lambda h: scores[: len(h)], histories, targets, 80, batch_size=64)
    lean = evaluate(lambda h: scores[: len(h)], histories, targets, 80, batch_size=64, coverage=False)
    assert lean == {k: v for k, v in whole.items() if not k.startswith("coverage")}
    assert _full_ranks(scores, targets, histories, 10, lists=False)[1:] == (None, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_large_catalogues_ranks_and_lists_are_the_masked_paths_to_the_column(monkeypatch, dtype):
    """_full_ranks_large (no [users, columns] mask; large catalogues where torch is loaded) gives what the masked
    path gives: ranks, lists and their validity, with ties across the K-th place, repeated and seen targets,
    -inf and +inf scores."""
    import torch  # noqa: F401

    from aimass import evaluation

    rng = np.random.default_rng(1)
    n_cols, n = 300, 200
    scores = rng.integers(0, 4, (n, n_cols)).astype(dtype)  # ties everywhere, often at the cutoff
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    scores[rng.random(scores.shape) < 0.02] = np.inf
    scores[:, 0] = -np.inf
    scores[:5] = 1.0  # rows of one value: every list is a tie searched whole
    targets = rng.integers(1, n_cols, n)
    histories = [rng.integers(1, n_cols, rng.integers(0, 30)) for _ in range(n)]  # repeats inside
    for u in range(0, n, 7):  # a target the user had: a miss on both paths
        histories[u] = np.append(histories[u], targets[u])
    histories[3] = np.zeros(0, np.int64)
    want = evaluation._full_ranks(scores, targets, histories, 10)
    monkeypatch.setattr(evaluation, "_FAST_COLS", 10)
    got = evaluation._full_ranks(scores, targets, histories, 10)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w)
    lean = evaluation._full_ranks(scores, targets, histories, 10, lists=False)
    np.testing.assert_array_equal(lean[0], want[0])
