"""The one training loop (transformers' Trainer): it owns epochs, the time budget, validation, keeping the
best epoch, early stopping and the per-epoch hooks (checkpoints, tracking, progress); a family owns its
model, loss and step (the hooks documented in ``aimass.zoo``). A family's single-process ``fit``, a Ray
Train worker (``aimass.training``) and distillation (``aimass.registry``) all run :class:`EpochLoop`, and
neural families share :class:`Trainer`, which builds the data loader, optimizer and validation around it.

Every validation goes through ``aimass.evaluation`` (full ranking, history excluded, a target in the history
a miss), so the epoch a job keeps is chosen on the figure the platform reports.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from aimass.errors import BackendError
from aimass.evaluation import evaluate, metric_name

STOP_METRIC = metric_name("val", "ndcg")  # what "best epoch" and early stopping are judged on
RECALL = metric_name("val", "recall")
BUDGET_EPOCHS = 1_000_000  # "until the time budget ends"
PEAK_SHARE = 0.5  # a budgeted job whose best epoch came this early in its budget says so (budget_note)


@dataclasses.dataclass
class Limits:
    """When a loop stops: ``epochs``, a wall-clock ``time_budget_s`` (hard: checked before every step; a
    decaying schedule follows it), ``max_steps``, or ``patience`` epochs without a better validation."""

    epochs: int
    time_budget_s: float | None = None
    max_steps: int | None = None
    patience: int | None = None

    @classmethod
    def of(cls, cfg, *, epochs: int | None = None, time_budget_s: float | None = None,
           explicit=()) -> Limits:
        """A job's limits from its resolved config. With a time budget, the budget is the user's to spend:
        the family's default epoch count and early stopping give way to it (the cosine schedule ends with
        the budget and the best epoch is still the one kept), unless ``explicit`` names them as set by the
        user. Early stopping on a noisy validation set ended budgeted jobs at under half their budget."""
        budget = time_budget_s if time_budget_s is not None else getattr(cfg, "time_budget_s", None)
        n = epochs or cfg.epochs
        patience = getattr(cfg, "patience", None)
        if budget:
            if epochs is None and "epochs" not in explicit:
                n = BUDGET_EPOCHS
            if "patience" not in explicit:
                patience = None
        return cls(epochs=n, time_budget_s=budget, patience=patience)


@dataclasses.dataclass
class LoopState:
    """Where a loop is; a checkpoint stores it (``asdict``) and a resumed loop continues from it."""

    epoch: int = 0
    step: int = 0
    best_epoch: int = 0
    best: float = -1.0
    bad_epochs: int = 0
    train_time_s: float = 0.0
    best_at_s: float = 0.0  # seconds into the job when the best epoch's validation ended
    steps_per_epoch: int = 0  # the loader's batches (0: not known, a checkpoint of an older aimass)
    history: list[dict] = dataclasses.field(default_factory=list)
    # why the loop ended: "time budget", "epochs", "max steps", "patience" or "no data"
    stop_reason: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> LoopState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def validation_metrics(score_fn, histories: Sequence[np.ndarray], targets: np.ndarray, n_items: int, *,
                       rank: int = 0, world: int = 1) -> dict:
    """Validation NDCG@10 and Recall@10 through ``aimass.evaluation``; with ``world`` > 1 each rank scores
    every ``world``-th user and the sums are all-reduced, so every rank gets the exact figure. A model that
    scores NaN (diverged) gets NaN figures on every rank, which no loop keeps as its best."""
    hist, tgt = list(histories)[rank::world], np.asarray(targets)[rank::world]
    sums, diverged = np.zeros(3), []

    def checked(h):
        s = np.asarray(score_fn(h))
        if np.isnan(s).any():
            diverged.append(True)
            return np.nan_to_num(s, nan=-np.inf)
        return s

    if len(hist):
        m = evaluate(checked, hist, tgt, n_items, ks=(10,), coverage=False)  # no top-K search: only ranks
        sums[:] = m["ndcg@10"] * m["n_users"], m["recall@10"] * m["n_users"], m["n_users"]
        if diverged:
            sums[:2] = np.nan
    if world > 1:
        sums = all_reduce(sums)
    n = max(float(sums[2]), 1.0)
    return {STOP_METRIC: float(sums[0]) / n, RECALL: float(sums[1]) / n}


def all_reduce(values, op: str = "sum") -> np.ndarray:
    """``values`` (float64) summed, or their maximum, over the job's ranks. NCCL, the backend of GPU workers,
    reduces only CUDA tensors: there the values go through this rank's GPU."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(np.asarray(values, dtype=np.float64), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.cpu().numpy()


