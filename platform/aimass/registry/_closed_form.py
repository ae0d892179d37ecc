"""Compression of EASE, the closed-form family: its model is one dense [n + 1, n + 1] float32 item-item
matrix B (1.6 GB at 20,000 items), which serving reads a history's rows of and sums.

- ``int8``: B per-row symmetric int8 with one fp32 scale per row (4x smaller; a row's error is at most half
  its scale, and a score sums a history's rows);
- ``fp16``: B in half precision, summed in fp32 (2x smaller);
- ``prune``: the smallest-|w| ``sparsity`` fraction of B dropped (a sparse EASE), the rest kept in fp32 as
  CSR: 8 bytes per kept weight, so smaller only beyond sparsity 0.5; 0.9-0.99 is the useful range.

The stored folder is the registry's compressed format (``compressed.json`` + ``weights.safetensors``, no
pickle). The loaded model is an ``EASE`` estimator whose ``weights_`` hand out float32 rows, so scoring
(decay, the popularity prior) is the family's own code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

METHODS = ("int8", "fp16", "prune")
OPTIONS = {"int8": {}, "fp16": {}, "prune": {"sparsity": float}}


def build(est, method: str, opts: dict, out: Path, write_meta, weights_file: str) -> dict:
    """Write the compressed folder of a fitted EASE; returns its meta."""
    from safetensors.numpy import save_file

    b = np.asarray(est.weights_, dtype=np.float32)
    meta = {"family": "ease", "method": method, "n_items": int(est.n_items_), "l2": est.l2_,
            "config": est.config_.model_dump()}
    tensors = {"popularity": np.asarray(est.popularity_, dtype=np.float32)}
    if method == "int8":
        scale = np.abs(b).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        tensors["q"] = np.rint(b / scale[:, None]).clip(-127, 127).astype(np.int8)
        tensors["scale"] = scale.astype(np.float32)
    elif method == "fp16":
        tensors["b"] = b.astype(np.float16)
    else:
        import scipy.sparse as sp

        sparsity = opts.get("sparsity", 0.5)
        k = int(round(sparsity * b.size))
        thresh = np.partition(np.abs(b).ravel(), k - 1)[k - 1] if k else -1.0
        m = sp.csr_matrix(np.where(np.abs(b) > thresh, b, 0.0).astype(np.float32))
        tensors.update(indptr=m.indptr.astype(np.int64), indices=m.indices.astype(np.int32), data=m.data)
        meta["sparsity"] = float(1 - m.nnz / b.size)
    save_file(tensors, str(out / weights_file))
    write_meta(out, meta)
    return meta


class _Int8Rows:
    def __init__(self, q: np.ndarray, scale: np.ndarray):
        self.q, self.scale, self.shape = q, scale, q.shape

    def __getitem__(self, rows) -> np.ndarray:
        return self.q[rows].astype(np.float32) * self.scale[rows, None]


class _HalfRows:
    def __init__(self, b: np.ndarray):
        self.b, self.shape = b, b.shape

    def __getitem__(self, rows) -> np.ndarray:
        return self.b[rows].astype(np.float32)


class _SparseRows:
    def __init__(self, m):
        self.m, self.shape = m, m.shape

    def __getitem__(self, rows) -> np.ndarray:
        return self.m[np.atleast_1d(rows)].toarray()


def load(path: Path, meta: dict, weights_file: str):
    """An EASE estimator that scores from the compressed matrix (``method``, ``meta`` and ``n_parameters``
    set, as on the registry's other compressed scorers)."""
    from safetensors.numpy import load_file

    from aimass.zoo.ease import EASE, EASEConfig

    t = load_file(str(path / weights_file))
    est = EASE(**meta["config"])
    est.config_, est.n_items_, est.l2_ = EASEConfig(**meta["config"]), meta["n_items"], meta["l2"]
    est.popularity_ = t["popularity"]
    n = meta["n_items"] + 1
    if meta["method"] == "int8":
        est.weights_, stored = _Int8Rows(t["q"], t["scale"]), t["q"].size
    elif meta["method"] == "fp16":
        est.weights_, stored = _HalfRows(t["b"]), t["b"].size
    else:
        import scipy.sparse as sp

        m = sp.csr_matrix((t["data"], t["indices"], t["indptr"]), shape=(n, n))
        est.weights_, stored = _SparseRows(m), m.nnz
    est.meta, est.method, est.n_parameters = meta, meta["method"], int(stored)
    return est
