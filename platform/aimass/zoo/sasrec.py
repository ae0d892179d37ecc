"""SASRec (Kang & McAuley 2018): a causal Transformer over a user's item sequence, next item = dot product
with the (tied) item embeddings. One self-contained family: config, network, data, loss, training step,
scoring and a scikit-learn-style estimator.

The pieces are separate so that a distributed loop (Ray Train DDP) can drive them; ``SASRec.fit`` uses
the very same pieces in one process:

    cfg = SASRecConfig(**params).resolve(n_items, lengths)      # data-dependent defaults, once
    module = SASRecModule(n_items, cfg)
    data = SASRecTrainingData(sequences, cfg)                   # fixed-size tensors, DistributedSampler-ready
    opt = sasrec_optimizer(module, cfg)
    loss = sasrec_train_step(module, batch, cfg, opt, step, progress, generator)  # per batch

(the ``SASRec`` estimator exposes the same pieces as the hooks aimass.zoo documents).

Sequences are left-padded with 0; item ids are dense 1..n_items.
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

DENSE_PER_ITEM = 50  # training interactions per item from which a catalogue counts as dense
# Members of a budgeted job on sparse data (``members`` None): as many SASRecs as the budget gives at least
# MEMBER_EPOCHS epochs each, up to MAX_MEMBERS. On ml1m-short SASRec peaked at about its 30th epoch, well
# inside its first 2 minutes of 45, and 2 / 3 / 4 members of 1.5 minutes each validated 0.1038 / 0.1043 /
# 0.1048 against one's 0.1007 (test 0.0976 / 0.0977 / 0.0970 against 0.0945; benchmarks/short_history.py).
MAX_MEMBERS = 4
MEMBER_EPOCHS = 40
# the epoch time is estimated before training from its multiply-adds at this rate: on 2 shared CPU cores
# (bf16) epochs ran at 4.2e10 a second on ml1m-short (3.4k items, validation included) and 5-6e10 on random
# data of 22k users x 12k items and 30k x 23k; a lower rate errs towards fewer, longer-trained members
ASSUMED_FLOPS = 3e10
CE_MAX_ITEMS = 32_768  # loss "auto": sampled softmax above (two-tower's threshold for the same reason)
CLIP_NORM = 5.0  # gradient norm clip, per member: an ensemble's members train as each would alone


class SASRecConfig(BaseModel):
    """Every hyper-parameter. ``None`` / ``"auto"`` fields are derived from the data by :meth:`resolve`.

    Defaults were tuned on MovieLens-1M (ml1m-seq protocol, 2 shared CPU cores, 60 minutes; see
    benchmarks/sasrec_ml1m.py): full-softmax CE over every position, dim 128 with dropout 0.3 (better per
    epoch than dim 64 and level with it per second after 6 minutes, so more headroom), batch 64 with lr 3e-3
    (twice the updates per epoch: 0.135 val NDCG@10 after 4 minutes vs 0.112 after 6 at batch 128 / 2e-3),
    cosine decay that follows the time budget when one is set.

    Width and dropout adapt to the data (``dim`` / ``dropout`` None): ML-1M has ~290 training interactions
    per item; sparse catalogues (Amazon-style reviews ~10-20, Last.fm ~5) give each item embedding too few
    examples for 128 dimensions at dropout 0.3, so below ``DENSE_PER_ITEM`` they get dim 64 and dropout
    0.5, the SASRec paper's settings for its sparse Amazon sets (it used 0.2 for ML-1M).
    """

    # allow_inf_nan=False: gt=0 lets inf through (every family: an endless time budget, a NaN model from lr or l2)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # "auto": full softmax CE while a batch's logits (tokens x n_items) stay under ce_max_logits, else sampled
    # softmax with n_negatives shared uniform negatives. CE memory is chunked (_losses), so the limit is
    # compute (3 products of [tokens, D] x [D, n_items] a step): 2^28 logits is ~39k items at ML-1M's
    # 107 tokens per user and batch 64 (sparse data reaches CE_MAX_ITEMS first). Sampled softmax
    # learnt slower per epoch on ML-1M (val 0.037 vs 0.094 after 6 epochs), hence CE whenever affordable:
    # up to CE_MAX_ITEMS, above which the head's products over the whole catalogue cost 32x and more those of
    # the sampled softmax (135,000 items, 150,000 sparse users: 30 CE steps in 3 minutes, NDCG@10 0.0000)
    loss: Literal["auto", "ce", "sampled_softmax", "gbce", "bce"] = "auto"
    ce_max_logits: int = Field(2**28, ge=1, le=MAX_STEPS)
    n_negatives: int = Field(1024, ge=1, le=MAX_SIZE)  # sampled_softmax / gbce (shared by the batch); bce uses 1
    gbce_t: float = Field(0.75, ge=0, le=1)
    max_len: int | None = Field(None, ge=2, le=MAX_LEN)  # None: 90th percentile of sequence lengths, capped at 200
    dim: int | None = Field(None, ge=8, le=MAX_DIM)  # None: 128 for dense data, 64 for sparse (see the docstring)
    n_blocks: int = Field(2, ge=1, le=64)
    n_heads: int = Field(1, ge=1, le=64)
    ffn_mult: int = Field(1, ge=1, le=64)     # feed-forward width = ffn_mult * dim (SASRec uses 1)
    dropout: float | None = Field(None, ge=0, lt=1)  # None: 0.3 for dense data, 0.5 for sparse
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0, le=MAX_STEPS)
    schedule: Literal["constant", "cosine"] = "cosine"
    batch_size: int = Field(64, ge=1, le=MAX_SIZE)
    epochs: int = Field(200, ge=1, le=MAX_SIZE)
    patience: int | None = Field(20, ge=1)   # epochs without a better val NDCG@10; None: never stop early
    # Which max_len window of a longer sequence to train on: "random" draws a new one per epoch (more varied
    # data from long histories; nothing changes for users with at most max_len + 1 items). ml1m (26% of users
    # longer than 201), 60 min: validation NDCG@10 0.1925 on average from epoch 40 vs 0.1838 with "last", best
    # 0.2009 vs 0.1912; test NDCG@10 level (0.1344 vs 0.1354).
    crop: Literal["last", "random"] = "random"
    # Batches of users of similar length, left padding trimmed to the batch's longest: the Transformer runs
    # on 113 instead of 200 positions per ML-1M user (0.22 vs 0.39 s a step, see SASRecBatchSampler).
    bucket: bool = True
    # mean target tokens per training sequence (derived): a batch's loss is its token sum over
    # batch x this, so each token weighs the same whether its batch holds short or long sequences
    tokens_per_seq: float | None = Field(None, gt=0)
    time_budget_s: float | None = Field(None, gt=0)
    seed: Seed = 0
    # bf16 autocast on CPU, CE head's products included; None: on when the CPU has bf16 instructions.
    # ml1m, 6 min on 2 EPYC cores: 40 vs 49 s/epoch, val NDCG@10 0.157 vs 0.144 (benchmarks/sasrec_ml1m.py)
    bf16: bool | None = None
    # independent SASRecs trained side by side, scores averaged (an ensemble; see MAX_MEMBERS). None: 1 on
    # dense data or without a time budget, else what the budget affords (members_for_budget)
    members: int | None = Field(None, ge=1, le=16)

    def resolve(self, n_items: int, sequence_lengths, time_budget_s: float | None = None) -> SASRecConfig:
        """Fill the data-dependent fields; returns a new config (idempotent). ``time_budget_s``: the job's
        budget, when the job (not this config) carries it."""
        lengths = np.asarray(sequence_lengths, dtype=np.int64)
        upd: dict = {}
        if self.max_len is None:
            # covers 90% of users fully; the cap bounds the L^2 attention (the tail gains little)
            p90 = int(np.percentile(lengths, 90)) if len(lengths) else 50
            upd["max_len"] = int(min(200, max(8, p90)))
        max_len = upd.get("max_len", self.max_len)
        targets = np.minimum(lengths - 1, max_len).clip(0)  # training tokens per user
        # over the users SASRecTrainingData keeps (2 items or more): those with fewer are no batch's, and
        # counting them would underestimate a batch's tokens (the loss scale and the CE rule below)
        kept = targets[lengths >= 2]
        per_user = float(kept.mean()) if len(kept) else 1.0
        dense = float(lengths.sum()) / max(n_items, 1) >= DENSE_PER_ITEM
        if self.dim is None:
            upd["dim"] = 128 if dense else 64
        if self.dropout is None:
            upd["dropout"] = 0.3 if dense else 0.5
        if self.tokens_per_seq is None:
            upd["tokens_per_seq"] = max(per_user, 1.0)
        if self.loss == "auto":
            tokens = self.batch_size * per_user
            affordable = tokens * n_items <= self.ce_max_logits and n_items <= CE_MAX_ITEMS
            upd["loss"] = "ce" if affordable else "sampled_softmax"
        if self.bf16 is None:
            upd["bf16"] = _cpu_has_bf16()
        dim = upd.get("dim", self.dim)
        if self.members is None:
            budget = time_budget_s or self.time_budget_s
            upd["members"] = 1 if dense or not budget else members_for_budget(
                budget, float(targets.sum()), dim, n_items, self.n_blocks, self.ffn_mult)
        if self.n_heads > 1 and dim % self.n_heads:
            raise ValueError(f"dim={dim} is not divisible by n_heads={self.n_heads}")
        return self.model_copy(update=upd)


def members_for_budget(budget_s: float, tokens: float, dim: int, n_items: int, n_blocks: int,
                       ffn_mult: int = 1) -> int:
    """How many members a budget trains for MEMBER_EPOCHS epochs each, 1 to MAX_MEMBERS. An epoch's cost is
    estimated from its multiply-adds (forward and backward: 3 products) per training token: the full-softmax
    head over the catalogue and the blocks' projections. A large catalogue keeps one member: there each
    epoch is long and one model needs the whole budget."""
    per_token = 6.0 * dim * (n_items + (4 + 2 * ffn_mult) * dim * n_blocks)
    epochs = budget_s * ASSUMED_FLOPS / max(tokens * per_token, 1.0)
    return int(min(MAX_MEMBERS, max(1, epochs // MEMBER_EPOCHS)))


def _cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 products run about twice as fast as fp32 there, and slower elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class _Dropout(nn.Module):
    """Dropout from a uniform draw: ``nn.Dropout``'s bernoulli_ took 25 ms per [128, 200, 64] call on these
    CPUs (a fifth of a training step), a rand_like comparison a third of that. Same RNG, so still seeded."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))


