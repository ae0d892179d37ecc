"""Scoring by vectors, for the families whose scores are ``user_vectors(h) @ item_table().T`` (two-tower,
SASRec, Mult-VAE; the family contract checks the identity). A compressed version has no such pair: it keeps the exact
scorer.

The item table is computed once per replica (two-tower's item tower would otherwise run over the whole
catalogue on every request). From ``serve_ann_min_items`` items on, the longest item vectors (the head) are
scored exactly on every query, and an HNSW index (usearch) over the rest proposes candidates, which the table
re-scores exactly. Measured on 2 cores, one 64-d query, exact (numpy matmul + top-k): 0.6 ms at 50k items,
1.5 ms at 100k, 18 ms at 1M; head and graph with the search beam of 1024: 4-5 ms at 200k, 6-7 ms at 1M (the
beam is most of it). Below the threshold exact scoring costs under a millisecond and loses nothing, so it
stays exact.

The index is built once per distinct table and kept in ``home/cache/ann`` (named by the table's digest, so a
file can never belong to another model); replicas memory-map it, sharing its pages."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from aimass.evaluation import top_k

# HNSW parameters (usearch's defaults are 16 / 128 / 64). On the weakly trained 20k-item model of
# tests/serving/test_vectors.py, recall@10 against exact was 0.81 with a search beam of 128, 0.95 with 512 and
# 0.98 with 1024 (about 2 ms). 32 links per node and 256 at build time reached 0.98 at 512, but built 3.4x
# slower (200k vectors on 2 cores: 125 s against 37 s): a 1M-item catalogue would wait ten minutes.
_CONNECTIVITY, _EXPANSION_ADD, _EXPANSION_SEARCH = 16, 128, 1024
_MIN_CANDIDATES = 64  # re-scored exactly: the top k of a wider pool is the exact top k far more often
# The head: the longest item vectors (popular items, typically), scored exactly on every query; the graph holds
# only the rest. Long vectors win most queries, and a graph finds them poorly: the L2 mapping below puts a query
# far from every item (on 200k random vectors whose 2,000 longest win most queries, recall@10 was 0.08 through
# the graph alone). It is also norm-ranging (Yan et al. 2018): the tail's own largest norm bounds its mapping,
# which then bends its geometry less. On a two-tower model of a 1M-item catalogue with a popular layer
# (benchmarks/serving_ann.py), the longest 2,048 held 0.88 of the exact top 10, the longest 16,384 0.99, the
# longest 65,536 0.999; scoring 62,500 contiguous rows costs about half a millisecond.
_HEAD_MIN, _HEAD_SHARE = 2048, 16  # max(2,048, n / 16) items


class Vectors:
    def __init__(self, estimator, ann_min_items: int, cache_dir: Path):
        self.estimator = estimator
        self.table = np.ascontiguousarray(estimator.item_table(), dtype=np.float32)
        self.n = len(self.table) - 1
        self.index = self.head = self.head_table = None
        if ann_min_items and self.n >= ann_min_items:
            norms = np.einsum("ij,ij->i", self.table[1:], self.table[1:])
            size = min(self.n, max(_HEAD_MIN, self.n // _HEAD_SHARE))
            self.head = np.sort(np.argpartition(-norms, size - 1)[:size] + 1)
            self.head_table = np.ascontiguousarray(self.table[self.head])
            if size < self.n:
                self.index = _index(self.table, self.head, cache_dir)

    @classmethod
    def of(cls, estimator, ann_min_items: int, cache_dir: Path) -> Vectors | None:
        return cls(estimator, ann_min_items, cache_dir) if hasattr(estimator, "item_table") else None

    def user(self, seen: np.ndarray) -> np.ndarray:
        return self.estimator.user_vectors([seen])[0]

    def scores(self, u: np.ndarray) -> np.ndarray:
        """Every item's score, float64 [n_items + 1], column 0 = -inf (as the family's ``score``)."""
        s = (self.table @ u).astype(np.float64)
        s[0] = -np.inf
        return s

    def top(self, u: np.ndarray, ok: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(dense ids, scores) of the k best allowed items, best first: exact below the threshold or when few
        items are allowed (a narrow filter), else the head's best and the tail's HNSW candidates, re-scored
        exactly."""
        if self.head is None:
            return top_k(self.scores(u), k, ok)
        allowed = int(ok.sum())
        if allowed <= max(4 * _MIN_CANDIDATES, self.n // 50):
            return _best(np.flatnonzero(ok), self.table, u, k)
        head_ok = ok[self.head]
        # einsum, not BLAS: a threaded gemv here woke BLAS threads on every request, and on 2 cores they took
        # the CPU from everything else (200k items over HTTP at c=1: 106 requests/s with `@`, 146 with einsum)
        hs = np.concatenate([[-np.inf], np.einsum("ij,j->i", self.head_table, u).astype(np.float64)])
        cols, _ = top_k(hs, k, np.concatenate([[False], head_ok]))
        best_head = self.head[cols - 1]
        if self.index is None:
            return _best(np.sort(best_head), self.table, u, k)
        tail_n = self.n - len(self.head)
        tail_allowed = max(1, allowed - int(head_ok.sum()))
        # a filter thins the candidates in proportion; the user's history, which the model scores high, is
        # blocked on top of that: ask for both
        want = int((k + _MIN_CANDIDATES) * tail_n / tail_allowed * 1.2) + min(tail_n - tail_allowed, 10_000)
        q = np.concatenate([u, [0.0]]).astype(np.float32)  # the query side of the MIPS -> L2 mapping
        while True:
            want = min(tail_n, want)
            # one thread: the request threads are the pool (usearch's own advice for an outer pool)
            cand = np.asarray(self.index.search(q, want, exact=False, threads=1).keys, dtype=np.int64)
            cand = cand[ok[cand]]
            if len(cand) >= min(k + _MIN_CANDIDATES, tail_allowed) or want >= tail_n:
                return _best(np.union1d(cand, best_head), self.table, u, k)
            want *= 4


def _best(cand: np.ndarray, table: np.ndarray, u: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of ``cand`` (ascending dense ids) by exact score, best first, ties in catalogue order."""
    s = np.concatenate([[-np.inf], (table[cand] @ u).astype(np.float64)])  # top_k never returns column 0
    cols, best = top_k(s, k)
    return cand[cols - 1], best


def _index(table: np.ndarray, head: np.ndarray, cache_dir: Path):
    """The HNSW index over every item outside ``head``, memory-mapped from the cache (built there first)."""
    from usearch.index import Index

    params = f"{_CONNECTIVITY}-{_EXPANSION_ADD}-head{len(head)}".encode()  # another build recipe is another file
    digest = hashlib.blake2b(table.tobytes() + params, digest_size=16).hexdigest()
    path = Path(cache_dir) / f"{digest}.usearch"
    if not path.is_file():
        # Inner product is no metric, and HNSW's graph misleads on it when norms differ (a popular item's
        # vector is longer): recall@10 0.63 in tests/serving/test_vectors.py. Appending sqrt(M^2 - |v|^2)
        # to every item (0 to the query) makes the nearest item in L2 the one of largest inner product
        # (Bachrach et al. 2014); M is the tail's own largest norm.
        tail = np.setdiff1d(np.arange(1, len(table)), head)
        vectors = table[tail]
        norms = np.einsum("ij,ij->i", vectors, vectors)
        extra = np.sqrt(np.maximum(norms.max() - norms, 0.0))[:, None]
        index = Index(ndim=table.shape[1] + 1, metric="l2sq", dtype="f32", connectivity=_CONNECTIVITY,
                      expansion_add=_EXPANSION_ADD, expansion_search=_EXPANSION_SEARCH)
        index.add(tail.astype(np.uint64), np.hstack([vectors, extra]).astype(np.float32))
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(f".{os.getpid()}.part")  # replicas building at once: the last rename wins
        index.save(str(part))
        os.replace(part, path)
    index = Index.restore(str(path), view=True)
    index.expansion_search = _EXPANSION_SEARCH
    return index
