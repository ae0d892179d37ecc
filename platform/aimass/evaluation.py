"""Offline evaluation: held-out splits and ranking metrics for next-item recommenders.

Splits and metrics live together because they share one contract: targets are dense item indices
(1..n_items, 0 = padding) and every target must be rankable, so the dense item space is built from
every interaction, held-out ones included.

Full ranking is the default protocol: the target competes with the whole catalogue minus the
user's history. Sampled ranking (target vs. 100 random unseen items) is kept only to compare with
older papers; its keys carry a ``sampled_`` prefix so the two can never be mixed up in a report.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

PROTOCOLS = ("leave-one-out", "ml1m-seq")
SPLIT_VALUES = ("train", "val_input", "val", "test")
REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")

ScoreFn = Callable[[list[np.ndarray]], np.ndarray]


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array comparison has no single truth value
class EvalSplits:
    """Train sequences plus validation/test (history, target) pairs, all in dense item ids."""

    item_ids: np.ndarray  # raw item ids, sorted; dense id = position + 1
    n_items: int
    train_users: np.ndarray
    train_sequences: list[np.ndarray]
    val_users: np.ndarray
    val_histories: list[np.ndarray]
    val_targets: np.ndarray
    test_users: np.ndarray
    test_histories: list[np.ndarray]
    test_targets: np.ndarray
    protocol: str

    def __repr__(self) -> str:  # the default repr would print every sequence
        return (f"EvalSplits(protocol={self.protocol!r}, n_items={self.n_items}, "
                f"train_users={len(self.train_users)}, val_users={len(self.val_users)}, "
                f"test_users={len(self.test_users)})")


def _runs(values: np.ndarray, users: np.ndarray, wanted: np.ndarray) -> list[np.ndarray]:
    """Each wanted user's contiguous run of ``values`` (``users`` is sorted); empty when absent."""
    uniq, start, count = np.unique(users, return_index=True, return_counts=True)
    if len(uniq) == 0:
        return [values[:0] for _ in range(len(wanted))]
    pos = np.minimum(np.searchsorted(uniq, wanted), len(uniq) - 1)
    hit = uniq[pos] == wanted
    lo = np.where(hit, start[pos], 0)
    hi = lo + np.where(hit, count[pos], 0)
    return [values[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=False)]


def _one_per_user(users: np.ndarray, dense: np.ndarray, mask: np.ndarray,
                  role: str) -> tuple[np.ndarray, np.ndarray]:
    """Users owning a ``role`` row and that row's item; a second such row would make the target ambiguous."""
    owners, counts = np.unique(users[mask], return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"ml1m-seq: {int((counts > 1).sum())} user(s) have more than one {role!r} row, "
                         f"e.g. user {int(owners[counts > 1][0])}")
    return owners, dense[mask]  # rows are user-sorted, so this lines up with `owners`


def protocol_for(interactions: pd.DataFrame) -> str:
    """The split protocol a dataset calls for: its own train / validation / test roles when it has a
    ``split`` column (``ml1m-seq``), else leave-one-out by time."""
    return "ml1m-seq" if "split" in interactions.columns else "leave-one-out"


def metric_name(split: str, metric: str, k: int | None = 10) -> str:
    """The one spelling of a metric in aimass's results: ``metric_name("val", "ndcg") == "val_ndcg@10"``
    (MLflow's key is ``aimass.tracking.metric_key`` of it)."""
    return f"{split}_{metric}" + (f"@{k}" if k is not None else "")


