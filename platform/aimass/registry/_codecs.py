"""How compressed models are stored and loaded back: no pickle anywhere (safetensors + JSON, or ONNX).

A compressed folder holds ``compressed.json`` (format, family, method, n_items, the family's config, method
details) and one of:
- ``weights.safetensors``: ``int8`` packs every quantised tensor into one int8 blob and the scales plus the
  remaining fp32 tensors (norms, biases) into one fp32 blob, in the order of the family module's own
  ``state_dict`` (so the layout needs no per-tensor header: on a dim-16 model those headers alone were a
  quarter of the int8 folder). Embedding tables and 2-D buffers are per-row symmetric int8 with one fp32
  scale per row; Linear weights are what ``quantize_dynamic`` makes of them (per-tensor symmetric int8 by
  default, per-channel on request), stored as their int8 values + scale(s) and set back into a dynamically
  quantised Linear on load, bit for bit. ``fp16`` / ``bf16``: the state dict in half precision.
  ``prune``: unstructured -> each pruned tensor as a packed bit mask (1 bit per weight) + its kept values in
  fp32; structured -> dense fp32 tensors with the removed feed-forward units gone (smaller Linear layers).
  ``distill``: the student's fp32 state dict (its own config in the JSON).
- ``model.onnx``: the scoring path exported to ONNX, run by onnxruntime.

SASRec versions are scored by :class:`SASRecInfer`, an inference-time restructuring of the family's forward
pass that gives the same scores up to float rounding: left padding is trimmed to the longest history of the
batch (padding never reaches a real position: keys are masked, positions count from the end), and the last
block runs only the last position's query, out-projection and feed-forward (only that position is scored).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aimass.zoo.sasrec import is_ensemble

FORMAT = "aimass-compressed/1"
META = "compressed.json"
WEIGHTS = "weights.safetensors"
ONNX_FILE = "model.onnx"


# ------------------------------------------------------------------------------------------ int8 helpers

def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: ``w ~ q * scale[:, None]``, q in [-127, 127], fp32 scales (1 for zero rows)."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def _linear_kinds(module: nn.Module) -> tuple[set[str], set[str]]:
    """State-dict keys of Linear weights, and of tables quantised per row (embeddings, 2-D float buffers)."""
    linear = {f"{n}.weight" for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    rows = {f"{n}.weight" for n, m in module.named_modules() if isinstance(m, nn.Embedding)}
    rows |= {n for n, b in module.named_buffers() if b.ndim == 2 and b.is_floating_point()}
    return linear, rows


def _qlinear_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 values + scale(s) -> the quantised tensor a dynamic Linear takes (zero point 0: symmetric)."""
    if scale.numel() == 1:
        return torch._make_per_tensor_quantized_tensor(q, float(scale), 0)
    return torch._make_per_channel_quantized_tensor(
        q, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0)


