"""Two-tower retrieval: a user (sequence) tower pools the user's recent items into one vector, an item tower
maps each item to a vector, score = dot product (serving = one matrix product or a nearest-neighbour index).

Item tower: an item-id embedding plus, when ``item_features`` ([n_items + 1, F], e.g. MiniLM text vectors from
``aimass.zoo.text``) are given, a learned projection of those frozen features, so an item never seen in
training still gets a content vector. Histories are read through the same item tower.

User tower (``pool="attention"``): one attention pool over the last ``max_len`` items with recency
(position-from-the-end) embeddings and a query built from the most recent item, then a residual MLP. Mean
pooling (``pool="mean"``, YouTube-DNN style) weighs the last item like one watched months ago; next-item data
is dominated by recency, which the attention pool learns at O(L * D) cost (no L^2 self-attention).

The estimator's hooks (``resolve_config``, ``build_module``, ``training_data``, ``make_optimizer``,
``train_step``, ``score_module``, ``adopt``) are what a distributed loop (Ray Train DDP) drives, and ``fit``
is built from them. The loss only ever calls ``module(...)``, so DDP's gradient hooks fire; the features
are a constant buffer, so such a loop may pass ``broadcast_buffers=False``. Ids: 1..n_items, 0 = padding.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from aimass.zoo import MAX_DIM, MAX_LEN, MAX_SIZE, MAX_STEPS, Seed, _losses
from aimass.zoo._neural import NeuralEstimator, SparseAwareAdamW, adamw, clip_grad_norm, left_pad, sparse_table

# "auto" uses the full softmax up to this catalogue size: each step then runs the item tower over the whole
# catalogue and a [batch, n_items] logits product; above it, 1024 shared uniform negatives cost the same
# at any catalogue size.
_CE_MAX_ITEMS = 2**15
_MAX_LEN_CAP = 50  # TODO measure


class TwoTowerConfig(BaseModel):
    """Every hyper-parameter; ``None`` / ``"auto"`` fields are derived from the data by :meth:`resolve`."""

    # allow_inf_nan=False: gt=0 lets inf through (every family: an endless time budget, a NaN model from lr or l2)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    loss: Literal["auto", "ce", "sampled_softmax", "bpr"] = "auto"
    n_negatives: int = Field(1024, ge=1, le=MAX_SIZE)  # sampled_softmax: uniform negatives shared by the batch
    pool: Literal["attention", "mean"] = "attention"
    max_len: int | None = Field(None, ge=1, le=MAX_LEN)  # None: 90th percentile of sequence lengths, in [8, 50]
    positions_per_user: int | None = Field(32, ge=1, le=MAX_LEN)  # targets per user per epoch (None: every position)
    dim: int = Field(64, ge=8, le=MAX_DIM)
    dropout: float = Field(0.1, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0, le=MAX_STEPS)
    schedule: Literal["constant", "cosine"] = "constant"
    batch_size: int = Field(256, ge=1, le=MAX_SIZE)
    epochs: int = Field(200, ge=1, le=MAX_SIZE)
    patience: int | None = Field(10, ge=1)    # epochs without a better val NDCG@10; None: never stop early
    time_budget_s: float | None = Field(None, gt=0)
    seed: Seed = 0

    def resolve(self, n_items: int, sequence_lengths) -> TwoTowerConfig:
        """Fill the data-dependent fields; returns a new config (idempotent)."""
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        lengths = np.asarray(sequence_lengths, dtype=np.int64)
        upd: dict = {}
        if self.max_len is None:
            p90 = int(np.percentile(lengths, 90)) if len(lengths) else 50
            upd["max_len"] = int(min(_MAX_LEN_CAP, max(8, p90)))
        if self.loss == "auto":
            upd["loss"] = "ce" if n_items <= _CE_MAX_ITEMS else "sampled_softmax"
        return self.model_copy(update=upd)


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # a uniform draw + comparison: about 3x faster than nn.Dropout's bernoulli_ on these CPUs, same RNG
    if not training or p == 0:
        return x
    return x * (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))


class TwoTowerModule(nn.Module):
    def __init__(self, n_items: int, cfg: TwoTowerConfig, item_features: np.ndarray | None = None):
        super().__init__()
        if cfg.max_len is None:
            raise ValueError("call TwoTowerConfig.resolve() first (max_len is None)")
        d = cfg.dim
        self.n_items, self.max_len, self.dim = n_items, cfg.max_len, d
        self.pool, self.p = cfg.pool, cfg.dropout
        # Sampled losses read a few thousand rows per step: sparse gradients let the optimizer touch only those.
        # Dense, every step wrote and updated the whole table: 0.13 s a step at 1M items on 2 cores against
        # 0.011 s sparse (benchmarks/sparse_step.py). NCCL cannot all-reduce them: DDP over NCCL stays dense.
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0, sparse=sparse_table(cfg.loss))
        nn.init.normal_(self.item_emb.weight, std=d ** -0.5)
        self.feat_proj: nn.Linear | None = None
        if item_features is not None:
            f = torch.as_tensor(np.asarray(item_features, dtype=np.float32)).clone()
            if f.ndim != 2 or f.shape[0] != n_items + 1:
                raise ValueError(f"item_features must be [n_items + 1, F] = [{n_items + 1}, F], "
                                 f"got {tuple(f.shape)}")
            if not torch.isfinite(f).all():
                raise ValueError("item_features contain NaN or inf")
            f[0] = 0  # padding has no content
            self.register_buffer("item_features", f)  # frozen; saved with the weights
            self.feat_proj = nn.Linear(f.shape[1], d, bias=False)
            nn.init.normal_(self.feat_proj.weight, std=d ** -0.5)  # unit-norm inputs -> ~unit-norm outputs
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=d ** -0.5)
        if self.pool == "attention":  # created only when used: DDP rejects parameters without gradients
            self.query = nn.Parameter(torch.zeros(d))
            self.q_last = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)

    def item_vectors(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Item tower: [*ids.shape, D] (all items, [n_items + 1, D], when ``ids`` is None); padding -> 0."""
        if ids is None:  # whole tables, no gather
            v = self.item_emb.weight
            return v if self.feat_proj is None else v + self.feat_proj(self.item_features)
        v = self.item_emb(ids)
        return v if self.feat_proj is None else v + self.feat_proj(self.item_features[ids])

    def _pool(self, hv: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """[B, L, D] history vectors (left-padded) -> [B, D] user vectors."""
        keep = seq != 0
        _, length, d = hv.shape
        # positions count back from the end, so the last item's embedding never depends on the padding.
        # Padding rows are left unmasked (no [B, L, D] pass): they get zero weight in both pools.
        x = hv + self.pos_emb(torch.arange(self.max_len - length, self.max_len, device=hv.device))
        if self.pool == "mean":
            w = keep.to(x.dtype) / keep.sum(1, keepdim=True).clamp_min(1)
        else:
            q = self.query + self.q_last(x[:, -1])  # the most recent item steers what to look at
            a = torch.bmm(x, q.unsqueeze(-1)).squeeze(-1) / math.sqrt(d)
            # finite fill: an empty history pools to ~0 (the MLP's "no history" vector), never NaN
            w = a.masked_fill(~keep, torch.finfo(a.dtype).min).softmax(-1) * keep
        pooled = _dropout(torch.bmm(w.unsqueeze(1), x).squeeze(1), self.p, self.training)
        return self.norm(pooled + self.ffn(pooled))

    def forward(self, seq: torch.Tensor, items: torch.Tensor | None = None):
        """``(user vectors [B, D], item vectors)``: ``items`` [K] -> [K, D]; None -> all, [n_items + 1, D].

        The item tower runs once over the distinct ids of the batch (histories + candidates)."""
        seq = seq[:, -self.max_len:]
        if items is None:
            v = self.item_vectors()
            return self._pool(v[seq], seq), v
        uniq, inv = torch.unique(torch.cat([seq.reshape(-1), items]), return_inverse=True)
        v = self.item_vectors(uniq)
        return self._pool(v[inv[:seq.numel()]].view(*seq.shape, -1), seq), v[inv[seq.numel():]]

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        seq = seq[:, -self.max_len:]
        return self._pool(self.item_vectors(seq), seq)

    def scores(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, n_items + 1] scores of the next item; column 0 (padding) is -inf."""
        u, v = self.forward(seq)
        s = u @ v.T
        s[:, 0] = float("-inf")
        return s


class TwoTowerTrainingData(torch.utils.data.Dataset):
    """Samples ``(history [max_len] left-padded, target [])``: target = item t, history = the items before it.

    Each user with n >= 2 items contributes min(n - 1, positions_per_user) targets per epoch, so heavy users
    do not dominate and the length is fixed (DistributedSampler-ready). Positions are drawn one per equal
    stratum of the user's sequence (spread over the whole history), redrawn each epoch from (seed, epoch)
    only, so every DDP worker agrees: call :meth:`set_epoch` like DistributedSampler.
    """

    def __init__(self, sequences: list[np.ndarray], cfg: TwoTowerConfig):
        if cfg.max_len is None:
            raise ValueError("call TwoTowerConfig.resolve() first (max_len is None)")
        self.seqs = [np.asarray(s, dtype=np.int64) for s in sequences if len(s) >= 2]
        n_pos = np.array([len(s) - 1 for s in self.seqs], dtype=np.int64)
        k = n_pos if cfg.positions_per_user is None else np.minimum(n_pos, cfg.positions_per_user)
        self.owner = np.repeat(np.arange(len(self.seqs)), k)
        slot = np.arange(len(self.owner)) - np.repeat(np.cumsum(k) - k, k)
        n, k = n_pos[self.owner], k[self.owner]
        self.lo, self.width = slot * n // k, (slot + 1) * n // k - slot * n // k  # stratum of each sample
        self.max_len, self.seed = cfg.max_len, cfg.seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        r = np.random.default_rng((self.seed, epoch)).random(len(self.owner))
        self.t = 1 + self.lo + np.minimum((r * self.width).astype(np.int64), self.width - 1)

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, i: int):
        s, t = self.seqs[self.owner[i]], int(self.t[i])
        return torch.from_numpy(left_pad(s[:t], self.max_len)), torch.tensor(s[t])


def two_tower_loss(module: nn.Module, batch, cfg: TwoTowerConfig, generator: torch.Generator | None = None):
    """Next-item loss of one batch. ``module`` may be DDP-wrapped: it is only called, never looked into
    (except for ``n_items``)."""
    hist, target = batch
    n = getattr(module, "module", module).n_items
    if cfg.loss == "ce":
        u, v = module(hist)
        return _losses.full_softmax_ce(u, target, v)
    k = len(target) if cfg.loss == "bpr" else min(cfg.n_negatives, n)
    neg = _losses.uniform_negatives(k, n, target.device, generator)
    # the item tower runs once per distinct candidate; ids are remapped to rows of the returned vectors
    ids, inv = torch.unique(torch.cat([target, neg]), return_inverse=True)
    u, v = module(hist, ids)
    t, neg = inv[:len(target)], inv[len(target):]
    if cfg.loss == "bpr":  # Rendle et al. 2009: -log sigmoid(s_pos - s_neg), one negative per example
        return F.softplus((u * v[neg]).sum(-1) - (u * v[t]).sum(-1)).mean()
    if cfg.loss == "sampled_softmax":
        return _losses.sampled_softmax(u, t, v, neg)
    raise ValueError(f"unresolved loss {cfg.loss!r}: call TwoTowerConfig.resolve() first")


def two_tower_lr(cfg: TwoTowerConfig, step: int, progress: float) -> float:
    """Learning rate at ``step``; ``progress`` in [0, 1] is the fraction of training done (cosine only)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        warm *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm


class TwoTower(NeuralEstimator):
    """Estimator: ``TwoTower(dim=128).fit(sequences, n_items, valid=(hist, targets)).score(histories)``;
    ``item_features`` [n_items + 1, F] given to ``fit`` feed the item tower and are saved with the weights."""

    family = "two-tower"  # the name in aimass.zoo' registry
    Config = TwoTowerConfig
    accepts_item_features = True

    # ---- uniform hooks (a generic DDP loop calls these; fit() is built from them) -----------------------
    @staticmethod
    def build_module(cfg: TwoTowerConfig, n_items: int, item_features: np.ndarray | None = None) -> nn.Module:
        return TwoTowerModule(n_items, cfg, item_features)

    @staticmethod
    def training_data(sequences: list[np.ndarray], cfg: TwoTowerConfig) -> TwoTowerTrainingData:
        return TwoTowerTrainingData(sequences, cfg)

    @staticmethod
    def make_optimizer(module: nn.Module, cfg: TwoTowerConfig) -> SparseAwareAdamW:
        return adamw(module, cfg.lr, cfg.weight_decay)

    @staticmethod
    def train_step(module, batch, cfg: TwoTowerConfig, optimizer, step: int = 0, progress: float = 0.0,
                   generator: torch.Generator | None = None) -> float:
        """One optimisation step; returns the loss as a float."""
        for g in optimizer.param_groups:
            g["lr"] = two_tower_lr(cfg, step, progress)
        module.train()
        loss = two_tower_loss(module, batch, cfg, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(module.parameters(), 5.0)
        optimizer.step()
        return float(loss.detach())

    # ---- retrieval: score = user_vectors(h) @ item_table().T, which an ANN index serves ------------------
    @torch.no_grad()
    def item_table(self) -> np.ndarray:
        """float32 [n_items + 1, D] item vectors (row 0 = padding); ``score`` is ``user_vectors @ table.T``."""
        self.module_.eval()
        return self.module_.item_vectors().float().cpu().numpy()

    @torch.no_grad()
    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        """float32 [n, D] user vectors, padded exactly as ``score`` pads them."""
        self.module_.eval()
        return self.module_.user_vectors(self._sequences(histories)).float().cpu().numpy()
