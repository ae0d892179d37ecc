"""The per-worker training loop that Ray Train runs on each of N workers (TorchTrainer, DDP over gloo on CPU or
NCCL on GPU). It drives any family through the hooks documented in aimass.zoo.

Checkpoint folder (written by rank 0 after every epoch, reported to Ray Train):
    state.json          epoch, step, best metric and epoch, epochs without improvement, history
    best/               the best epoch's model, in the family's own `save` format
    current.safetensors, optimizer.pt   (neural families) what a resumed job continues from
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

STOP_METRIC = "val_ndcg@10"


def worker_loop(config: dict) -> None:
    import ray
    import ray.train
    import torch

    from aimass.zoo import family_class

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data = ray.get(config["data_ref"])
    torch.manual_seed(config["seed"])
    np.random.seed(config["seed"] + rank)
    torch.set_num_threads(max(1, config.get("threads_per_worker", 1)))
    est = family_class(config["family"])(**config["params"])
    cfg = est.resolve_config(data["n_items"], [len(s) for s in data["train"]])
    resume = ray.train.get_checkpoint()  # a restarted worker group continues the same job
    if resume is None and config.get("resume_from"):
        resume = ray.train.Checkpoint.from_directory(config["resume_from"])
    tracker = _Tracker(config) if rank == 0 else None
    if est.is_torch:
        _torch_loop(est, cfg, data, config, rank, world, resume, tracker)
    else:
        _stats_loop(est, cfg, data, config, rank, world, tracker)


def _stats_loop(est, cfg, data, config, rank, world, tracker) -> None:
    import torch.distributed as dist

    t0 = time.time()
    stats = est.sufficient_stats(data["train"][rank::world], cfg, data["n_items"])
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, stats)  # internal worker-to-worker traffic, never user input
        stats = {k: sum(g[k] for g in gathered) for k in stats}
    est.adopt_stats(stats, cfg, data["n_items"])
    metrics = _validate(est.score, data, rank, world)
    metrics.update(epoch=1, train_time_s=time.time() - t0,
                   samples_per_s=sum(len(s) for s in data["train"]) / max(time.time() - t0, 1e-9))
    _report(metrics, rank, tracker, lambda d: est.save(d / "best"),
            {"epoch": 1, "best_epoch": 1, STOP_METRIC: metrics[STOP_METRIC], "history": [metrics]})


def _torch_loop(est, cfg, data, config, rank, world, resume, tracker) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from safetensors.torch import load_file, save_file
    from torch.utils.data import DataLoader, DistributedSampler

    module = est.build_module(cfg, data["n_items"], data.get("item_features"))
    state = {"epoch": 0, "step": 0, "best_epoch": 0, STOP_METRIC: -1.0, "bad_epochs": 0, "history": []}
    optimizer_state = None
    if resume is not None:
        with resume.as_directory() as d:
            module.load_state_dict(load_file(str(Path(d) / "current.safetensors")))
            optimizer_state = torch.load(Path(d) / "optimizer.pt", weights_only=True)
            state = json.loads((Path(d) / "state.json").read_text())
            best_dir = Path(tempfile.mkdtemp(prefix="aimass-best-"))
            shutil.copytree(Path(d) / "best", best_dir / "best")
    else:
        best_dir = Path(tempfile.mkdtemp(prefix="aimass-best-"))
    # buffers (e.g. frozen item text features) never change: broadcasting them every step is pure waste
    module = ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"broadcast_buffers": False})
    device = ray.train.torch.get_device()
    optimizer = est.make_optimizer(_unwrap(module), cfg)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    dataset = est.training_data(data["train"], cfg)
    # The global batch stays cfg.batch_size whatever N is, so N workers take the same optimisation path.
    hook = getattr(est, "batch_sampler", None)
    sampler = hook(dataset, cfg, world, rank, config["seed"]) if hook else None
    if sampler is not None:  # the family's own batches (e.g. users of similar length), already split by rank
        loader = DataLoader(dataset, batch_sampler=sampler)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config["seed"])
        loader = DataLoader(dataset, batch_size=max(1, cfg.batch_size // world), sampler=sampler)
    epochs = config.get("epochs") or cfg.epochs
    total_steps = max(1, epochs * len(loader))
    budget = config.get("time_budget_s")
    patience = getattr(cfg, "patience", None)
    generator = torch.Generator().manual_seed(config["seed"] * 1000 + rank)
    started = time.time() - sum(h.get("train_time_s", 0.0) for h in state["history"])
    out_of_time = False
    for epoch in range(state["epoch"], epochs):
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        module.train()
        t0, losses, seen = time.time(), [], 0
        bar = _bar(len(loader), f"epoch {epoch + 1}/{epochs}") if rank == 0 and config.get("progress") else None
        for batch in loader:
            batch = _to(batch, device)
            elapsed = _elapsed(started, world) if budget else 0.0
            if budget and elapsed > budget and losses:
                out_of_time = True  # the budget is a hard limit: stop mid-epoch, validate, keep the best
                break
            # with a time budget a decaying schedule runs on wall time, so it ends when the budget does
            progress = max(state["step"] / total_steps, elapsed / budget if budget else 0.0)
            loss = est.train_step(module, batch, cfg, optimizer, state["step"], progress, generator=generator)
            state["step"] += 1
            losses.append(float(loss))
            seen += len(batch[0]) if isinstance(batch, (list, tuple)) else len(next(iter(batch.values())))
            if bar is not None:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
                bar.update()
        if bar is not None:
            bar.close()
        # a budget that ran out in the epoch's last step: stop now, not after one more step and validation
        out_of_time = out_of_time or bool(budget and _elapsed(started, world) > budget)
        train_time = time.time() - t0
        metrics = _validate(lambda h: est.score_module(_unwrap(module), h, cfg), data, rank, world)
        metrics.update(epoch=epoch + 1, loss=float(np.mean(losses)) if losses else math.nan,
                       train_time_s=train_time, samples_per_s=seen * world / max(train_time, 1e-9))
        state["history"].append(metrics)
        state["epoch"] = epoch + 1
        improved = metrics[STOP_METRIC] > state[STOP_METRIC]
        if improved:
            state.update({STOP_METRIC: metrics[STOP_METRIC], "best_epoch": epoch + 1, "bad_epochs": 0})
            if rank == 0:
                shutil.rmtree(best_dir / "best", ignore_errors=True)
                est.adopt(_unwrap(module), cfg, data["n_items"]).save(best_dir / "best")
        else:
            state["bad_epochs"] += 1

        def write(d: Path) -> None:
            save_file({k: v.detach().cpu().contiguous() for k, v in _unwrap(module).state_dict().items()},
                      str(d / "current.safetensors"))
            torch.save(optimizer.state_dict(), d / "optimizer.pt")
            shutil.copytree(best_dir / "best", d / "best")

        _report(metrics, rank, tracker, write, state)
        if out_of_time or (patience and state["bad_epochs"] >= patience):
            break
    shutil.rmtree(best_dir, ignore_errors=True)


def _elapsed(started: float, world: int) -> float:
    """Seconds since ``started``, the same on every rank (the slowest rank's clock). Each rank reading its own
    clock would let one stop at a step the others still take (a DDP hang) and give the replicas different
    learning rates (their weights would drift apart)."""
    import torch
    import torch.distributed as dist

    elapsed = time.time() - started
    if world == 1:
        return elapsed
    t = torch.tensor([elapsed], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _validate(score_fn, data: dict, rank: int, world: int) -> dict:
    """Validation NDCG/Recall@10 over every worker's shard of validation users, summed exactly."""
    import torch
    import torch.distributed as dist

    from aimass.evaluation import evaluate

    hist, targets = data["val_histories"][rank::world], data["val_targets"][rank::world]
    sums = torch.zeros(3, dtype=torch.float64)
    if len(hist):
        m = evaluate(score_fn, hist, targets, data["n_items"], ks=(10,))
        sums += torch.tensor([m["ndcg@10"] * m["n_users"], m["recall@10"] * m["n_users"], m["n_users"]],
                             dtype=torch.float64)
    if world > 1:
        dist.all_reduce(sums)
    n = max(float(sums[2]), 1.0)
    return {STOP_METRIC: float(sums[0]) / n, "val_recall@10": float(sums[1]) / n}


def _report(metrics: dict, rank: int, tracker, write, state: dict) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="aimass-ckpt-") as d:
        write(Path(d))
        (Path(d) / "state.json").write_text(json.dumps(state))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    if tracker is not None:
        tracker.log_epoch(metrics)


def _to(batch, device):
    if device.type == "cpu":
        return batch
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return type(batch)(v.to(device, non_blocking=True) for v in batch)


def _unwrap(module):
    return getattr(module, "module", module)


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, mininterval=10.0, unit="batch", dynamic_ncols=False, ncols=100)


class _Tracker:
    """Rank 0 logs each epoch's metrics to the job's MLflow run as they happen."""

    def __init__(self, config: dict):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=config["tracking_uri"])
        self.run_id = config["run_id"]

    def log_epoch(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(metrics["epoch"])
        self.client.log_batch(self.run_id, metrics=[Metric(k.replace("@", "_at_"), float(v), now, step)
                                                    for k, v in metrics.items() if k != "epoch"])
