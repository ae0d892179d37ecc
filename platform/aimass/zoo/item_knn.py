"""Item-kNN: items are similar when they follow each other closely in users' sequences.

Co-occurrences are counted within a window of following positions, weighted by 1/distance, so the model is
sequence-aware (what comes next) rather than only basket-aware. Similarity is normalised by the two items'
popularity (shrunk towards zero where both are rare: Dacrema et al.'s item-kNN `shrink`), pruned to the top
`neighbors` per item, and a user is scored from the last `history_items` items with a recency decay. All
statistics are sparse and additive over users, so a distributed job sums shards; memory grows with
n_items * window, not n_items squared.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from aimass.zoo import Seed

# co-occurring pairs summed into the matrix at a time: a dataset's pairs at once (10 million plays, window 10)
# took 4.3 GB
_PAIRS_AT_ONCE = 5_000_000
_ROWS_AT_ONCE = 8192  # rows of the similarity normalised and pruned at a time


class ItemKNNConfig(BaseModel):
    # allow_inf_nan=False: gt=0 lets inf through (every family: an endless time budget, a NaN model from lr or l2)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    window: int = Field(10, ge=1, le=500, description="Following positions that count as co-occurring")
    neighbors: int = Field(100, ge=1, le=10_000, description="Similar items kept per item")
    alpha: float = Field(0.5, ge=0, le=1, description="Popularity normalisation: c_ij / (n_i^a * n_j^(1-a))")
    symmetric: float = Field(0.2, ge=0, le=1, description="Weight of the backward direction (j before i)")
    # 20 by measurement (itemknn alone, validation NDCG@10 at 0 -> 20): ml1m-short 0.0731 -> 0.0968, Last.fm
    # 0.0188 -> 0.0637, ml1m 0.1497 -> 0.1485, the generated synth-50k 0.4140 -> 0.4005, whose rare pairs are its
    # generator's groups, not chance: real sparse data is the other way, so `train auto` also tries 0
    shrink: float = Field(20.0, ge=0, le=1e6, description=(
        "Added to the normaliser, c_ij / (n_i^a * n_j^(1-a) + shrink): a pair seen once or twice among rare items "
        "is more often chance than taste, and counts less"))
    history_items: int = Field(20, ge=1, description="Most recent history items that vote")
    decay: float = Field(0.8, gt=0, le=1, description="Vote weight multiplier per step back in history")
    seed: Seed = 0


class ItemKNN:
    family = "itemknn"
    Config = ItemKNNConfig
    is_torch = False

    def __init__(self, **params):
        self.params = params

    def get_params(self, deep: bool = True) -> dict:
        return dict(self.params)

    def resolve_config(self, n_items: int, sequence_lengths, time_budget_s: float | None = None) -> ItemKNNConfig:
        return ItemKNNConfig(**self.params)

    def sufficient_stats(self, sequences: list[np.ndarray], cfg: ItemKNNConfig, n_items: int) -> dict:
        n = n_items + 1
        counts = np.zeros(n)
        co = sp.csr_matrix((n, n))
        rows, cols, vals, pending = [], [], [], 0

        def summed() -> sp.csr_matrix:  # the pending pairs, duplicates summed
            return sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                 shape=(n, n)).tocsr()

        for s in sequences:
            s = np.asarray(s, dtype=np.int64)  # an empty list or array would be float64, which cannot index
            np.add.at(counts, s, 1.0)
            for d in range(1, min(cfg.window, len(s) - 1) + 1):
                rows.append(s[:-d])
                cols.append(s[d:])
                vals.append(np.full(len(s) - d, 1.0 / d))
                pending += len(s) - d
            if pending >= _PAIRS_AT_ONCE:
                co, rows, cols, vals, pending = co + summed(), [], [], [], 0
        if rows:
            co = co + summed()
        co.sum_duplicates()
        return {"counts": counts, "co": co}

    def adopt_stats(self, stats: dict, cfg: ItemKNNConfig, n_items: int) -> ItemKNN:
        co = sp.csr_matrix(stats["co"], dtype=np.float64)
        back = co.T.tocsr()
        n = np.maximum(np.asarray(stats["counts"], dtype=np.float64), 1.0)
        row_w, col_w = n ** -cfg.alpha, n ** -(1 - cfg.alpha)
        # a block of rows at a time, pruned before the next: the whole normalised matrix, built at once, took
        # 4 times the co-occurrences' memory (8.5 million plays of 150,000 items: 6.5 GB for the job)
        pruned = []
        for lo in range(0, co.shape[0], _ROWS_AT_ONCE):
            sim = (co[lo:lo + _ROWS_AT_ONCE] + cfg.symmetric * back[lo:lo + _ROWS_AT_ONCE]).tocsr()
            rows = lo + np.repeat(np.arange(sim.shape[0]), np.diff(sim.indptr))
            w = row_w[rows] * col_w[sim.indices]  # diag(n^-a) @ sim @ diag(n^-(1-a))
            if cfg.shrink:
                w /= 1.0 + cfg.shrink * w  # 1 / (n_i^a n_j^(1-a) + shrink)
            sim.data *= w
            sim.data[sim.indices == rows] = 0  # an item is not its own neighbour
            sim.eliminate_zeros()
            pruned.append(_top_k_rows(sim, cfg.neighbors))
        self.similarity_ = sp.vstack(pruned, format="csr").astype(np.float32)
        self.popularity_ = np.log1p(np.asarray(stats["counts"], dtype=np.float32))
        self.config_, self.n_items_ = cfg, n_items
        return self

    def fit(self, sequences: list[np.ndarray], n_items: int, *, valid=None, item_features=None,
            progress: bool = False) -> ItemKNN:
        self.Config(**self.params)  # bad params are refused before the data is read
        cfg = self.resolve_config(n_items, [len(s) for s in sequences])
        return self.adopt_stats(self.sufficient_stats(sequences, cfg, n_items), cfg, n_items)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        cfg, n = self.config_, self.n_items_ + 1
        rows, cols, vals = [], [], []
        for r, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64)[-cfg.history_items:]
            h = h[(h > 0) & (h < n)]
            rows.append(np.full(len(h), r))
            cols.append(h)
            vals.append(cfg.decay ** np.arange(len(h))[::-1])
        # float32 votes, as the similarity: float64 ones made scipy convert the whole similarity matrix to float64
        # on every call (256 users of 124,000 items: 330 ms against 17)
        votes = sp.csr_matrix((np.concatenate(vals) if vals else [], (np.concatenate(rows) if rows else [],
                               np.concatenate(cols) if cols else [])), shape=(len(histories), n), dtype=np.float32)
        scores = (votes @ self.similarity_).toarray()
        # a tiny popularity prior breaks ties among items no neighbour voted for
        scores += 1e-6 * self.popularity_ / max(float(self.popularity_.max()), 1.0)
        scores[:, 0] = -np.inf
        return scores

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps({"family": self.family, "n_items": self.n_items_,
                                                   "config": self.config_.model_dump()}))
        s = self.similarity_.tocsr()
        np.savez(p / "similarity.npz", data=s.data, indices=s.indices, indptr=s.indptr,
                 shape=np.asarray(s.shape), popularity=self.popularity_)

    @classmethod
    def load(cls, path: str | Path) -> ItemKNN:
        p = Path(path)
        meta = json.loads((p / "config.json").read_text())
        meta["config"].setdefault("shrink", 0.0)  # saved before it existed: fitted without it
        z = np.load(p / "similarity.npz", allow_pickle=False)
        est = cls(**meta["config"])
        est.config_, est.n_items_ = ItemKNNConfig(**meta["config"]), meta["n_items"]
        est.similarity_ = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        est.popularity_ = z["popularity"]
        return est


def _top_k_rows(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's k largest entries (a row at a time keeps memory at O(nnz))."""
    m = m.tocsr()
    keep_data, keep_idx, indptr = [], [], [0]
    for r in range(m.shape[0]):
        a, b = m.indptr[r], m.indptr[r + 1]
        data, idx = m.data[a:b], m.indices[a:b]
        if len(data) > k:
            top = np.argpartition(-data, k - 1)[:k]
            data, idx = data[top], idx[top]
        keep_data.append(data)
        keep_idx.append(idx)
        indptr.append(indptr[-1] + len(data))
    return sp.csr_matrix((np.concatenate(keep_data), np.concatenate(keep_idx), np.asarray(indptr)),
                         shape=m.shape)
