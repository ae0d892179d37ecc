"""What every neural family's estimator shares, as transformers' PreTrainedModel holds what its model files
share: params, fit through the zoo's one loop, scoring in fixed-shape batches, adopting a trained module,
and saving as JSON + safetensors (no pickle). A family file keeps its model, loss and step, and names them in
the class attributes ``family``, ``Config``, ``build_module`` and the training hooks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


def left_pad(seq, length: int) -> np.ndarray:
    """The last ``length`` ids of ``seq``, left-padded with 0 (positions count from the end)."""
    out = np.zeros(length, dtype=np.int64)
    seq = np.asarray(seq, dtype=np.int64)[-length:]
    if len(seq):
        out[length - len(seq):] = seq
    return out


def fused(params) -> dict:
    """Adam(W)'s ``fused`` option where every parameter allows it (floating point, on CPU or CUDA): one kernel a
    step over each tensor instead of a dozen passes, the same update to rounding. The optimizer's step of a
    million-row item table took 0.04 s against 0.41 on 2 cores."""
    ok = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return {"fused": True} if ok else {}


def _nccl_ddp() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 \
        and dist.get_backend() == "nccl"


class SparseAwareAdamW:
    """AdamW for the dense parameters and torch's SparseAdam (lazy: only the rows a step read) for the sparse
    embedding, behind one optimizer's face (``param_groups``, ``zero_grad``, ``step``, ``state_dict``)."""

    def __init__(self, groups: list[dict], sparse: list[nn.Parameter], lr: float, betas: tuple[float, float]):
        self.dense = torch.optim.AdamW(groups, lr=lr, betas=betas, **fused([p for g in groups for p in g["params"]]))
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr, betas=betas) if sparse else None
        self.parts = [o for o in (self.dense, self.sparse) if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.parts for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.parts:
            o.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), **({"sparse": self.sparse.state_dict()} if self.sparse else {})}

    def load_state_dict(self, state: dict) -> None:
        if "dense" not in state:  # a checkpoint of the single AdamW of before (every table dense)
            if self.sparse is not None:
                raise ValueError("this checkpoint's optimizer state has a dense item table (saved before sampled "
                                 "losses trained the table sparsely): train the model again")
            state = {"dense": state}
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None:
            self.sparse.load_state_dict(state["sparse"])


def clip_grad_norm(params, max_norm: float) -> None:
    """``clip_grad_norm_`` that also counts sparse gradients (torch's raises on them)."""
    grads = [p for p in params if p.grad is not None]
    if not any(p.grad.is_sparse for p in grads):
        torch.nn.utils.clip_grad_norm_(grads, max_norm)
        return
    for p in grads:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    total = torch.sqrt(sum((p.grad.values() if p.grad.is_sparse else p.grad).float().pow(2).sum() for p in grads))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in grads:
        if p.grad.is_sparse:
            p.grad = p.grad * coef
        else:
            p.grad.mul_(coef.to(p.grad.dtype))


def adamw(module: nn.Module, lr: float, weight_decay: float) -> SparseAwareAdamW:
    """A neural family's optimizer: AdamW, lazy Adam for the embeddings that take sparse gradients, and no weight
    decay on embeddings, norms and biases (decaying rare items' rows only hurts them)."""
    named = list(module.named_parameters())
    sparse = [m.weight for m in module.modules() if isinstance(m, nn.Embedding) and m.sparse]
    decay = [p for n, p in named if p.ndim == 2 and "emb" not in n]
    rest = [p for n, p in named if not (p.ndim == 2 and "emb" not in n) and not any(p is q for q in sparse)]
    return SparseAwareAdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            sparse, lr=lr, betas=(0.9, 0.98))


def sparse_table(loss: str) -> bool:
    """Whether an item table gets sparse gradients: with a sampled loss a step reads a few thousand of its rows,
    and a dense gradient would write (and the optimizer update) every row. NCCL cannot all-reduce sparse
    gradients: DDP over NCCL stays dense."""
    return loss != "ce" and not _nccl_ddp()


