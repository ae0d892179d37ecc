"""Mult-VAE (Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering"): a user's items as a
bag, encoded to a Gaussian latent and decoded to a multinomial over the catalogue.

Input: the multi-hot vector of the user's last ``max_len`` items, L2-normalised, with input dropout while
training. Encoder ``n -> hidden -> 2 x latent`` (tanh), decoder ``latent -> hidden -> n``. Loss: the
multinomial log-likelihood of the user's items plus beta x KL, beta annealed linearly from 0 to ``beta_max``
over ``anneal_steps`` steps (the paper's best models stop annealing at 0.2). Scoring uses the latent mean, so a
user's scores depend on nothing else in the batch. The decoder's output layer is the item table (with its
bias as one more column), so serving can answer through a nearest-neighbour index as for the other vector
families.

Ids: 1..n_items, 0 = padding (never an input, scored -inf).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from aimass.errors import InvalidInputError
from aimass.zoo import MAX_DIM, MAX_LEN, MAX_SIZE, MAX_STEPS, Seed
from aimass.zoo._neural import NeuralEstimator, fused, left_pad


class MultVAEConfig(BaseModel):
    """Every hyper-parameter; ``max_len`` None is derived from the data by :meth:`resolve`. The paper's
    architecture (600 hidden, 200 latent, input dropout 0.5, beta 0.2, Adam 1e-3)."""

    # allow_inf_nan=False: gt=0 lets inf through (every family: an endless time budget, a NaN model from lr or l2)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    hidden: int = Field(600, ge=8, le=MAX_DIM)
    latent: int = Field(200, ge=2, le=MAX_DIM)
    dropout: float = Field(0.5, ge=0, lt=1)
    beta_max: float = Field(0.2, ge=0)
    anneal_steps: int = Field(2000, ge=1, le=MAX_STEPS)
    max_len: int | None = Field(None, ge=1, le=MAX_LEN)  # None: 99th percentile of history lengths, in [8, 1000]
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1, le=MAX_SIZE)
    epochs: int = Field(200, ge=1, le=MAX_SIZE)
    patience: int | None = Field(20, ge=1)   # epochs without a better val NDCG@10; None: never stop early
    time_budget_s: float | None = Field(None, gt=0)
    # the two dense [n_items, hidden] layers: 500k items at hidden 600 is 6e8 parameters, about 12 GB with their
    # gradients, Adam's moments and the kept best copy (memory_bytes: a machine without it is refused)
    max_items: int = Field(500_000, ge=1)
    seed: Seed = 0

    def resolve(self, n_items: int, sequence_lengths) -> MultVAEConfig:
        if n_items > self.max_items:
            raise InvalidInputError(
                f"Mult-VAE has two dense {n_items:,} x {self.hidden} layers and the limit is max_items="
                f"{self.max_items:,}: use two-tower for this catalogue, or raise max_items if memory allows")
        if self.max_len is not None:
            return self
        lengths = np.asarray(sequence_lengths, dtype=np.int64)
        p99 = int(np.percentile(lengths, 99)) if len(lengths) else 50
        return self.model_copy(update={"max_len": int(min(1000, max(8, p99)))})


class MultVAEModule(nn.Module):
    def __init__(self, n_items: int, cfg: MultVAEConfig):
        super().__init__()
        if cfg.max_len is None:
            raise ValueError("call MultVAEConfig.resolve() first (max_len is None)")
        self.n_items, self.max_len, self.p, self.latent = n_items, cfg.max_len, cfg.dropout, cfg.latent
        self.enc = nn.Linear(n_items + 1, cfg.hidden)
        self.mu_logvar = nn.Linear(cfg.hidden, 2 * cfg.latent)
        self.dec = nn.Linear(cfg.latent, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, n_items + 1)
        for lin in (self.enc, self.mu_logvar, self.dec, self.out):  # the paper's Xavier init
            nn.init.xavier_normal_(lin.weight)
            nn.init.normal_(lin.bias, std=1e-3)

    def multi_hot(self, seq: torch.Tensor) -> torch.Tensor:
        # in the weights' dtype: a bf16 copy (the registry's bf16 method) multiplies bf16 by bf16; an int8
        # copy's dynamic linears take float32
        w = getattr(self.enc, "weight", None)
        x = torch.zeros(seq.shape[0], self.n_items + 1, device=seq.device,
                        dtype=w.dtype if isinstance(w, torch.Tensor) else torch.float32)
        x.scatter_(1, seq[:, -self.max_len:], 1.0)
        x[:, 0] = 0.0
        return x

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.normalize(x, dim=1)
        h = F.dropout(h, self.p, self.training)
        mu, logvar = self.mu_logvar(torch.tanh(self.enc(h))).chunk(2, dim=1)
        return mu, logvar

    def hidden_of(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dec(z))

    def forward(self, seq: torch.Tensor):
        """(logits [B, n_items + 1], multi-hot targets, KL per user) of left-padded id sequences [B, L]."""
        x = self.multi_hot(seq)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return self.out(self.hidden_of(z)), x, kl

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, hidden + 1]: the decoder's last hidden layer and a 1 for the output bias."""
        mu, _ = self.encode(self.multi_hot(seq))
        h = self.hidden_of(mu)
        return torch.cat([h, torch.ones_like(h[:, :1])], dim=1)

    def scores(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, n_items + 1] scores; column 0 (padding) is -inf."""
        mu, _ = self.encode(self.multi_hot(seq))
        s = self.out(self.hidden_of(mu))
        s[:, 0] = float("-inf")
        return s


class MultVAETrainingData(torch.utils.data.Dataset):
    """One sample per user with at least one item: the last ``max_len`` items, left-padded."""

    def __init__(self, sequences: list[np.ndarray], cfg: MultVAEConfig):
        self.seqs = [np.asarray(s, dtype=np.int64) for s in sequences if len(s)]
        self.max_len = cfg.max_len

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int):
        return (torch.from_numpy(left_pad(self.seqs[i], self.max_len)),)


def mult_vae_loss(module, batch, cfg: MultVAEConfig, step: int) -> torch.Tensor:
    (seq,) = batch
    logits, x, kl = module(seq)
    nll = -(F.log_softmax(logits[:, 1:], dim=1) * x[:, 1:]).sum(1)
    beta = cfg.beta_max * min(1.0, step / cfg.anneal_steps)
    return (nll + beta * kl).mean()


class MultVAE(NeuralEstimator):
    """Estimator: ``MultVAE().fit(sequences, n_items, valid=(histories, targets)).score(histories)``."""

    family = "mult-vae"
    Config = MultVAEConfig

    def memory_bytes(self, cfg: MultVAEConfig, n_items: int, lengths=None) -> int:
        """One worker's peak: the two [n_items, hidden] layers' weights, gradients, Adam's two moments and the
        best epoch's copy (20 bytes a parameter), and a batch's [batch, n_items] input, logits and their
        gradients (float32, a few of each), or a validation batch's scores."""
        n = n_items + 1
        params = 2 * n * cfg.hidden + 2 * cfg.hidden * cfg.latent
        return 20 * params + 16 * n * max(cfg.batch_size, 256)

    # ---- uniform hooks (aimass.training's DDP loop calls these; fit() is built from them) ---------------
    @staticmethod
    def build_module(cfg: MultVAEConfig, n_items: int, item_features=None) -> MultVAEModule:
        return MultVAEModule(n_items, cfg)

    training_data = staticmethod(MultVAETrainingData)

    @staticmethod
    def make_optimizer(module: nn.Module, cfg: MultVAEConfig) -> torch.optim.Optimizer:
        params = list(module.parameters())
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused(params))

    @staticmethod
    def train_step(module, batch, cfg: MultVAEConfig, optimizer, step: int = 0, progress: float = 0.0,
                   generator: torch.Generator | None = None) -> float:
        module.train()
        loss = mult_vae_loss(module, batch, cfg, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    # ---- retrieval: score = user_vectors(h) @ item_table().T, which an ANN index serves ------------------
    @torch.no_grad()
    def item_table(self) -> np.ndarray:
        """float32 [n_items + 1, hidden + 1]: the output layer's weights and bias."""
        out = self.module_.out
        return torch.cat([out.weight, out.bias[:, None]], dim=1).float().cpu().numpy()

    @torch.no_grad()
    def user_vectors(self, histories: list[np.ndarray]) -> np.ndarray:
        self.module_.eval()
        return self.module_.user_vectors(self._sequences(histories)).float().cpu().numpy()
