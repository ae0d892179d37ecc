"""The per-worker function that Ray Train runs on each of N workers (TorchTrainer, DDP over gloo on CPU or
NCCL on GPU). Neural families run the zoo's one Trainer (aimass.zoo.trainer), the same loop as their
single-process ``fit``; this file adds only what a distributed job needs around it: one clock for all
ranks, checkpoints reported to Ray Train, per-epoch MLflow metrics and progress for the driver's bar.

Checkpoint folder (written by rank 0 after every epoch, reported to Ray Train):
    state.json          the loop's state (epoch, step, best metric and epoch, patience count, history)
    best/               the best epoch's model, in the family's own `save` format
    current.safetensors, optimizer.pt   (neural families) what a resumed job continues from
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from aimass.zoo.trainer import STOP_METRIC, Limits, LoopState, Trainer, all_reduce, unwrap, validation_metrics


def worker_loop(config: dict) -> None:
    import ray
    import ray.train
    import torch

    from aimass.zoo import family_class

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data = config["data"] if "data" in config else ray.get(config["data_ref"])
    torch.manual_seed(config["seed"])
    # a seed near the top of its range plus the rank would pass numpy's limit (2**32)
    np.random.seed((config["seed"] + rank) % 2**32)
    torch.set_num_threads(max(1, config.get("threads_per_worker", 1)))
    est = family_class(config["family"])(**config["params"])
    cfg = est.resolve_config(data["n_items"], [len(s) for s in data["train"]],
                             time_budget_s=config.get("time_budget_s"))
    resume = ray.train.get_checkpoint()  # a restarted worker group continues the same job
    if resume is None and config.get("resume_from"):
        resume = ray.train.Checkpoint.from_directory(config["resume_from"])
    reporter = _Reporter(config, rank, world)
    if est.is_torch:
        _torch_job(est, cfg, data, config, rank, world, resume, reporter)
    else:
        _stats_job(est, cfg, data, rank, world, reporter)


def _stats_job(est, cfg, data, rank, world, reporter) -> None:
    """Count families: one pass of additive statistics over each rank's users, summed, then validated."""
    import torch.distributed as dist

    t0 = time.time()
    stats = est.sufficient_stats(data["train"][rank::world], cfg, data["n_items"])
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, stats)  # internal worker-to-worker traffic, never user input
        stats = {k: sum(g[k] for g in gathered) for k in stats}
    # a family that indexes the catalogue (search) also gets its items: text, columns and text vectors
    items = ({"item_table": data.get("item_table"), "item_features": data.get("item_features")}
             if getattr(est, "accepts_item_table", False) else {})
    est.adopt_stats(stats, cfg, data["n_items"], **items)
    metrics = validation_metrics(est.score, data["val_histories"], data["val_targets"], data["n_items"],
                                 rank=rank, world=world)
    took = time.time() - t0
    metrics.update(epoch=1, step=1, train_time_s=took,
                   samples_per_s=sum(len(s) for s in data["train"]) / max(took, 1e-9))
    state = LoopState(epoch=1, step=1, best_epoch=1, best=metrics[STOP_METRIC], train_time_s=took,
                      history=[metrics], stop_reason="one pass")
    reporter.epoch(metrics, state, lambda d: est.save(d / "best"))


def _torch_job(est, cfg, data, config, rank, world, resume, reporter) -> None:
    import ray.train.torch
    import torch
    from safetensors.torch import load_file, save_file

    module = est.build_module(cfg, data["n_items"], data.get("item_features"))
    state, optimizer_state, best_dir = None, None, Path(tempfile.mkdtemp(prefix="aimass-best-"))
    if resume is not None:
        with resume.as_directory() as d:
            module.load_state_dict(load_file(str(Path(d) / "current.safetensors")))
            optimizer_state = torch.load(Path(d) / "optimizer.pt", weights_only=True)
            state = _state_from(json.loads((Path(d) / "state.json").read_text()))
            if (Path(d) / "best").exists():  # none while every epoch so far diverged
                shutil.copytree(Path(d) / "best", best_dir / "best")
    limits = Limits.of(cfg, epochs=config.get("epochs"), time_budget_s=config.get("time_budget_s"),
                       explicit=config["params"])
    trainer: Trainer

    def on_epoch(metrics: dict, st: LoopState, improved: bool) -> None:
        metrics["samples_per_s"] *= world  # every rank saw its share of each global batch
        if improved and rank == 0:  # the weights right now are the best: save them as the model
            shutil.rmtree(best_dir / "best", ignore_errors=True)
            est.adopt(unwrap(trainer.module), cfg, data["n_items"]).save(best_dir / "best")

        def write(d: Path) -> None:
            weights = unwrap(trainer.module).state_dict().items()
            save_file({k: v.detach().cpu().contiguous() for k, v in weights}, str(d / "current.safetensors"))
            torch.save(trainer.optimizer.state_dict(), d / "optimizer.pt")
            if (best_dir / "best").exists():  # none yet while every epoch so far diverged (NaN validation)
                shutil.copytree(best_dir / "best", d / "best")

        reporter.epoch(metrics, st, write)

    trainer = Trainer(
        est, cfg, data["n_items"], limits, seed=config["seed"], world=world, rank=rank,
        valid=(data["val_histories"], data["val_targets"]),
        # buffers (e.g. frozen item text features) never change: broadcasting them every step is pure waste
        prepare=lambda m: ray.train.torch.prepare_model(m, parallel_strategy_kwargs={"broadcast_buffers": False}),
        elapsed=lambda s: _slowest(s, world), on_epoch=on_epoch, on_step=reporter.step)
    if state is not None and (best_dir / "best").exists():
        trainer.best_state = type(est).load(best_dir / "best").module_.state_dict()
    try:
        trainer.fit(module, data["train"], optimizer_state, state)
    finally:
        shutil.rmtree(best_dir, ignore_errors=True)