class NeuralEstimator:
    is_torch = True
    accepts_item_features = False

    def __init__(self, **params):
        self.params = params  # validated in fit(), as in scikit-learn

    def get_params(self, deep: bool = True) -> dict:
        return dict(self.params)

    def resolve_config(self, n_items: int, sequence_lengths, time_budget_s: float | None = None):
        """The config with the data-dependent fields filled; ``time_budget_s`` is the job's budget (a family
        may size itself to it)."""
        return self.Config(**self.params).resolve(n_items, sequence_lengths)

    @staticmethod
    @torch.no_grad()
    def score_module(module: nn.Module, histories: list[np.ndarray], cfg, batch_size: int = 256) -> np.ndarray:
        """float32 [n, n_items + 1] next-item scores (column 0 = -inf); history items are NOT masked."""
        module = getattr(module, "module", module).eval()
        out = np.empty((len(histories), module.n_items + 1), dtype=np.float32)
        device = next(module.parameters()).device
        for i in range(0, len(histories), batch_size):
            # always pad to max_len: identical shapes, so a user's scores do not depend on the batch
            seq = torch.from_numpy(np.stack([left_pad(h, cfg.max_len) for h in histories[i:i + batch_size]]))
            # a GPU-trained module scores where it lives; the caller always gets CPU float32
            out[i:i + len(seq)] = module.scores(seq.to(device)).float().cpu().numpy()
        return out

    def adopt(self, module: nn.Module, cfg, n_items: int):
        """Take the learned state from a trained module (DDP's ``.module`` unwrapped)."""
        self.module_ = getattr(module, "module", module).eval()
        self.config_, self.n_items_ = cfg, n_items
        self.best_epoch_ = getattr(self, "best_epoch_", None)
        self.history_ = getattr(self, "history_", [])
        return self

    def fit(self, sequences: list[np.ndarray], n_items: int, *, valid=None, item_features=None,
            progress: bool = False):
        """Train in this process (the same loop a Ray Train worker runs); ``valid`` = (histories, targets)
        picks the best epoch and drives early stopping; ``item_features`` [n_items + 1, F] reach the model
        only in a family that accepts them."""
        from aimass.zoo.trainer import fit_neural

        feats = item_features if self.accepts_item_features else None
        return fit_neural(self, sequences, n_items, valid=valid, item_features=feats, progress=progress)

    def score(self, histories: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """float32 [n, n_items + 1] next-item scores (column 0 = -inf); history items are NOT masked."""
        return self.score_module(self.module_, histories, self.config_, batch_size)

    def _sequences(self, histories: list[np.ndarray]) -> torch.Tensor:
        """Histories as the module's input: [n, max_len] left-padded ids, on the module's device."""
        device = next(self.module_.parameters()).device
        return torch.from_numpy(np.stack([left_pad(h, self.config_.max_len) for h in histories])).to(device)

    def save(self, path: str | Path) -> None:
        """``config.json`` + ``weights.safetensors`` (frozen buffers such as item features included)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"family": self.family, "n_items": self.n_items_, "best_epoch": self.best_epoch_,
                "config": self.config_.model_dump()}
        (path / "config.json").write_text(json.dumps(meta, indent=2))
        save_file({k: v.contiguous() for k, v in self.module_.state_dict().items()},
                  str(path / "weights.safetensors"))

    @classmethod
    def load(cls, path: str | Path):
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / "config.json").read_text())
        state = load_file(str(path / "weights.safetensors"))
        cfg = cls.Config(**meta["config"])
        est = cls(**meta["config"])
        feats = state.get("item_features")
        module = est.build_module(cfg, meta["n_items"], None if feats is None else feats.numpy())
        module.load_state_dict(state)
        est.best_epoch_ = meta["best_epoch"]
        return est.adopt(module, cfg, meta["n_items"])
