"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): a closed-form item-item model.

With X the binary user-item matrix and G = X^T X its Gram matrix, the item-item weights are
B = I - P diag(1 / diag(P)) with P = (G + lambda I)^-1, so that B's diagonal is zero: an item never explains
itself. A user's scores are the sum of B's rows of the items in their history. Training is one Gram matrix
(additive over shards of users, so a distributed job sums it) and one inverse: seconds at a few thousand items.

lambda: ``l2`` when given, else ``l2_scale`` times the mean diagonal of G (the mean interactions per item).
The regulariser must grow with the counts it competes with: Steck's best values run from 200-500 (ML-20M,
Netflix) to the tens for sparse catalogues, which a fixed number cannot serve both.

The size limit: B is a dense [n + 1, n + 1] float32 matrix (1.6 GB at 20,000 items), inverted in its own
memory by Cholesky in n^3 / 3 work (lastfm-2k's 17,632 items: about a minute on 2 cores). Beyond
``max_items`` the family refuses before any work, naming the limit; item-kNN and two-tower are the families for
larger catalogues.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from aimass.errors import InvalidInputError
from aimass.zoo import Seed


class EASEConfig(BaseModel):
    # allow_inf_nan=False: gt=0 lets inf through (every family: an endless time budget, a NaN model from lr or l2)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    l2: float | None = Field(None, gt=0, description="L2 weight lambda; None: l2_scale x mean item count")
    l2_scale: float = Field(1.0, gt=0, description="lambda relative to the mean interactions per item")
    decay: float = Field(1.0, gt=0, le=1, description=(
        "Weight of a history item per step back from the most recent when scoring (1: a plain bag)"))
    max_items: int = Field(20_000, ge=1, le=100_000, description=(
        "Largest catalogue accepted: memory ~ 4 bytes x n_items^2 (1.6 GB at 20,000), time ~ n_items^3"))
    seed: Seed = 0  # accepted for a uniform interface; nothing here is random


class EASE:
    family = "ease"
    Config = EASEConfig
    is_torch = False

    def __init__(self, **params):
        self.params = params

    def get_params(self, deep: bool = True) -> dict:
        return dict(self.params)

    def resolve_config(self, n_items: int, sequence_lengths, time_budget_s: float | None = None) -> EASEConfig:
        cfg = EASEConfig(**self.params)
        if n_items > cfg.max_items:
            gb = 4 * (n_items + 1) ** 2 / 1e9
            size = f"{gb:.1f} GB" if gb >= 0.1 else f"{gb * 1e3:.0f} MB"
            raise InvalidInputError(
                f"EASE needs a dense {n_items:,} x {n_items:,} item matrix ({size}, inverted in n^3 time) and the "
                f"limit is max_items={cfg.max_items:,}: use itemknn or two-tower for this catalogue, or raise "
                "max_items if this machine has the memory")
        return cfg

    def memory_bytes(self, cfg: EASEConfig, n_items: int, lengths=None) -> int:
        """One worker's peak: the dense float32 matrix, inverted in its own memory (every worker inverts the
        whole matrix), and the sparse Gram matrices it sums and densifies, 8 bytes a pair of items seen together
        (at most n^2; each history of L items gives at most L^2), twice over for the shards a worker gathers."""
        n = n_items + 1
        pairs = n * n if lengths is None else min(n * n, int(np.sum(np.square(np.asarray(lengths, np.int64)))))
        return 4 * n * n + 16 * pairs

    def fit_seconds(self, cfg: EASEConfig, n_items: int) -> float:
        """About how long the inverse alone takes on this machine: one pass cannot stop at a time budget as
        the iterative families do, so a job is refused before it starts rather than overrun its budget."""
        return _inverse_seconds(n_items + 1)

    # -- additive statistics: a distributed job sums them over shards of users ------------------------------
    def sufficient_stats(self, sequences: list[np.ndarray], cfg: EASEConfig, n_items: int) -> dict:
        n = n_items + 1
        rows = [np.full(len(u), r) for r, u in enumerate(_distinct(s) for s in sequences)]
        cols = [_distinct(s) for s in sequences]
        x = sp.csr_matrix((np.ones(sum(map(len, cols)), dtype=np.float32),
                           (np.concatenate(rows) if rows else [], np.concatenate(cols) if cols else [])),
                          shape=(len(sequences), n))
        return {"gram": x.T @ x}  # as scipy returns it (CSC): a CSR copy would double the peak

    def adopt_stats(self, stats: dict, cfg: EASEConfig, n_items: int) -> EASE:
        # float32 throughout, in place where numpy allows: the limit is memory (three n x n matrices at most)
        # C order: LAPACK works on its transpose in place (a CSC matrix's default would be copied whole there);
        # float32 already (an astype would copy it); the sparse one is let go
        g = stats.pop("gram").toarray(order="C")
        g[0, :] = g[:, 0] = 0.0
        counts = np.diag(g)[1:].astype(np.float64)
        lam = cfg.l2 if cfg.l2 is not None else cfg.l2_scale * max(float(counts.mean()) if len(counts) else 1.0,
                                                                   1.0)
        g[np.diag_indices_from(g)] += np.float32(lam)
        b = _spd_inverse(g)
        del g
        b /= -np.diag(b)[None, :]
        np.fill_diagonal(b, 0.0)
        b[0, :] = b[:, 0] = 0.0
        self.weights_ = b
        self.popularity_ = np.log1p(np.r_[0.0, counts]).astype(np.float32)
        self.l2_ = float(lam)
        self.config_, self.n_items_ = cfg, n_items
        return self

    def decided(self) -> dict:
        """What the fit decided from the data (logged with the run as resolved.*): lambda, when not given."""
        return {"l2": round(self.l2_, 6)}

    def fit(self, sequences: list[np.ndarray], n_items: int, *, valid=None, item_features=None,
            progress: bool = False) -> EASE:
        self.Config(**self.params)  # bad params are refused before the data is read
        cfg = self.resolve_config(n_items, [len(s) for s in sequences])
        return self.adopt_stats(self.sufficient_stats(sequences, cfg, n_items), cfg, n_items)

    def score(self, histories: list[np.ndarray]) -> np.ndarray:
        n = self.n_items_ + 1
        out = np.empty((len(histories), n), dtype=np.float32)
        # a tiny popularity prior orders the items no history item points to (a cold or empty history)
        prior = 1e-6 * self.popularity_ / max(float(self.popularity_.max()), 1.0)
        decay = self.config_.decay
        for r, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64)
            h = h[(h > 0) & (h < n)]
            if decay == 1.0:
                out[r] = _row_sum(self.weights_, _distinct(h)) + prior
                continue
            # an item played twice counts once, at its most recent position
            last = len(h) - 1 - np.unique(h[::-1], return_index=True)[1]
            w = decay ** (len(h) - 1 - last).astype(np.float32)
            out[r] = _row_sum(self.weights_, h[last], w) + prior
        out[:, 0] = -np.inf
        return out

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps({"family": self.family, "n_items": self.n_items_,
                                                   "l2": self.l2_, "config": self.config_.model_dump()}))
        np.save(p / "weights.npy", self.weights_)
        np.save(p / "popularity.npy", self.popularity_)

    @classmethod
    def load(cls, path: str | Path) -> EASE:
        p = Path(path)
        meta = json.loads((p / "config.json").read_text())
        est = cls(**meta["config"])
        est.config_, est.n_items_, est.l2_ = EASEConfig(**meta["config"]), meta["n_items"], meta["l2"]
        # memory-mapped: the replicas of a version share its pages (1.6 GB at 20,000 items)
        est.weights_ = np.load(p / "weights.npy", allow_pickle=False, mmap_mode="r")
        est.popularity_ = np.load(p / "popularity.npy", allow_pickle=False)
        return est


