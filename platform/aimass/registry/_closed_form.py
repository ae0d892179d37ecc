"""Compression of EASE, the closed-form family: its model is one dense [n + 1, n + 1] float32 item-item
matrix B (1.6 GB at 20,000 items), which serving reads a history's rows of and sums.

- ``int8``: B per-row symmetric int8 with one fp32 scale per row (4x smaller; a row's error is at most half
  its scale, and a score sums a history's rows);
- ``fp16``: B in half precision, summed in fp32 (2x smaller);
- ``prune``: each row of B keeps its largest-|w| (1 - ``sparsity``) share (a sparse EASE: every item keeps
  its strongest neighbours), in fp32 as CSR: 8 bytes per kept weight, so smaller only beyond sparsity 0.5;
  0.9-0.99 is the useful range.

The stored folder is the registry's compressed format (``compressed.json`` + ``weights.safetensors``, no
pickle). The loaded model is an ``EASE`` estimator whose ``weights_`` hand out float32 rows, so scoring
(decay, the popularity prior) is the family's own code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aimass.registry._codecs import WEIGHTS, write_meta

METHODS = ("int8", "fp16", "prune")
BLOCK = 1024  # rows converted at a time: a few n-sized rows in memory beside the result, not n x n copies
OPTIONS = {"int8": {}, "fp16": {}, "prune": {"sparsity": float}}


def build(est, method: str, opts: dict, out: Path) -> dict:
    """Write the compressed folder of a fitted EASE; returns its meta."""
    from safetensors.numpy import save_file

    b = est.weights_  # memory-mapped when loaded from the registry: read in row blocks, never copied whole
    n = b.shape[0]
    meta = {"family": "ease", "method": method, "n_items": int(est.n_items_), "l2": est.l2_,
            "config": est.config_.model_dump()}
    tensors = {"popularity": np.asarray(est.popularity_, dtype=np.float32)}
    if method == "int8":
        q, scale = np.empty((n, n), np.int8), np.empty(n, np.float32)
        for i in range(0, n, BLOCK):
            rows = np.asarray(b[i:i + BLOCK], dtype=np.float32)
            sc = np.abs(rows).max(axis=1) / 127.0
            sc[sc == 0] = 1.0
            q[i:i + BLOCK] = np.rint(rows / sc[:, None]).clip(-127, 127)
            scale[i:i + BLOCK] = sc
        tensors.update(q=q, scale=scale)
    elif method == "fp16":
        tensors["b"] = np.concatenate([np.asarray(b[i:i + BLOCK], dtype=np.float16) for i in range(0, n, BLOCK)])
    else:
        # each row keeps its largest-|w| (1 - sparsity) share: every item keeps its strongest neighbours
        keep = max(1, int(round((1 - opts.get("sparsity", 0.5)) * n)))
        indptr, indices, data = [np.zeros(1, np.int64)], [], []
        for i in range(0, n, BLOCK):
            rows = np.asarray(b[i:i + BLOCK], dtype=np.float32)
            top = np.argpartition(-np.abs(rows), keep - 1, axis=1)[:, :keep]
            top.sort(axis=1)
            vals = np.take_along_axis(rows, top, axis=1)
            nz = vals != 0  # B's zero diagonal and padding row are not worth storing
            indices += [t[m] for t, m in zip(top, nz, strict=True)]
            data += [v[m] for v, m in zip(vals, nz, strict=True)]
            indptr.append(indptr[-1][-1] + np.cumsum(nz.sum(axis=1)))
        tensors.update(indptr=np.concatenate(indptr).astype(np.int64),
                       indices=np.concatenate(indices).astype(np.int32), data=np.concatenate(data))
        meta["sparsity"] = float(1 - len(tensors["data"]) / (n * n))
    save_file(tensors, str(out / WEIGHTS))
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


def load(path: Path, meta: dict):
    """An EASE estimator that scores from the compressed matrix (``method``, ``meta`` and ``n_parameters``
    set, as on the registry's other compressed scorers)."""
    from safetensors.numpy import load_file

    from aimass.zoo.ease import EASE, EASEConfig

    t = load_file(str(path / WEIGHTS))
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