def make_splits(interactions: pd.DataFrame, protocol: str | None = None, *,
                max_val_users: int | None = None, seed: int = 0) -> EvalSplits:
    """Split canonical interactions into train sequences and validation/test (history, target) pairs.

    ``leave-one-out``: per user, last item = test target, second-to-last = validation target, the rest
    is training; users with fewer than 3 interactions only train. ``ml1m-seq``: the gSASRec authors'
    MovieLens-1M rule driven by the ``split`` column (train / val_input / val / test rows).
    ``None`` (the default): the one the data calls for (:func:`protocol_for`). ``max_val_users`` keeps a
    seeded random subset of validation users (early stopping is then cheaper).
    """
    protocol = protocol or protocol_for(interactions)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown split protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in interactions.columns]
    if missing:
        raise ValueError(f"interactions lack required column(s) {missing}")
    if len(interactions) == 0:
        raise ValueError("interactions are empty: nothing to split")
    if protocol == "ml1m-seq" and "split" not in interactions.columns:
        raise ValueError("protocol 'ml1m-seq' needs a 'split' column (train / val_input / val / test)")
    if max_val_users is not None and max_val_users < 0:
        raise ValueError(f"max_val_users must be >= 0, got {max_val_users}")

    users = interactions["user_id"].to_numpy(np.int64)
    items = interactions["item_id"].to_numpy(np.int64)
    ts = interactions["timestamp"].to_numpy(np.int64)
    # Group by user, time order inside; the row index as last key keeps equal timestamps in row order.
    order = np.lexsort((np.arange(len(users)), ts, users))
    users, items = users[order], items[order]
    item_ids = np.unique(items)
    dense = np.searchsorted(item_ids, items).astype(np.int64) + 1
    dense.setflags(write=False)  # every sequence below is a view of this buffer; keep them immutable

    if protocol == "leave-one-out":
        train_users, start, count = np.unique(users, return_index=True, return_counts=True)
        end = start + count
        evaluated = count >= 3
        # Evaluated users lose their last two rows; slicing by position (not by item value) is what
        # guarantees a held-out interaction cannot reach training even if its item recurs earlier.
        train_end = np.where(evaluated, end - 2, end)
        train_sequences = [dense[a:b] for a, b in zip(start.tolist(), train_end.tolist(), strict=False)]
        val_users = test_users = train_users[evaluated]
        ev_start, ev_end = start[evaluated].tolist(), end[evaluated].tolist()
        val_histories = [dense[a:b - 2] for a, b in zip(ev_start, ev_end, strict=False)]
        val_targets = dense[end[evaluated] - 2]
        test_histories = [dense[a:b - 1] for a, b in zip(ev_start, ev_end, strict=False)]
        test_targets = dense[end[evaluated] - 1]
    else:
        split = interactions["split"].astype(str).to_numpy()[order]
        unknown = sorted(set(np.unique(split).tolist()) - set(SPLIT_VALUES))
        if unknown:
            raise ValueError(f"ml1m-seq: unknown split value(s) {unknown}; allowed {list(SPLIT_VALUES)}")
        is_train, is_test = split == "train", split == "test"
        train_users = np.unique(users[is_train])
        train_sequences = _runs(dense[is_train], users[is_train], train_users)
        val_users, val_targets = _one_per_user(users, dense, split == "val", "val")
        val_seen = is_train | (split == "val_input")
        val_histories = _runs(dense[val_seen], users[val_seen], val_users)
        test_users, test_targets = _one_per_user(users, dense, is_test, "test")
        test_histories = _runs(dense[~is_test], users[~is_test], test_users)

    if max_val_users is not None and max_val_users < len(val_users):
        keep = np.sort(np.random.default_rng(seed).choice(len(val_users), max_val_users, replace=False))
        val_users, val_targets = val_users[keep], val_targets[keep]
        val_histories = [val_histories[i] for i in keep.tolist()]

    return EvalSplits(item_ids=item_ids, n_items=len(item_ids), train_users=train_users,
                      train_sequences=train_sequences, val_users=val_users, val_histories=val_histories,
                      val_targets=np.asarray(val_targets, np.int64), test_users=test_users,
                      test_histories=test_histories, test_targets=np.asarray(test_targets, np.int64),
                      protocol=protocol)


# ---------------------------------------------------------------------------------------------- metrics

TORCH_TOP_K_ITEMS = 20_000
MISS = np.iinfo(np.int64).max // 2  # the rank of a target no answer can hold (one the user had): in no top K