CALIBRATION_N = 2048  # a timed inverse this size (about 0.06 s on 2 cores) is scaled by n^3 to the catalogue's


def _inverse_seconds(n: int) -> float:
    """Seconds for ``_spd_inverse`` of an n x n matrix here: a CALIBRATION_N one timed (best of two) and scaled
    by n^3. A larger inverse runs faster per flop, so this overestimates (measured on 2 cores: 3.5 s predicted,
    2.9 s taken at 8,192); below CALIBRATION_N it is not timed, being a fraction of a second."""
    import time

    if n <= CALIBRATION_N:
        return 0.0
    a = np.random.default_rng(0).random((CALIBRATION_N, 64), dtype=np.float32)
    g = a @ a.T
    g[np.diag_indices_from(g)] += CALIBRATION_N
    best = math.inf
    for _ in range(2):
        h = np.array(g, order="C")
        t = time.perf_counter()
        _spd_inverse(h, mirror=False)
        best = min(best, time.perf_counter() - t)
    return best * (n / CALIBRATION_N) ** 3


def _spd_inverse(g: np.ndarray, block: int = 1024, mirror: bool = True) -> np.ndarray:
    """The inverse of the symmetric positive-definite float32 matrix ``g``, in g's own memory: Cholesky
    (LAPACK potrf, then potri) on its transpose, a Fortran-ordered view of the same buffer. numpy's inv (LU)
    held three to four n x n matrices at once (lastfm-2k's 17,632 items: an 11 GB peak) and does twice the
    work."""
    from scipy.linalg import lapack

    c, info = lapack.spotrf(g.T, lower=True, overwrite_a=True, clean=False)
    if info == 0:
        c, info = lapack.spotri(c, lower=True, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE: the regularised Gram matrix is not positive definite in float32 (LAPACK "
                         f"info {info}); raise l2 or l2_scale")
    b = c.T  # g itself when LAPACK worked in place
    if not mirror:
        return b
    # potri wrote one triangle (the upper one in b's row order): mirror it, a block of rows at a time
    n = b.shape[0]
    for i in range(0, n, block):
        j = min(i + block, n)
        b[i:j, :i] = b[:i, i:j].T
        d = b[i:j, i:j]
        for r in range(1, j - i):  # row by row: index arrays of the block's triangle would cost 8 x block^2 bytes
            d[r, :r] = d[:r, r]
    return b


def _row_sum(weights: np.ndarray, rows: np.ndarray, w: np.ndarray | None = None,
             block_bytes: int = 1 << 22) -> np.ndarray:
    """``weights[rows].sum(0)`` (``w @ weights[rows]`` when weighted) a block of rows at a time: the whole
    [len(rows), n] copy was 800 MB for a 10,000-item history at 20,000 items, per call. A history that fits
    in one block (4 MB of rows) gets exactly the one-product scores; an unweighted sum carries its running
    total into the next block's first row, so numpy adds the rows in the same order and it is exact at any
    length."""
    n = weights.shape[1]
    # rows come as float32, also from the registry's compressed row readers (int8, fp16, sparse), which have
    # a shape and [rows] only
    step = max(1, block_bytes // (4 * n))
    acc = np.zeros(n, dtype=np.float32)
    for i in range(0, len(rows), step):
        block = weights[rows[i:i + step]]  # a copy (fancy indexing), never the (memory-mapped) weights
        if w is None:
            if i:
                block[0] += acc
            acc = block.sum(0)
        else:
            part = w[i:i + step] @ block
            acc = acc + part if i else part
    return acc


def _distinct(s) -> np.ndarray:
    return np.unique(np.asarray(s, dtype=np.int64))