def _dynamic_linear(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    lin = DynLinear(q.shape[1], q.shape[0], bias_=bias is not None, dtype=torch.qint8)
    lin.set_weight_bias(_qlinear_weight(q, scale), None if bias is None else bias.float())
    return lin


def encode_int8(module: nn.Module, per_channel: bool = False) -> tuple[dict, dict]:
    """A family module -> (two packed blobs for safetensors, details for the JSON). Linear weights go
    through ``torch.ao.quantization.quantize_dynamic`` and are read back from the quantised modules."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconf = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    qmod = quantize_dynamic(copy.deepcopy(module).float().eval(), {nn.Linear: qconf}, dtype=torch.qint8)
    qlin = {f"{n}.weight": m for n, m in qmod.named_modules() if type(m).__name__ == "Linear"
            and "quantized" in type(m).__module__}
    linear, rows = _linear_kinds(module)
    i8, f32 = [], []
    for key, t in module.state_dict().items():
        if key in linear:
            w = qlin[key].weight()
            scale = (w.q_per_channel_scales() if w.qscheme() in (torch.per_channel_affine,
                                                                 torch.per_channel_symmetric)
                     else torch.tensor([w.q_scale()], dtype=torch.float64))
            i8.append(w.int_repr().reshape(-1))
            f32.append(scale.float())
        elif key in rows:
            q, scale = quantize_rows(t)
            i8.append(q.reshape(-1))
            f32.append(scale)
        else:
            f32.append(t.detach().float().reshape(-1))
    blobs = {"int8": torch.cat(i8).contiguous(), "fp32": torch.cat(f32).contiguous()}
    return blobs, {"linear": "per_channel" if per_channel else "per_tensor"}


def decode_int8(skeleton: nn.Module, blobs: dict, per_channel: bool) -> tuple[dict, dict, dict]:
    """Inverse of :func:`encode_int8` against a freshly built module of the same shapes:
    (fp32 state dict with tables dequantised, {linear key: (int8, scale)}, {table key: (int8, scale)})."""
    linear, rows = _linear_kinds(skeleton)
    i8, f32 = blobs["int8"], blobs["fp32"]
    a = b = 0
    state, qlin, qrows = {}, {}, {}
    for key, t in skeleton.state_dict().items():
        if key in linear or key in rows:
            n = t.numel()
            q = i8[a:a + n].view(t.shape).clone()
            a += n
            ns = t.shape[0] if (key in rows or per_channel) else 1
            scale = f32[b:b + ns].clone()
            b += ns
            (qlin if key in linear else qrows)[key] = (q, scale)
            state[key] = (q.float() * (scale[:, None] if ns > 1 else scale)).view(t.shape)
        else:
            n = t.numel()
            state[key] = f32[b:b + n].view(t.shape).clone().to(t.dtype)
            b += n
    if a != i8.numel() or b != f32.numel():
        raise ValueError("int8 weights do not match the model's layout (corrupt or foreign file)")
    return state, qlin, qrows


def swap_in_dynamic_linears(module: nn.Module, qlin: dict) -> nn.Module:
    """Replace each Linear whose weight key is in ``qlin`` by a dynamic int8 Linear of those weights."""
    for key, (q, scale) in qlin.items():
        path = key.removesuffix(".weight")
        parent_path, _, attr = path.rpartition(".")
        parent = module.get_submodule(parent_path) if parent_path else module
        old = getattr(parent, attr)
        setattr(parent, attr, _dynamic_linear(q, scale, old.bias.detach() if old.bias is not None else None))
    return module


# ------------------------------------------------------------------------------------ sparse (pruning)

def encode_sparse(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A pruned tensor -> (packed bit mask of non-zeros, uint8; non-zero values in row-major order, fp32)."""
    flat = t.detach().float().reshape(-1)
    keep = flat != 0
    return torch.from_numpy(np.packbits(keep.numpy())), flat[keep].contiguous()


def decode_sparse(mask: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    n = int(np.prod(shape))
    keep = torch.from_numpy(np.unpackbits(mask.numpy(), count=n).astype(bool))
    out = torch.zeros(n, dtype=torch.float32)
    out[keep] = values
    return out.view(*shape)


def resize_linears(module: nn.Module, state: dict) -> nn.Module:
    """Make every Linear match the shapes in ``state`` (structured pruning removed rows/columns)."""
    for name, m in list(module.named_modules()):
        if isinstance(m, nn.Linear) and f"{name}.weight" in state:
            out_f, in_f = state[f"{name}.weight"].shape
            if (out_f, in_f) != (m.out_features, m.in_features):
                parent_path, _, attr = name.rpartition(".")
                parent = module.get_submodule(parent_path) if parent_path else module
                setattr(parent, attr, nn.Linear(in_f, out_f, bias=m.bias is not None))
    return module


# ----------------------------------------------------------------------------------- SASRec inference

class SASRecInfer(nn.Module):
    """Scores of a (possibly quantised / pruned / half-precision) SASRecModule, restructured for inference.

    ``item_q``/``item_scale``: the item table as per-row int8 (gathered and dequantised per lookup);
    ``head="int8"`` scores with a dynamic int8 Linear over that table (per-row scales = per-channel weights),
    ``head="float"`` with the dequantised table in the compute dtype."""

    def __init__(self, module: nn.Module, *, item_q: torch.Tensor | None = None,
                 item_scale: torch.Tensor | None = None, head: str = "float", dtype=torch.float32):
        super().__init__()
        self.n_items, self.max_len, self.dim, self.dtype = module.n_items, module.max_len, module.dim, dtype
        self.n_heads = module.blocks[0].n_heads
        self.blocks = module.blocks[:-1]
        last = module.blocks[-1]
        self.last_ln1, self.last_out, self.last_ln2, self.last_ffn = last.ln1, last.out, last.ln2, last.ffn
        self.last_q, self.last_kv = _split_rows(last.qkv, self.dim)
        self.norm = module.norm
        self.register_buffer("pos", module.pos_emb.weight.detach().to(dtype).clone())
        self.int8_table = item_q is not None
        if self.int8_table:
            self.register_buffer("item_q", item_q)
            self.register_buffer("item_scale", item_scale.float())
        else:
            self.register_buffer("item_table", module.item_emb.weight.detach().to(dtype).clone())
        self.head_int8 = head == "int8"
        if self.head_int8:
            self.head = _dynamic_linear(item_q, item_scale, None)
        elif self.int8_table:
            self.register_buffer("head_table", (item_q.float() * item_scale[:, None]).to(dtype))
        self.export_mode = False

    def _embed(self, seq: torch.Tensor) -> torch.Tensor:
        if self.int8_table:
            return (self.item_q[seq].float() * self.item_scale[seq].unsqueeze(-1)).to(self.dtype)
        return self.item_table[seq]

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, n] left-padded dense ids (n <= max_len) -> [B, n_items + 1] float32, column 0 = -inf."""
        seq = seq[:, -self.max_len:]
        b, n = seq.shape
        keep = seq != 0
        keep_f = keep.unsqueeze(-1).to(self.dtype)
        x = (self._embed(seq) * math.sqrt(self.dim) + self.pos[self.max_len - n:]) * keep_f
        idx = torch.arange(n, device=seq.device)
        full = None if (not self.export_mode and bool(keep.all())) else keep
        if len(self.blocks):
            if full is None:  # no padding: the plain causal mask (a faster attention kernel)
                mask = None
            else:  # a padded query sees only itself, so no softmax row is empty (as the family does)
                mask = ((idx[None, :] <= idx[:, None]) & full[:, None, :]) | (idx[None, :] == idx[:, None])
                mask = mask.unsqueeze(1)
            for block in self.blocks:
                x = self._block(block, x, mask) * keep_f
        # last block: keys/values of every position, everything else only for the last one
        h = self.last_ln1(x)
        k, v = self.last_kv(h).view(b, n, 2, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        q = self.last_q(h[:, -1:]).view(b, 1, self.n_heads, -1).transpose(1, 2)
        last_mask = None if full is None else (full | (idx == n - 1)).view(b, 1, 1, n)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=last_mask).transpose(1, 2).reshape(b, -1)
        y = x[:, -1] + self.last_out(a)
        y = (y + self.last_ffn(self.last_ln2(y))) * keep_f[:, -1]
        y = self.norm(y)
        if self.head_int8:
            s = self.head(y.float())
        elif self.export_mode:  # (table @ y^T)^T: the ONNX graph shares one table with the lookup
            s = (self.item_table @ y.T).T  # (y @ table^T would be constant-folded into a second copy)
        else:
            s = F.linear(y, self.head_table if self.int8_table else self.item_table).float()
        return torch.cat([torch.full_like(s[:, :1], float("-inf")), s[:, 1:]], dim=1)

    def _block(self, block, x, mask):
        b, n, d = x.shape
        q, k, v = block.qkv(block.ln1(x)).view(b, n, 3, block.n_heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        x = x + block.out(a.transpose(1, 2).reshape(b, n, -1))
        return x + block.ffn(block.ln2(x))


class _MeanOf(nn.Module):
    """An ensemble's scores: the mean of its members' restructured scorers (column 0 stays -inf)."""

    def __init__(self, members: list[SASRecInfer]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(seq) for m in self.members]).mean(0)


def sasrec_infer(module: nn.Module, cfg, qrows: dict, **kw) -> nn.Module:
    """The restructured scorer of a SASRec, or of each member of an ensemble (their mean); ``qrows``: the
    int8 item tables by state-dict key, when the model was quantised."""
    nets = [(f"members.{k}.", m) for k, m in enumerate(module.members)] if is_ensemble(cfg) else [("", module)]
    infers = []
    for prefix, net in nets:
        item_q, item_scale = qrows.get(f"{prefix}item_emb.weight", (None, None))
        infers.append(SASRecInfer(net, item_q=item_q, item_scale=item_scale, **kw).eval())
    return infers[0] if len(infers) == 1 else _MeanOf(infers).eval()


def _split_rows(qkv: nn.Module, d: int) -> tuple[nn.Module, nn.Module]:
    """A fused [3D, D] qkv projection -> (q: first D rows, kv: the other 2D), exact for int8 too (per-tensor
    scales are shared, per-channel ones are per row)."""
    if isinstance(qkv, nn.Linear):
        def part(lo, hi):
            lin = nn.Linear(qkv.in_features, hi - lo, bias=qkv.bias is not None).to(qkv.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(qkv.weight[lo:hi])
                if qkv.bias is not None:
                    lin.bias.copy_(qkv.bias[lo:hi])
            return lin
        return part(0, d), part(d, 3 * d)
    w, bias = qkv.weight(), qkv.bias()
    q = w.int_repr()
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        s = w.q_per_channel_scales().float()
        return (_dynamic_linear(q[:d].contiguous(), s[:d], None if bias is None else bias[:d]),
                _dynamic_linear(q[d:].contiguous(), s[d:], None if bias is None else bias[d:]))
    s = torch.tensor([w.q_scale()])
    return (_dynamic_linear(q[:d].contiguous(), s, None if bias is None else bias[:d]),
            _dynamic_linear(q[d:].contiguous(), s, None if bias is None else bias[d:]))


def _left_pad(seq, length: int) -> np.ndarray:
    out = np.zeros(length, dtype=np.int64)
    seq = np.asarray(seq, dtype=np.int64)[-length:] if length else np.zeros(0, np.int64)
    if len(seq):
        out[length - len(seq):] = seq
    return out


# --------------------------------------------------------------------------------------------- scorers

class CompressedScorer:
    """What serving sees: ``score(histories) -> float32 [n, n_items + 1]`` (column 0 = -inf, history not
    masked), like every family's estimator. ``trim``: pad each batch only to its longest history."""

    is_torch = True
    batch_invariant = False  # int8 quantises each batch's activations with one scale; trim pads per batch

    def __init__(self, meta: dict, fn, max_len: int, trim: bool, parameters: int = 0):
        self.meta, self.family, self.method = meta, meta["family"], meta["method"]
        self.n_items_, self.config_ = meta["n_items"], meta["config"]
        self._fn, self._max_len, self._trim, self.n_parameters = fn, max_len, trim, parameters

    @torch.no_grad()
    def score(self, histories, batch_size: int = 256) -> np.ndarray:
        out = np.empty((len(histories), self.n_items_ + 1), dtype=np.float32)
        for i in range(0, len(histories), batch_size):
            chunk = histories[i:i + batch_size]
            n = self._max_len
            if self._trim:
                n = max(1, min(n, max(len(h) for h in chunk)))
            seq = np.stack([_left_pad(h, n) for h in chunk])
            out[i:i + len(chunk)] = self._fn(seq)
        return out


def as_served(est):
    """`est.score` as serving calls it: one user at a time when the scores depend on the batch (int8's
    activations take one scale a batch), so that the figures recorded and gated are the ones users get."""
    if getattr(est, "batch_invariant", True):
        return est.score
    return lambda histories: est.score(histories, batch_size=1)


def load_compressed(path: str | Path) -> CompressedScorer:
    """A ready scorer from a compressed folder, whatever the method."""
    from safetensors.torch import load_file

    from aimass.zoo import family_class

    path = Path(path)
    meta = json.loads((path / META).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an aimass compressed model (format {meta.get('format')!r})")
    family, method = meta["family"], meta["method"]
    if family == "ease":
        from aimass.registry import _closed_form

        return _closed_form.load(path, meta)
    cls = family_class(family)
    cfg = cls.Config(**meta["config"])
    if method == "onnx":
        return _onnx_scorer(path, meta, cfg)
    blobs = load_file(str(path / WEIGHTS))
    feats = meta.get("n_features")
    fake = np.zeros((meta["n_items"] + 1, feats), np.float32) if feats else None
    module = cls.build_module(cfg, meta["n_items"], fake) if fake is not None else \
        cls.build_module(cfg, meta["n_items"])
    qrows: dict = {}
    dtype = torch.float32
    if method == "int8":
        state, qlin, qrows = decode_int8(module, blobs, meta["linear"] == "per_channel")
        module.load_state_dict(state)
        swap_in_dynamic_linears(module, qlin)
    else:
        state = {}
        for key in module.state_dict():
            if f"{key}::mask" in blobs:
                shape = meta["shapes"][key]
                state[key] = decode_sparse(blobs[f"{key}::mask"], blobs[f"{key}::values"], shape)
            else:
                state[key] = blobs[key]
        resize_linears(module, state)
        if method in ("fp16", "bf16") and meta.get("compute") == "bf16":
            dtype = torch.bfloat16
        module.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v
                                for k, v in state.items()})
        module.to(dtype)
    module.eval()
    n_params = sum(p.numel() for p in module.parameters()) + sum(q.numel() for q, _ in
                                                                 (qlin.values() if method == "int8" else []))
    if family == "sasrec":
        infer = sasrec_infer(module, cfg, qrows, head=meta.get("head", "float"), dtype=dtype)
        fn = lambda seq: infer(torch.from_numpy(seq)).numpy()  # noqa: E731
        return CompressedScorer(meta, fn, cfg.max_len, trim=True, parameters=n_params)
    fn = lambda seq: module.scores(torch.from_numpy(seq)).float().numpy()  # noqa: E731
    return CompressedScorer(meta, fn, cfg.max_len, trim=False, parameters=n_params)