class _SASRecBlock(nn.Module):
    """Pre-norm Transformer block: more stable than SASRec's post-norm at higher learning rates."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_mult * cfg.dim), nn.GELU(), _Dropout(cfg.dropout),
                                 nn.Linear(cfg.ffn_mult * cfg.dim, cfg.dim))
        self.drop = _Dropout(cfg.dropout)

    def forward(self, x, attn_mask, last_only: bool = False):
        """``last_only``: the output at the last position alone, [B, 1, D] (keys and values still of every
        position): all a next-item score reads of the last block, in about a fifth of its work."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if last_only:
            q, attn_mask, x, n = q[:, :, -1:], attn_mask[:, :, -1:], x[:, -1:], 1
        # no dropout on the [B, H, L, L] attention weights: it cost more than the rest of the block
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRecModule(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        if cfg.max_len is None:
            raise ValueError("call SASRecConfig.resolve() first (max_len is None)")
        self.n_items, self.max_len, self.dim = n_items, cfg.max_len, cfg.dim
        # a sampled loss reads a few thousand rows a step: sparse gradients spare the rest of a large table
        # (dense, a step at a million items wrote and updated all of it: 0.22 s against 0.027 s on 2 cores,
        # benchmarks/sparse_step.py)
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0, sparse=sparse_table(cfg.loss))
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = _Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_SASRecBlock(cfg) for _ in range(cfg.n_blocks))
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.item_emb.weight, std=cfg.dim ** -0.5)
        nn.init.normal_(self.pos_emb.weight, std=cfg.dim ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, L] left-padded ids -> [B, L, D]; position t sees positions <= t that are not padding.
        ``last_only``: [B, 1, D], the last position's alone (what scoring reads), its last block's work cut
        to keys and values for the rest."""
        seq = seq[:, -self.max_len:]
        n = seq.shape[1]
        keep = seq != 0
        # positions count back from the end, so the last item always has the same position embedding
        # whatever the padding: this is what makes scores independent of batch composition.
        pos = torch.arange(self.max_len - n, self.max_len, device=seq.device)
        x = self.drop(self.item_emb(seq) * math.sqrt(self.dim) + self.pos_emb(pos)) * keep.unsqueeze(-1)
        causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
        # a padded query sees only itself, so no softmax row is empty (that would give NaN)
        mask = (causal & keep[:, None, :]) | torch.eye(n, dtype=torch.bool, device=seq.device)
        mask = mask.unsqueeze(1)  # [B, 1, L, L], broadcast over heads
        for i, block in enumerate(self.blocks):
            last = last_only and i == len(self.blocks) - 1
            x = block(x, mask, last) * keep[:, -1:].unsqueeze(-1) if last else block(x, mask) * keep.unsqueeze(-1)
        return self.norm(x)

    def head_weight(self) -> torch.Tensor:
        """The output layer, [n_items + 1, D]: scores = forward(seq)[:, -1] @ head_weight().T."""
        return self.item_emb.weight

    def scores(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, n_items + 1] scores of the next item; column 0 (padding) is -inf."""
        return _scores(self, seq)