def _pairs(histories: Sequence[np.ndarray], n_cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every history item, flat; with ``n_cols``, a column outside 0..n_cols - 1 is refused."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    if not lengths.sum():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cols = np.concatenate([np.asarray(h, np.int64) for h in histories])
    if n_cols is not None and (cols.min() < 0 or cols.max() >= n_cols):
        raise ValueError(f"history item ids must lie in 0..{n_cols - 1}")
    return np.repeat(np.arange(len(histories)), lengths), cols


def _candidates(n_cols: int, targets: np.ndarray, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Boolean [b, n_cols]: which columns may be ranked for each user (the target among them), and boolean [b]:
    whose target is in their history.

    History items are excluded, as served answers exclude them. A target the user had before (repeat
    consumption) is then a miss for every model: kept rankable alone among the history, it was the one history
    item left, and any model that scored the user's own items first hit it (benchmarks/repeat_targets.py: on a
    log with 61% repeat targets EASE's test NDCG@10 read 0.5678 that way, 0.0266 counted so).
    """
    b = len(targets)
    valid = np.ones((b, n_cols), dtype=bool)
    valid[_pairs(histories, n_cols)] = False
    valid[:, 0] = False  # padding is never a recommendation
    seen = ~valid[np.arange(b), targets]
    valid[np.arange(b), targets] = True  # the target's own column: its rank counts the others above it
    return valid, seen


def _check_batch(scores: np.ndarray, targets: np.ndarray, histories: Sequence[np.ndarray]) -> None:
    if scores.ndim != 2 or scores.shape[0] != len(targets) or len(histories) != len(targets):
        raise ValueError(f"scores {scores.shape}, {len(targets)} targets and {len(histories)} histories "
                         "must describe the same users ([n_users, n_items + 1] scores)")
    if len(targets) and (targets.min() < 1 or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets must be dense item ids in 1..{scores.shape[1] - 1}")
    if np.isnan(scores).any():  # NaN compares false both ways and would silently rank as "not above"
        raise ValueError("scores contain NaN")


def _full_ranks(scores: np.ndarray, targets: np.ndarray, histories: Sequence[np.ndarray],
                k_max: int, lists: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """0-based target ranks, plus each user's top-``k_max`` columns (best first) and their validity (None, None
    without ``lists``: only coverage needs them, and the top-K search costs more than the ranks)."""
    if scores.shape[1] >= _FAST_COLS and sys.modules.get("torch") is not None:
        return _full_ranks_large(scores, targets, histories, k_max, lists)
    valid, seen = _candidates(scores.shape[1], targets, histories)
    rows = np.arange(len(targets))
    t = scores[rows, targets][:, None]
    # ">=" (minus the target itself) puts the target after every equal score: a constant model earns 0.
    rank0 = ((scores >= t) & valid).sum(axis=1) - 1
    rank0[seen] = MISS
    if not lists:
        return rank0, None, None
    valid[rows[seen], targets[seen]] = False  # and not in the list, as a served answer leaves it out
    # a user with fewer than K candidates gets -1 columns in its list; `top_ok` filters them out
    top, _ = top_k(scores, k_max, valid)
    return rank0, top, top >= 0


_BATCH_CELLS, _MIN_BATCH = 2**26, 16
# From this many columns a batch's ranks and lists come from passes over the scores alone, never a mask of them
# (_full_ranks_large): at a million items a batch of 256 users is a gigabyte a pass
_FAST_COLS = 100_000


def _full_ranks_large(scores: np.ndarray, targets: np.ndarray, histories: Sequence[np.ndarray],
                      k_max: int, lists: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """_full_ranks without a [users, columns] mask, the same answers (tested): a history holds few of a large
    catalogue's columns, so the target's rank is every column at or above it less the excluded ones there, and a
    top-K list is the first K allowed among the top K + (most excluded in a row) by score, ordered by score, then
    column; a row whose K-th allowed score ties the last candidate's (a tie may reach past them) is searched whole.
    1,000,000 items, 256 users: 0.8 s against 3.1-5.5 on busy cores (the mask, top_k's passes over it)."""
    import torch

    b, n_cols = scores.shape
    rows = np.arange(b)
    t = scores[rows, targets]
    hr, hc = _pairs(histories, n_cols)
    # each row's excluded columns once (a repeated item, the padding column), as keys row * n_cols + column
    keys = np.unique(np.concatenate([hr * n_cols + hc, rows * n_cols]))
    r, c = np.divmod(keys, n_cols)
    seen = np.zeros(b, dtype=bool)
    seen[r[c == targets[r]]] = True
    other = c != targets[r]
    rank0 = (np.count_nonzero(scores >= t[:, None], axis=1)
             - np.bincount(r[other & (scores[r, c] >= t[r])], minlength=b) - 1)
    rank0[seen] = MISS
    if not lists:
        return rank0, None, None
    kk = min(n_cols, k_max + int(np.bincount(r, minlength=b).max()))
    vals, cand = (x.numpy() for x in torch.topk(torch.from_numpy(scores), kk, dim=1, sorted=False))
    out = np.isin(rows[:, None] * n_cols + cand, keys)  # the history, the padding (the target too, when seen)
    # -inf (a score no answer would rank) sorts last among allowed ones, as top_k puts it
    order = np.lexsort((cand, -vals, out), axis=1)
    cand, vals, out = (np.take_along_axis(x, order, 1) for x in (cand, vals, out))
    top = cand[:, :k_max].copy()
    kth = vals[:, k_max - 1] if kk >= k_max else np.full(b, -np.inf)
    slow = np.flatnonzero(out[:, :k_max].any(1) | (kth <= vals.min(1)))
    if len(slow):  # searched whole, together (a model that scores many users all alike ties every row)
        allowed = np.ones((len(slow), n_cols), dtype=bool)
        inside = np.isin(r, slow)
        allowed[np.searchsorted(slow, r[inside]), c[inside]] = False
        got, _ = top_k(scores[slow], k_max, allowed)
        top[slow] = -1
        top[slow, :got.shape[1]] = got
    return rank0, top, top >= 0


def _sampled_ranks(scores: np.ndarray, targets: np.ndarray, histories: Sequence[np.ndarray],
                   user_index: np.ndarray, n_negatives: int, seed: int) -> np.ndarray:
    """0-based rank of the target among ``n_negatives`` random unseen items (fewer if fewer exist)."""
    valid, seen = _candidates(scores.shape[1], targets, histories)
    rows = np.arange(len(targets))
    valid[rows, targets] = False  # a negative must not be the target itself
    # One generator per user position keeps the sample independent of batch size.
    keys = np.stack([np.random.default_rng((seed, int(u))).random(scores.shape[1]) for u in user_index])
    keys[~valid] = np.inf
    m = min(n_negatives, scores.shape[1])
    neg = np.argpartition(keys, m - 1, axis=1)[:, :m]
    neg_ok = valid[rows[:, None], neg]
    t = scores[rows, targets][:, None]
    rank0 = ((np.take_along_axis(scores, neg, 1) >= t) & neg_ok).sum(axis=1)
    rank0[seen] = MISS  # a target the user had: a miss, as in full ranking
    return rank0


class _Totals:
    """Exact aggregation across batches: sums of per-user values and the union of top-K items."""

    def __init__(self, ks: tuple[int, ...], n_items: int) -> None:
        self.ks, self.n_items, self.n_users = ks, n_items, 0
        names = [f"{m}@{k}" for k in ks for m in ("ndcg", "recall")] + ["mrr"]
        self.sums = dict.fromkeys(names, 0.0)
        self.seen = {k: np.zeros(n_items + 1, dtype=bool) for k in ks}

    def add(self, rank0: np.ndarray, top: np.ndarray | None = None, top_ok: np.ndarray | None = None) -> None:
        self.n_users += len(rank0)
        per_user = {}
        for k in self.ks:
            hit = rank0 < k
            per_user[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(rank0 + 2.0), 0.0)
            per_user[f"recall@{k}"] = hit.astype(np.float64)
        per_user["mrr"] = np.where(rank0 < MISS, 1.0 / (rank0 + 1.0), 0.0)
        for name, values in per_user.items():
            self.sums[name] += float(values.sum())
        if top is not None and top_ok is not None:
            for k in self.ks:
                self.seen[k][top[:, :k][top_ok[:, :k]]] = True

    def result(self, prefix: str = "", coverage: bool = True) -> dict[str, float]:
        # No users gives NaN rather than 0 so an empty evaluation cannot pass for a bad model.
        out = {prefix + name: (total / self.n_users if self.n_users else float("nan"))
               for name, total in self.sums.items()}
        if coverage:
            for k in self.ks:
                out[f"{prefix}coverage@{k}"] = float(self.seen[k].sum()) / max(self.n_items, 1)
        out[prefix + "n_users"] = float(self.n_users)
        return out


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return tuple(sorted({int(k) for k in ks}))


def rank_metrics(scores: np.ndarray, targets: Sequence[int] | np.ndarray,
                 histories: Sequence[np.ndarray], ks: Sequence[int] = (10,)) -> dict[str, float]:
    """Full-ranking NDCG@K, Recall@K (= HR@K), MRR and coverage@K for one chunk of users.

    ``scores`` is [n_users, n_items + 1] with column 0 = padding; history items are excluded from
    ranking (a target in the history is a miss), and ties count against the target.
    """
    ks = _check_ks(ks)
    scores, targets = np.asarray(scores), np.asarray(targets, dtype=np.int64)
    _check_batch(scores, targets, histories)
    totals = _Totals(ks, scores.shape[1] - 1)
    totals.add(*_full_ranks(scores, targets, histories, ks[-1]))
    return totals.result()


def evaluate(score_fn: ScoreFn, histories: Sequence[np.ndarray], targets: Sequence[int] | np.ndarray,
             n_items: int, *, ks: Sequence[int] = (10,), batch_size: int = 256, protocol: str = "full",
             n_negatives: int = 100, seed: int = 0, coverage: bool = True,
             progress: Callable[[int], object] | None = None) -> dict[str, float]:
    """Stream users through ``score_fn`` in batches (memory ~ batch_size x n_items) and aggregate exactly.
    ``progress``, when given, is called with the number of users of each batch done. Without ``coverage`` no
    ``coverage@K`` key and no top-K lists (a training loop's validation reads only NDCG and recall).

    ``protocol="full"`` ranks against the whole catalogue; ``"sampled"`` ranks against ``n_negatives``
    seeded random unseen items and prefixes every key with ``sampled_`` (no coverage: it is undefined).
    """
    ks = _check_ks(ks)
    if protocol not in ("full", "sampled"):
        raise ValueError(f"unknown evaluation protocol {protocol!r}; expected 'full' or 'sampled'")
    if batch_size < 1 or n_negatives < 1:
        raise ValueError("batch_size and n_negatives must be >= 1")
    if coverage and n_items >= TORCH_TOP_K_ITEMS:
        # top_k's partial sort through torch, where it is 3.5x faster (1,024 users x 135,000 items: 0.79 s against
        # 2.74): an evaluation of a count model on a large catalogue is worth its import (1.5 s)
        import torch  # noqa: F401
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) != len(histories):
        raise ValueError(f"{len(targets)} targets but {len(histories)} histories")
    totals = _Totals(ks, n_items)
    # at most _BATCH_CELLS scores a batch: a batch of a gigabyte (256 users, a million items) took 1.7x the time
    # a user of four quarter-size ones did here (each new block of memory is faulted in page by page)
    batch_size = min(batch_size, max(_MIN_BATCH, _BATCH_CELLS // (n_items + 1)))
    for lo in range(0, len(targets), batch_size):
        batch_hist, batch_targets = list(histories[lo:lo + batch_size]), targets[lo:lo + batch_size]
        scores = np.asarray(score_fn(batch_hist))
        if scores.shape != (len(batch_hist), n_items + 1):
            raise ValueError(f"score_fn returned shape {scores.shape}, expected "
                             f"({len(batch_hist)}, {n_items + 1})")
        _check_batch(scores, batch_targets, batch_hist)
        if protocol == "full":
            totals.add(*_full_ranks(scores, batch_targets, batch_hist, ks[-1], lists=coverage))
        else:
            index = np.arange(lo, lo + len(batch_targets))
            totals.add(_sampled_ranks(scores, batch_targets, batch_hist, index, n_negatives, seed))
        if progress is not None:
            progress(len(batch_targets))
    if protocol == "full":
        return totals.result(coverage=coverage)
    return totals.result(prefix="sampled_", coverage=False)


# ---------------------------------------------------------------------------------------------- top-k

def exclusion_mask(n_cols: int, histories: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean [len(histories), n_cols]: True where a column may be returned (not padding, not in the
    row's history)."""
    ok = np.ones((len(histories), n_cols), dtype=bool)
    ok[_pairs(histories)] = False
    ok[:, 0] = False
    return ok


def _smallest(key: np.ndarray, kk: int) -> np.ndarray:
    """The columns of each row's `kk` smallest keys, in no order (among ties, any: top_k settles them)."""
    torch = sys.modules.get("torch")
    # torch's topk takes 3.5-7x less time than argpartition (124,000 items: 30-50 against 180-340 ms for 256
    # users, one thread), but only where torch is loaded already: importing it costs a count model's process
    # (a replica, an item-kNN job) 1.5 s and a few hundred MB
    if torch is not None and key.size >= 100_000:
        return torch.topk(torch.from_numpy(key), kk, dim=1, largest=False, sorted=False).indices.numpy()
    return np.argpartition(key, kk - 1, axis=1)[:, :kk]


def top_k(scores: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of ``scores`` ([n, n_cols], or one row [n_cols]), best first, ties
    in column order, skipping columns where ``allowed`` is False (column 0, padding, is never returned).

    Returns (columns, their scores). A 1-D call returns at most ``k`` allowed columns; a 2-D call returns
    [n, k'] arrays (k' = min(k, the most allowed in any row)) padded with -1 / -inf where a row has fewer."""
    s = np.asarray(scores)
    one = s.ndim == 1
    s2 = s[None, :] if one else s
    # sort key, smallest first: -score for allowed columns (a -inf or NaN score last among them, at the largest
    # finite key), then every excluded column (+inf), which only fills a row that lacks allowed ones. Few
    # passes over the rows, in place: at a million items a batch of users is gigabytes.
    # float32 scores keep float32 keys (negation is exact; a float64 copy of a batch cost its time twice over)
    key = np.negative(s2, dtype=np.float32 if s2.dtype in (np.float16, np.float32) else np.float64)
    hopeless = np.isnan(key)
    hopeless |= key == np.inf
    if hopeless.any():
        key[hopeless] = np.finfo(key.dtype).max
    del hopeless
    most = s2.shape[1] - 1  # the most allowed columns in any row
    if allowed is not None:
        a2 = allowed[None, :] if allowed.ndim == 1 else allowed
        np.copyto(key, np.inf, where=~a2)
        # count_nonzero by row: a C count, where summing a million bools costs half a millisecond a row
        most = max((np.count_nonzero(row) for row in a2[:, 1:]), default=0)
    key[:, 0] = np.inf
    kk = int(min(max(k, 0), s2.shape[1] - 1, most if len(s2) else 0))
    if kk <= 0:
        empty = np.zeros((len(s2), 0), dtype=np.int64)
        return (empty[0], s2[0, :0]) if one else (empty, s2[:, :0])
    top = _smallest(key, kk)
    # a tie across the k-th place: argpartition picked any of the tied columns; take the lowest-numbered ones
    kth = np.take_along_axis(key, top, 1).max(1, keepdims=True)
    tied = (key <= kth).sum(1) > kk
    for r in np.flatnonzero(tied):  # the columns better than the k-th key, then the first of those equal to it
        # (a stable sort of the tied rows cost a popularity model's evaluation on 124,000 items 80% of its time)
        better = np.flatnonzero(key[r] < kth[r, 0])
        top[r] = np.concatenate([better, np.flatnonzero(key[r] == kth[r, 0])[:kk - len(better)]])
    top.sort(axis=1)  # then a stable sort by key keeps ties in column order
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(key, top, 1), axis=1, kind="stable"), 1)
    vals = np.take_along_axis(s2, top, 1)
    bad = np.take_along_axis(key, top, 1) == np.inf  # an excluded column: allowed ones have finite keys
    if bad.any():  # rows with fewer than kk allowed columns
        top = np.where(bad, -1, top)
        vals = np.where(bad, -np.inf, vals)
    return (top[0][~bad[0]], vals[0][~bad[0]]) if one else (top, vals)