def _onnx_scorer(path: Path, meta: dict, cfg) -> CompressedScorer:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path / ONNX_FILE), so, providers=["CPUExecutionProvider"])
    fn = lambda seq: sess.run(None, {"seq": seq})[0]  # noqa: E731
    return CompressedScorer(meta, fn, cfg.max_len, trim=meta["family"] == "sasrec")


# ---------------------------------------------------------------------------------------------- onnx

def export_onnx(module: nn.Module, family: str, cfg, path: Path, opset: int) -> None:
    """SASRec: the restructured fp32 scoring path (batch and length dynamic); other families: the module's
    ``scores`` at the fixed max_len (batch dynamic)."""
    import warnings

    class Scores(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, seq):
            return self.m.scores(seq)

    if family == "sasrec":
        wrapped = sasrec_infer(copy.deepcopy(module).float().eval(), cfg, {})
        for m in wrapped.modules():
            if isinstance(m, SASRecInfer):
                m.export_mode = True  # no data-dependent shortcut in the traced graph
        axes = {"seq": {0: "batch", 1: "length"}, "scores": {0: "batch"}}
    else:
        wrapped = Scores(copy.deepcopy(module).float().eval())
        axes = {"seq": {0: "batch"}, "scores": {0: "batch"}}
    example = torch.randint(1, module.n_items + 1, (2, cfg.max_len))
    example[0, : cfg.max_len // 2] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped.eval(), (example,), str(path), input_names=["seq"], output_names=["scores"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)


def top10(scores: np.ndarray, histories) -> np.ndarray:
    from aimass.evaluation import exclusion_mask, top_k

    return top_k(scores, 10, exclusion_mask(scores.shape[1], histories))[0]


def onnx_agreement(ref_scores: np.ndarray, onnx_scores: np.ndarray, histories, tol: float = 1e-4) -> dict:
    """Top-10 of onnxruntime vs torch, which must be equal up to float ties. Raises when a user's lists differ
    by more: an item in one list but not the other must score within ``tol`` of the torch 10th score, and
    where the two lists hold different items at one rank, torch must score those two items within ``tol`` (a
    swap of rank 1 and 10 keeps the set, not the ranking)."""
    a, b = top10(ref_scores, histories), top10(onnx_scores, histories)
    exact = float(np.mean([(x == y).all() for x, y in zip(a, b, strict=True)]))
    same_set = float(np.mean([set(x) == set(y) for x, y in zip(a, b, strict=True)]))
    for u, (x, y) in enumerate(zip(a, b, strict=True)):
        ref = ref_scores[u]
        tenth = float(ref[x[-1]])
        extra = set(y.tolist()) - set(x.tolist())
        if extra:
            gap = max(abs(float(ref[i]) - tenth) for i in extra)
            if gap > tol * max(1.0, abs(tenth)):
                _disagree(u, x, y, gap)
        for i, j in zip(x.tolist(), y.tolist(), strict=True):
            gap = abs(float(ref[i]) - float(ref[j]))
            if i != j and gap > tol * max(1.0, abs(float(ref[i]))):
                _disagree(u, x, y, gap)
    return {"onnx_top10_exact": exact, "onnx_top10_same_set": same_set,
            "onnx_max_abs_diff": float(np.abs(ref_scores[:, 1:] - onnx_scores[:, 1:]).max())}


def _disagree(user: int, torch_top: np.ndarray, onnx_top: np.ndarray, gap: float) -> NoReturn:
    raise RuntimeError(f"onnx top-10 differs from torch for sample user {user}: {onnx_top.tolist()} vs "
                       f"{torch_top.tolist()} (score gap {gap:.2e}); refusing to register the export")


def write_meta(path: Path, meta: dict) -> None:
    (path / META).write_text(json.dumps({"format": FORMAT, **meta}, separators=(",", ":")))


def folder_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