class SASRecEnsemble(nn.Module):
    """``members`` SASRecs with their own weights, each trained on its own loss (sasrec_loss), scored by the
    mean of their scores. That mean is one dot product, concat(hidden) @ concat(tables).T / members, so
    ``forward`` and ``head_weight`` give every path built on ``user vector @ item table`` (an ANN index,
    the quantised scan) the ensemble's exact scores."""

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.members = nn.ModuleList(SASRecModule(n_items, cfg) for _ in range(cfg.members))
        self.n_items, self.max_len, self.dim = n_items, cfg.max_len, cfg.dim

    def forward(self, seq: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, L] -> [B, L, members * D] ([B, 1, members * D] with ``last_only``): the members' hidden states
        side by side."""
        return torch.cat([m(seq, last_only) for m in self.members], dim=-1)

    def head_weight(self) -> torch.Tensor:
        return torch.cat([m.item_emb.weight for m in self.members], dim=-1) / len(self.members)

    def scores(self, seq: torch.Tensor) -> torch.Tensor:
        return _scores(self, seq)


def _scores(module, seq: torch.Tensor) -> torch.Tensor:
    h = module.forward(seq, last_only=True)[:, -1]
    s = h.float() @ module.head_weight().float().T
    s[:, 0] = float("-inf")
    return s


def n_members(cfg) -> int:
    """The networks a (any family's) config builds: a SASRec ensemble's members, else 1."""
    return int(getattr(cfg, "members", None) or 1)


def is_ensemble(cfg) -> bool:
    """Whether a (any family's) config builds a SASRec ensemble."""
    return n_members(cfg) > 1


def _members(module) -> list[SASRecModule]:
    """The single networks of a module (itself, or an ensemble's members), DDP's wrapper unwrapped."""
    inner = getattr(module, "module", module)
    return list(inner.members) if isinstance(inner, SASRecEnsemble) else [inner]


class SASRecTrainingData(torch.utils.data.Dataset):
    """One sample per user: ``(inputs [L], targets [L])`` with targets = inputs shifted by one, both
    left-padded to max_len (fixed size, so a DistributedSampler + default collate just work).

    ``crop="random"`` trains on a random window of sequences longer than max_len + 1 instead of the last
    one; the window depends on (seed, epoch, index) only, so call :meth:`set_epoch` like DistributedSampler.
    """

    def __init__(self, sequences: list[np.ndarray], cfg: SASRecConfig):
        if cfg.max_len is None:
            raise ValueError("call SASRecConfig.resolve() first (max_len is None)")
        self.seqs = [np.asarray(s, dtype=np.int64) for s in sequences if len(s) >= 2]
        self.max_len, self.crop, self.seed, self.epoch = cfg.max_len, cfg.crop, cfg.seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int):
        s = self.seqs[i]
        n = self.max_len + 1
        if len(s) > n and self.crop == "random":
            end = np.random.default_rng((self.seed, self.epoch, i)).integers(n, len(s) + 1)
            s = s[end - n:end]
        s = s[-n:]
        return (torch.from_numpy(left_pad(s[:-1], self.max_len)),
                torch.from_numpy(left_pad(s[1:], self.max_len)))


class SASRecBatchSampler(torch.utils.data.Sampler):
    """Batches of users of similar length, for :class:`SASRecTrainingData`.

    Each epoch: a seeded shuffle, cut into chunks of ``chunk`` batches, each chunk sorted by length and cut
    into global batches of ``batch_size``, the batches' order shuffled again. Rank r of N takes every N-th
    user of each global batch, so N workers see the same global batches as one (DDP-ready, no padding
    samples) and every rank yields the same number of batches. Left padding beyond a batch's longest user
    is then trimmed by :func:`sasrec_loss`, which is exact: positions count back from the end.
    """

    def __init__(self, lengths, batch_size: int, world: int = 1, rank: int = 0, seed: int = 0,
                 chunk: int = 16, sort: bool = True):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.world, self.rank, self.seed, self.chunk = batch_size, world, rank, seed, chunk
        self.sort, self.epoch = sort, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.chunk
        batches = []
        for c in range(0, len(order), span):
            part = order[c:c + span]
            if self.sort:
                part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[b:b + self.batch_size] for b in range(0, len(part), self.batch_size)]
        # a batch smaller than the number of workers would leave one with nothing to step on
        batches = [b for b in batches if len(b) >= self.world]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        for b in self._global_batches():
            yield b[self.rank::self.world].tolist()

    def __len__(self) -> int:
        return len(self._global_batches())