class EpochLoop:
    """Epochs of ``step_fn(batch, step, progress) -> loss`` over ``loader``.

    ``progress`` in [0, 1] is the fraction of training done, by steps or by the time budget, whichever is
    further: a cosine schedule then ends when the budget does. After each epoch: ``validate() -> metrics``
    (must hold STOP_METRIC; NaN never counts as better), ``keep_best()`` when it improved (without
    validation every epoch counts as the best so far), then ``on_epoch(metrics, state, improved)``.
    ``on_step(state, loss, elapsed_s, expected_steps)`` feeds progress bars. ``elapsed(seconds) -> seconds``
    lets distributed workers agree on one clock (the slowest rank's)."""

    def __init__(self, limits: Limits, step_fn: Callable, *, validate: Callable[[], dict] | None = None,
                 keep_best: Callable[[], None] | None = None, on_epoch: Callable | None = None,
                 on_step: Callable | None = None, elapsed: Callable[[float], float] | None = None,
                 epoch_hooks: Sequence = ()):
        self.limits, self.step_fn, self.validate = limits, step_fn, validate
        self.keep_best, self.on_epoch, self.on_step = keep_best, on_epoch, on_step
        self.elapsed = elapsed or (lambda s: s)
        self.epoch_hooks = [h for h in epoch_hooks if hasattr(h, "set_epoch")]

    def run(self, loader, state: LoopState | None = None) -> LoopState:
        lim, st = self.limits, state or LoopState()
        per_epoch = max(1, len(loader))
        st.steps_per_epoch = per_epoch
        total = max(1, lim.max_steps if lim.max_steps is not None else lim.epochs * per_epoch)
        started = time.time() - st.train_time_s  # a resumed job's budget counts the time already spent
        budget = lim.time_budget_s
        st.stop_reason = ""  # a resumed job's checkpoint says why its first part ended
        for epoch in range(st.epoch, lim.epochs):
            for h in self.epoch_hooks:
                h.set_epoch(epoch)
            t0, losses, seen, out_of_time = time.time(), [], 0, False
            for batch in loader:
                elapsed = self.elapsed(time.time() - started) if budget else 0.0
                if (budget and elapsed > budget and losses) or (lim.max_steps is not None and st.step >= lim.max_steps):
                    out_of_time = True  # a hard limit: stop mid-epoch, validate, keep the best
                    break
                progress = min(1.0, max(st.step / total, elapsed / budget if budget else 0.0))
                loss = float(self.step_fn(batch, st.step, progress))
                st.step += 1
                losses.append(loss)
                seen += _batch_len(batch)
                if self.on_step is not None:
                    self.on_step(st, loss, time.time() - started, _expected_steps(st, total, budget,
                                                                                  time.time() - started))
            if not losses:  # max_steps reached at an epoch's start, or nothing to train on
                st.stop_reason = "max steps" if lim.max_steps is not None and st.step >= lim.max_steps else "no data"
                break
            out_of_time = out_of_time or (lim.max_steps is not None and st.step >= lim.max_steps)
            train_time = time.time() - t0
            metrics = dict(self.validate()) if self.validate is not None else {}
            # a budget that ran out in the epoch's last step or in its validation: stop now, not after one
            # more step, validation and checkpoint (every rank validates, so every rank reads the clock here)
            out_of_time = out_of_time or bool(budget and self.elapsed(time.time() - started) > budget)
            score = metrics.get(STOP_METRIC, math.inf if self.validate is None else -math.inf)
            if isinstance(score, float) and math.isnan(score):
                score = -math.inf  # a diverged epoch is never the best
            improved = score > st.best
            metrics.update(epoch=epoch + 1, step=st.step, loss=float(np.mean(losses)), train_time_s=train_time,
                           samples_per_s=seen / max(train_time, 1e-9))
            st.history.append(metrics)
            st.epoch, st.train_time_s = epoch + 1, time.time() - started
            if improved:
                st.best, st.best_epoch, st.bad_epochs = (score if math.isfinite(score) else st.best), epoch + 1, 0
                st.best_at_s = st.train_time_s
                if self.keep_best is not None:
                    self.keep_best()
            else:
                st.bad_epochs += 1
            # decided before on_epoch, so that the checkpoint it writes says why the job ended
            if out_of_time or (lim.patience and st.bad_epochs >= lim.patience):
                st.stop_reason = ("max steps" if lim.max_steps is not None and st.step >= lim.max_steps
                                  else "time budget" if out_of_time else "patience")
            elif epoch + 1 >= lim.epochs:
                st.stop_reason = "epochs"
            if self.on_epoch is not None:
                self.on_epoch(metrics, st, improved)
            if st.stop_reason:
                break
        else:
            st.stop_reason = st.stop_reason or "epochs"
        return st