def _state_from(d: dict) -> LoopState:
    """A checkpoint's loop state; checkpoints written before the loop was shared named the best figure by the
    metric and kept no running time, and older ones did not say when the best epoch ended."""
    d = dict(d)
    times = [h.get("train_time_s", 0.0) for h in d.get("history", [])]
    d.setdefault("best", d.get(STOP_METRIC, -1.0))
    d.setdefault("train_time_s", sum(times))
    d.setdefault("best_at_s", sum(times[:d.get("best_epoch", 0)]))
    return LoopState.from_dict(d)


def _slowest(elapsed: float, world: int) -> float:
    """Seconds since the start, the same on every rank (the slowest rank's clock). Each rank reading its own
    clock would let one stop at a step the others still take (a DDP hang) and give the replicas different
    learning rates (their weights would drift apart)."""
    if world == 1:
        return elapsed
    return float(all_reduce([elapsed], op="max")[0])


class _Reporter:
    """Rank 0's voice: checkpoints to Ray Train, per-epoch metrics to the job's MLflow run, and progress
    (at most one message a second) to the driver's queue, which draws the one progress bar."""

    def __init__(self, config: dict, rank: int, world: int):
        self.rank, self.queue, self.last, self.expected = rank, config.get("progress_queue"), 0.0, None
        self.client, self.run_id = None, config["run_id"]
        self.local = Path(config["local_checkpoints"]) if config.get("local_checkpoints") else None
        if rank == 0:
            from mlflow import MlflowClient

            from aimass.settings import Settings

            self.client = MlflowClient(tracking_uri=Settings(**config["store"]).tracking_uri)

    def step(self, st: LoopState, loss: float, elapsed: float, expected: int) -> None:
        self.expected = expected
        if self.rank == 0 and self.queue is not None and time.time() - self.last >= 1.0:
            self.last = time.time()
            self._send({"step": st.step, "expected": expected, "epoch": st.epoch + 1, "loss": loss,
                        "best": st.best})

    def epoch(self, metrics: dict, st: LoopState, write) -> None:
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics)
            return
        if self.local:  # local mode reports the folder itself: it must outlive this call
            self.local.mkdir(parents=True, exist_ok=True)
            d = self.local / f"checkpoint_{st.step:09d}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            self._write(d, st, write)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            for old in sorted(self.local.glob("checkpoint_*"))[:-2]:  # Ray Train's num_to_keep=2
                shutil.rmtree(old, ignore_errors=True)
        else:
            with tempfile.TemporaryDirectory(prefix="aimass-ckpt-") as d:
                self._write(Path(d), st, write)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        self._log(metrics)
        self._send({"step": st.step, "expected": self.expected, "epoch": st.epoch, "best": st.best})

    @staticmethod
    def _write(d: Path, st: LoopState, write) -> None:
        write(d)
        (d / "state.json").write_text(json.dumps(dataclasses.asdict(st)))

    def _send(self, msg: dict) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait(msg)
        except Exception:  # a full or gone queue only costs the bar an update
            pass

    def _log(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        from aimass.tracking import metric_key

        now, step = int(time.time() * 1000), int(metrics["epoch"])
        self.client.log_batch(self.run_id, metrics=[Metric(metric_key(k), float(v), now, step)
                                                    for k, v in metrics.items() if k != "epoch"])