def sasrec_batch_sampler(dataset: SASRecTrainingData, cfg: SASRecConfig, world: int = 1, rank: int = 0,
                         seed: int = 0) -> SASRecBatchSampler:
    """The training batches' sampler: users of similar length, or plain shuffled batches (``bucket=False``)."""
    lengths = [min(len(s), cfg.max_len + 1) for s in dataset.seqs]
    return SASRecBatchSampler(lengths, cfg.batch_size, world, rank, seed, sort=cfg.bucket)


def sasrec_token_weight(n_tokens: int, n_users: int, cfg: SASRecConfig) -> float:
    """Factor from a batch's mean loss per token to its token sum over (users x ``tokens_per_seq``)."""
    return n_tokens / (n_users * cfg.tokens_per_seq) if cfg.tokens_per_seq else 1.0


def sasrec_trim(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding for every user of the batch. Exact, not an approximation:
    positions count back from the end and padding is masked out."""
    used = (inputs != 0).any(0).nonzero()
    if len(used) == 0:
        return inputs, targets
    return inputs[:, int(used[0]):], targets[:, int(used[0]):]


def sasrec_loss(module: SASRecModule, batch, cfg: SASRecConfig, generator: torch.Generator | None = None):
    """Next-item loss over every non-padding position of the batch (not only the last: ~100x the signal).
    An ensemble's is the sum of its members' losses, each on its own hidden states and table, so each member
    learns as it would alone."""
    inputs, targets = sasrec_trim(*batch)
    members = _members(module)  # DDP: call the wrapper (it syncs grads), read weights inside
    bf16 = bool(cfg.bf16) and inputs.device.type == "cpu"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = module(inputs)
        keep = targets != 0
        h, t = hidden[keep], targets[keep]
        d = h.shape[-1] // len(members)
        loss = sum(_member_loss(h[:, k * d:(k + 1) * d], t, m, cfg, bf16, generator) for k, m in enumerate(members))
    return loss * sasrec_token_weight(len(t), len(inputs), cfg)


def _member_loss(h, t, m: SASRecModule, cfg: SASRecConfig, bf16: bool, generator):
    """One network's loss: its hidden states ``h`` of the targets ``t`` against its item table."""
    n = m.n_items
    if cfg.loss == "ce":
        return _losses.full_softmax_ce(h, t, m.item_emb.weight, matmul_dtype=torch.bfloat16 if bf16 else torch.float32)
    if cfg.loss not in ("bce", "sampled_softmax", "gbce"):
        raise ValueError(f"unresolved loss {cfg.loss!r}: call SASRecConfig.resolve() first")
    # bce: one negative per position; the others share theirs across the batch
    neg = _losses.uniform_negatives(len(t) if cfg.loss == "bce" else min(cfg.n_negatives, n), n, t.device, generator)
    # the rows the loss reads, looked up once through the embedding (a sparse gradient where the table has one)
    # and renumbered: a target equal to a negative stays equal, which the losses mask
    uniq, inv = torch.unique(torch.cat([t, neg]), return_inverse=True)
    w, t, neg = m.item_emb(uniq), inv[:len(t)], inv[len(t):]
    if cfg.loss == "bce":
        return _losses.bce_one_negative(h, t, w, neg)
    return (_losses.sampled_softmax(h, t, w, neg) if cfg.loss == "sampled_softmax"
            else _losses.gbce(h, t, w, neg, n, cfg.gbce_t))


def sasrec_optimizer(module: nn.Module, cfg: SASRecConfig) -> SparseAwareAdamW:
    """AdamW, and lazy Adam for item tables with sparse gradients (a sampled loss; see SASRecModule)."""
    return adamw(module, cfg.lr, cfg.weight_decay)


def sasrec_lr(cfg: SASRecConfig, step: int, progress: float) -> float:
    """Learning rate at ``step``; ``progress`` in [0, 1] is the fraction of training done (cosine only)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        warm *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm


def sasrec_train_step(module, batch, cfg: SASRecConfig, optimizer, step: int = 0, progress: float = 0.0,
                      generator: torch.Generator | None = None) -> float:
    """One optimisation step; returns the loss as a float."""
    for g in optimizer.param_groups:
        g["lr"] = sasrec_lr(cfg, step, progress)
    module.train()
    loss = sasrec_loss(module, batch, cfg, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    members = _members(module)
    for m in members:  # each member clipped as it would be alone
        clip_grad_norm(m.parameters(), CLIP_NORM)
    optimizer.step()
    return float(loss.detach()) / len(members)  # a member's loss, comparable whatever their number


def distill_chunk(n_rows: int) -> int:
    """Positions per chunk of the fused distillation loss: it holds four fp32 [chunk, catalogue] tensors, so
    at most 2^24 entries each (about 256 MB together), 512 rows on a catalogue up to 32k items, 16 at 1M."""
    return int(max(1, min(512, (1 << 24) // max(n_rows, 1))))


def sasrec_distill_step(student, teacher, batch, cfg: SASRecConfig, optimizer, step: int, progress: float,
                        temperature: float, alpha: float) -> float:
    """One distillation step of ``student`` on ``teacher``'s soft targets: ``alpha * T^2 * KL + (1 - alpha) *
    CE`` over the whole catalogue at every position, fused and chunked (_losses.distill_ce), in bf16 where
    ``cfg.bf16`` says so (as the teacher trained)."""
    inputs, targets = sasrec_trim(*batch)
    for g in optimizer.param_groups:
        g["lr"] = sasrec_lr(cfg, step, progress)
    bf16 = bool(cfg.bf16) and inputs.device.type == "cpu"
    keep = targets != 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        t_hidden = teacher(inputs)[keep]
    student.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = student(inputs)[keep]
    # an ensemble teacher's soft targets are its members' mean scores (its head_weight makes them one product)
    loss = _losses.distill_ce(hidden, targets[keep], student.item_emb.weight, t_hidden,
                              teacher.head_weight().detach(), temperature, alpha,
                              chunk=distill_chunk(student.item_emb.weight.shape[0]),
                              matmul_dtype=torch.bfloat16 if bf16 else torch.float32)
    # each token weighs the same whether its batch holds short or long users (as in sasrec_loss)
    loss = loss * sasrec_token_weight(int(keep.sum()), len(inputs), cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), CLIP_NORM)
    optimizer.step()
    return float(loss.detach())


class SASRec(NeuralEstimator):
    """Estimator: ``SASRec(dim=128).fit(sequences, n_items, valid=(histories, targets)).score(histories)``."""

    family = "sasrec"  # the name in aimass.zoo' registry
    Config = SASRecConfig

    # ---- uniform hooks (aimass.training's DDP loop calls these; fit() is built from them) ---------------
    @staticmethod
    def build_module(cfg: SASRecConfig, n_items: int, item_features=None) -> SASRecModule | SASRecEnsemble:
        # item features: not used by this family
        return SASRecEnsemble(n_items, cfg) if is_ensemble(cfg) else SASRecModule(n_items, cfg)

    def resolve_config(self, n_items: int, sequence_lengths, time_budget_s: float | None = None):
        return self.Config(**self.params).resolve(n_items, sequence_lengths, time_budget_s)

    training_data = staticmethod(SASRecTrainingData)
    batch_sampler = staticmethod(sasrec_batch_sampler)
    make_optimizer = staticmethod(sasrec_optimizer)
    train_step = staticmethod(sasrec_train_step)
    distill_step = staticmethod(sasrec_distill_step)  # a smaller SASRec learns from a trained one

    # ---- retrieval: score = user_vectors(h) @ item_table().T, which an ANN index serves ------------------
    @torch.no_grad()
    def item_table(self) -> np.ndarray:
        """float32 [n_items + 1, D] item embeddings (row 0 = padding): the output layer shares them (an
        ensemble's: its members' side by side, over their number)."""
        return self.module_.head_weight().detach().float().cpu().numpy()

    @torch.no_grad()
    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        """float32 [n, D] last hidden states ([n, members x D] for an ensemble), padded as ``score`` pads them."""
        self.module_.eval()
        return self.module_(self._sequences(histories), last_only=True)[:, -1].float().cpu().numpy()