def budget_note(state: LoopState, budget_s: float | None) -> str:
    """What a budgeted job says when its budget bought nothing after an early peak ("spend it or say why
    not"): the loop still spends the whole budget, since a noisy validation set must not end it, but the user
    learns that the model is an early epoch's. On ml1m-short (8.5 items per user) SASRec peaked in its first
    two minutes of 45. Empty unless the job ran out of budget with its best epoch in the first ``PEAK_SHARE``
    of it, or within its first epoch (said too: the model saw part of the data)."""
    if not budget_s or state.stop_reason != "time budget":
        return ""
    if state.epoch <= 1 and 0 < state.step < state.steps_per_epoch:
        # a large catalogue's first epoch can outlast a short budget: the model saw part of its data once
        return (f"the budget ended within the first epoch ({state.step:,} of {state.steps_per_epoch:,} steps): "
                "the model saw part of the data once; a longer --time-budget trains on the rest")
    if state.best_epoch >= state.epoch:
        return ""
    if state.best_epoch < 1 or state.best_at_s > PEAK_SHARE * budget_s:
        return ""
    rest = max(0.0, state.train_time_s - state.best_at_s) / 60
    return (f"validation peaked at epoch {state.best_epoch} of {state.epoch}, {state.best_at_s / 60:.1f} of "
            f"{budget_s / 60:g} min in; the other {rest:.1f} min did not improve it")


def _batch_len(batch) -> int:
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    return len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)


def _expected_steps(st: LoopState, total: int, budget: float | None, elapsed: float) -> int:
    """The steps this run will take: all of them, or as many as the budget allows at the pace so far."""
    if not budget or st.step == 0:
        return total
    return int(min(total, st.step / max(elapsed, 1e-9) * budget))


def make_loader(est, dataset, cfg, world: int = 1, rank: int = 0, seed: int = 0):
    """(loader, sampler) of one rank. The global batch stays ``cfg.batch_size`` whatever ``world`` is (exactly
    where ``world`` divides it; else each rank takes ``batch_size // world``, at least 1), so N workers take the
    same optimisation path as one. A family's ``batch_sampler`` hook (e.g. users of
    similar length) makes its own batches, already split by rank."""
    from torch.utils.data import DataLoader, DistributedSampler

    hook = getattr(est, "batch_sampler", None)
    sampler = hook(dataset, cfg, world, rank, seed) if hook else None
    if sampler is not None:
        return DataLoader(dataset, batch_sampler=sampler), sampler
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=max(1, cfg.batch_size // world), sampler=sampler), sampler


def unwrap(module):
    """The model inside a DDP wrapper (or the model itself)."""
    return getattr(module, "module", module)


class Trainer:
    """A neural family trained by :class:`EpochLoop` through its hooks (``training_data``,
    ``batch_sampler``, ``make_optimizer``, ``train_step``, ``score_module``), in one process or as one of
    ``world`` DDP ranks (``prepare`` wraps the module, e.g. Ray Train's ``prepare_model``)."""

    def __init__(self, est, cfg, n_items: int, limits: Limits, *, seed: int = 0, valid=None, world: int = 1,
                 rank: int = 0, prepare: Callable | None = None, elapsed: Callable | None = None,
                 on_epoch: Callable | None = None, on_step: Callable | None = None):
        self.est, self.cfg, self.n_items, self.limits = est, cfg, n_items, limits
        self.seed, self.valid, self.world, self.rank = seed, valid, world, rank
        self.prepare, self.elapsed = prepare or (lambda m: m), elapsed
        self.on_epoch, self.on_step = on_epoch, on_step
        self.best_state: dict | None = None

    def fit(self, module, sequences, optimizer_state: dict | None = None,
            state: LoopState | None = None) -> tuple:
        """Train ``module``; returns (the trained module, unwrapped, with the best epoch's weights when a
        validation ran, and the final LoopState)."""
        import torch

        est, cfg = self.est, self.cfg
        dataset = est.training_data(list(sequences), cfg)
        if len(dataset) == 0:
            raise ValueError("no training example: every sequence has fewer than 2 items")
        wrapped = self.prepare(module)
        optimizer = est.make_optimizer(unwrap(wrapped), cfg)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        loader, sampler = make_loader(est, dataset, cfg, self.world, self.rank, self.seed)
        device = next(unwrap(wrapped).parameters()).device
        # on the parameters' device: torch.randint on a GPU refuses a CPU generator (sampled negatives)
        generator = torch.Generator(device=device)
        # streams of each rank's own for dropout and sampled negatives (one seed on every rank would draw the same
        # dropout masks on all of them), and for a resumed job not a replay of the ones its first epochs drew
        again = int(np.random.SeedSequence([self.seed, self.rank, state.epoch if state else 0]).generate_state(1)[0])
        generator.manual_seed(again)
        torch.manual_seed(again + 1)
        self.optimizer = optimizer

        def step(batch, i, progress):
            return est.train_step(wrapped, _to(batch, device), cfg, optimizer, i, progress, generator=generator)

        validate = None
        if self.valid is not None and len(self.valid[1]):
            def validate():
                return validation_metrics(lambda h: est.score_module(unwrap(wrapped), h, cfg), self.valid[0],
                                          self.valid[1], self.n_items, rank=self.rank, world=self.world)

        def keep_best():
            self.best_state = snapshot(unwrap(wrapped))

        loop = EpochLoop(self.limits, step, validate=validate, keep_best=keep_best if validate else None,
                         on_epoch=self.on_epoch, on_step=self.on_step, elapsed=self.elapsed,
                         epoch_hooks=(sampler, dataset))
        self.module = wrapped  # what a caller's on_epoch checkpoints (with self.optimizer)
        st = loop.run(loader, state)
        inner = unwrap(wrapped)
        if self.best_state is not None:
            inner.load_state_dict(self.best_state)  # the best validation epoch, not the last
        return inner.eval(), st


def _to(batch, device):
    if device.type == "cpu":
        return batch
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return type(batch)(v.to(device, non_blocking=True) for v in batch)


def fit_neural(est, sequences, n_items: int, *, valid=None, item_features=None, progress: bool = False):
    """``fit`` of a neural family in this process: the same Trainer a Ray Train worker runs."""
    import torch

    from aimass import console

    est.Config(**est.params)  # bad params are refused before the data is read
    cfg = est.resolve_config(n_items, [len(s) for s in sequences])
    torch.manual_seed(cfg.seed)
    module = est.build_module(cfg, n_items, item_features)
    bar = console.progress(desc=est.family, unit="step", disable=not progress)

    def on_step(st, loss, elapsed, expected):
        bar.total = expected  # with a time budget: the steps the budget allows at the pace so far
        bar.set_postfix(epoch=st.epoch + 1, loss=f"{loss:.4f}", best_val_ndcg=f"{max(st.best, 0):.4f}",
                        refresh=False)
        bar.update(st.step - bar.n)  # redraws at most every mininterval

    limits = Limits.of(cfg, explicit=est.params)
    trainer = Trainer(est, cfg, n_items, limits, seed=cfg.seed, valid=valid, on_step=on_step)
    try:
        module, st = trainer.fit(module, sequences)
    finally:
        bar.close()
    if valid is not None and len(valid[1]) and st.history and st.best_epoch == 0:
        # the module holds the last epoch's weights, NaN ones: no better than no model, so refused as a job is
        raise diverged(est.family, st.epoch)
    est.adopt(module, cfg, n_items)
    est.history_, est.best_epoch_ = st.history, st.best_epoch
    return est


def diverged(family: str, epochs: int) -> BackendError:
    """The error of a training whose validation figures were NaN at every epoch (the loss diverged): no
    epoch was ever the best, so there is no model to keep."""
    return BackendError(f"{family} diverged: its validation figures were NaN at every one of its {epochs} "
                        "epoch(s), so there is no model to keep (a lower lr may help)")


def snapshot(module) -> dict:
    """A detached copy of a module's weights (to keep a best epoch in memory)."""
    return copy.deepcopy({k: v.detach() for k, v in module.state_dict().items()})
