"""Training jobs: any family on a registered dataset version, on N Ray Train workers (CPU, or GPU when asked
and present), tracked as one MLflow run. `workers=0` runs the same loop in this process (Ray Train's local
mode: no cluster to start, for notebooks, debugging and small data).

    >>> run = aimass.train("sasrec", dataset="demo@v1", params={"dim": 64}, workers=2)
    >>> run.metrics["test_ndcg@10"], run.model_uri
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import queue as _queue
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from aimass.errors import BackendError, InvalidInputError, NoGPUError, NotFoundError
from aimass.settings import Settings, default_settings

MAX_VAL_USERS = 2048  # validation users a job reads by default (a seeded sample): each epoch's check stays cheap

MIN_EVAL_USERS = 2
# the validation users a cap keeps and the test users a sample keeps: one draw for every job on a dataset version,
# whatever the model's seed, so that two runs (an auto search's probes, seeds compared) are judged on the same users
EVAL_SEED = 0


@dataclasses.dataclass
class TrainResult:
    run_id: str
    family: str
    dataset: str
    metrics: dict
    model_uri: str
    epochs: int
    best_epoch: int
    wall_time_s: float
    samples_per_s: float
    n_parameters: int = 0
    history: list = dataclasses.field(default_factory=list)
    stop_reason: str = ""  # "time budget", "epochs", "patience", "max steps" or "one pass" (count families)
    resolved: dict = dataclasses.field(default_factory=dict)  # what the data decided: see data_stats, _derived
    note: str = ""  # a budgeted job that peaked early says so (aimass.zoo.trainer.budget_note)
    members: int = 1  # networks in the model: a budget on sparse data buys SASRec an ensemble (aimass.zoo.sasrec)


def train(
    family: str,
    dataset: str,
    params: dict | None = None,
    *,
    workers: int = 1,
    gpu: bool = False,
    epochs: int | None = None,
    time_budget_min: float | None = None,
    max_val_users: int | None = MAX_VAL_USERS,
    max_test_users: int | None = None,
    item_text: bool | None = None,
    progress: bool = True,
    settings: Settings | None = None,
    on_start: Callable[[], None] | None = None,
) -> TrainResult:
    """Validate everything, then run the job; bad input raises before any Ray job or MLflow run exists.
    ``on_start`` is called once every check passed, before the job starts (the CLI's stage line: bad input
    gets one line, the error)."""
    from aimass import datasets
    from aimass.zoo import family_class

    s = settings or default_settings()
    cls = family_class(family)
    params = check_params(cls, dict(params or {}), epochs)
    check_job(s, workers, max_test_users, max_val_users)
    _check_gpus(s, workers, gpu)
    check_budget(time_budget_min)
    if item_text and not getattr(cls, "accepts_item_features", False):
        raise InvalidInputError(f"{family} cannot use item text features")
    ds = datasets.load(dataset, settings=s)
    if item_text and (ds.items is None or "text" not in ds.items.columns):
        raise InvalidInputError(f"{ds.ref} has no items table with text")
    data, splits = _prepare(ds, max_val_users, EVAL_SEED)
    data["max_test_users"] = max_test_users
    lengths = [len(x) for x in data["train"]]
    budget_s = time_budget_min * 60 if time_budget_min else None
    # a family's size limits refuse here; the worker resolves the same (same data, same budget)
    est = cls(**params)
    try:
        cfg = est.resolve_config(data["n_items"], lengths, time_budget_s=budget_s)
    except InvalidInputError:
        raise
    except ValueError as e:  # values valid alone that do not fit together or the data (SASRec's n_heads, ...)
        raise InvalidInputError(f"invalid params for {family}: {e}") from None
    _check_trainable(est, cfg, data["train"], workers)
    # this machine's memory holds every worker (a cluster's nodes are not known here); a torch family on GPUs
    # keeps its weights and optimiser state in device memory, which this check does not see
    if not s.ray_address and not (gpu and cls.is_torch):
        _check_memory(est, cfg, data["n_items"], workers, lengths)
    if not s.ray_address and budget_s:
        _check_time(est, cfg, data["n_items"], budget_s)
    data["resolved"] = {**data_stats(lengths, data["n_items"]), **_derived(cls, params, cfg)}
    use_text = item_text if item_text is not None else (
        getattr(cls, "accepts_item_features", False) and ds.items is not None)
    if getattr(cls, "accepts_item_table", False):
        data["item_table"] = _item_table(ds, splits, family)
    if on_start is not None:  # before the text's encoding, whose bar follows the stage line
        on_start()
    if use_text:
        data["item_features"] = _text_features(s, ds, splits, progress)
    return _run(s, cls, family, ds.info, params, data, splits, workers, gpu, epochs, time_budget_min,
                progress, resume=None)


def resume(run_id: str, *, epochs: int | None = None, time_budget_min: float | None = None,
           progress: bool = True, settings: Settings | None = None) -> TrainResult:
    """Continue a stopped job from its last checkpoint, in the same MLflow run."""
    from aimass import datasets
    from aimass.tracking import mlflow_for
    from aimass.zoo import family_class

    s = settings or default_settings()
    mlflow = mlflow_for(s)
    try:
        run = mlflow.get_run(run_id)
    except Exception:
        raise NotFoundError(f"no training run {run_id!r}") from None
    job = json.loads(run.data.tags.get("aimass.job", "null") or "null")
    ckpt = _latest_checkpoint(s, run_id)
    if job is None or ckpt is None:
        raise InvalidInputError(f"run {run_id} has no checkpoint to resume from")
    cls = family_class(job["family"])
    if not getattr(cls, "is_torch", False):  # it would count again and log a second model in the run
        raise InvalidInputError(f"run {run_id} is of {job['family']}, which trains in one pass: there is nothing "
                                "to continue (train it again for a new run)")
    check_params(cls, job["params"], epochs)
    _check_gpus(s, job["workers"], job["gpu"])
    check_budget(time_budget_min)
    # the job's own budget, in minutes: --time-budget's, or the family's time_budget_s param (the loop reads either)
    own = job.get("time_budget_min") or (job["params"].get("time_budget_s") or 0) / 60 or None
    planned = epochs or job["epochs"] or job["params"].get("epochs")
    if planned is None and not (time_budget_min or own):
        # no count and no budget: the job ran its family's default epochs (a budget runs until it is spent)
        planned = getattr(cls.Config(**job["params"]), "epochs", None)
    _check_left(run_id, ckpt, planned, time_budget_min)
    if time_budget_min is None:  # the job's own budget: without it, a budgeted job's limits would change
        time_budget_min = job.get("time_budget_min")
        _check_left(run_id, ckpt, None, own, own=True)
    params = {**_checkpoint_derived(cls, job["params"], ckpt), **job["params"]}
    ds = datasets.load(job["dataset"], settings=s)
    # exactly the validation users of the run it continues: same cap, same seed, same dataset version (a job
    # recorded before "eval_seed" drew its users with the model's seed)
    data, splits = _prepare(ds, job["max_val_users"], job.get("eval_seed", job["params"].get("seed", 0)))
    data["max_test_users"] = job.get("max_test_users")
    if job.get("val_users_sha1") and job["val_users_sha1"] != _users_digest(splits.val_users):
        raise InvalidInputError(f"run {run_id} validated on other users than {ds.ref} now gives: cannot resume")
    if job.get("item_text"):
        data["item_features"] = _text_features(s, ds, splits, progress)
    if getattr(cls, "accepts_item_table", False):
        data["item_table"] = _item_table(ds, splits, job["family"])
    return _run(s, cls, job["family"], ds.info, params, data, splits, job["workers"], job["gpu"],
                epochs or job["epochs"], time_budget_min, progress, resume=(run_id, ckpt))


def check_job(s: Settings, workers: int, max_test_users: int | None, max_val_users: int | None = None) -> None:
    """What a job's shape must satisfy whatever the family (auto checks it once for all its candidates)."""
    if max_val_users is not None and max_val_users < MIN_EVAL_USERS:
        raise InvalidInputError(f"max_val_users must be at least {MIN_EVAL_USERS}, got {max_val_users}")
    if workers < 0:
        raise InvalidInputError(f"workers must be 0 (this process) or more, got {workers}")
    cpus = _local_cpus()
    if not s.ray_address and workers > cpus:  # known before starting anything
        raise InvalidInputError(f"{workers} workers asked for but this process may use {cpus} CPUs")
    if max_test_users is not None and max_test_users < 1:
        raise InvalidInputError(f"max_test_users must be at least 1, got {max_test_users}")


def _local_cpus() -> int:
    # the CPUs this process may run on (a container's or taskset's share), not every core the machine has
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check_gpus(s: Settings, workers: int, gpu: bool) -> None:
    """Before Ray starts or item text is encoded: a local job's GPUs, and local mode's, are this machine's (a
    joined cluster's are known once joined, in _run)."""
    if not gpu or s.ray_address:
        return
    import torch

    have = torch.cuda.device_count()
    if have < max(1, workers):
        raise NoGPUError("a GPU asked for but this process sees none" if not have else
                         f"{workers} GPU worker(s) asked for but this machine has {have} GPU(s)")


def _checkpoint_derived(cls, params: dict, ckpt: Path) -> dict:
    """The values the data decided for the checkpointed model (its width, length, ...): a resume must build
    the same network even if the data-dependent defaults have changed since (another aimass version)."""
    saved = ckpt / "best" / "config.json"
    try:
        raw = json.loads(saved.read_text())["config"]
    except (OSError, KeyError, ValueError, TypeError):
        return {}  # a one-pass family's model keeps no config of its network: nothing to pin
    if "members" in getattr(cls.Config, "model_fields", {}) and "members" not in raw:
        raw["members"] = 1  # saved before SASRec could train an ensemble: one network
    try:
        cfg = cls.Config(**raw)
    except (ValueError, TypeError) as e:  # re-derived values would build another network than the weights'
        raise InvalidInputError(f"the checkpoint's config ({saved}) does not fit this aimass's "
                                f"{cls.family} config, so the network it saved cannot be rebuilt: "
                                f"{str(e).splitlines()[0]}") from None
    return {k.removeprefix("resolved."): v for k, v in _derived(cls, params, cfg).items()}


def _check_left(run_id: str, ckpt: Path, epochs: int | None, budget_min: float | None, own: bool = False) -> None:
    """A resume with no epoch left would fail in the run it continues; a budget that the run has already spent
    (given for the resume, or the job's `own`, which a resume without --time-budget keeps) would buy one step."""
    from aimass.training._loop import _state_from

    try:
        st = _state_from(json.loads((ckpt / "state.json").read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise InvalidInputError(f"run {run_id}'s checkpoint {ckpt} cannot be read: {e}") from None
    if epochs is not None and epochs <= st.epoch:
        raise InvalidInputError(f"run {run_id} has trained {st.epoch} epochs already: give --epochs above that")
    if budget_min is not None and budget_min * 60 <= st.train_time_s:
        raise InvalidInputError(f"run {run_id} has trained {st.train_time_s / 60:.1f} minutes already, "
                                f"{'its own' if own else 'its'} whole budget of {budget_min:g}: give a "
                                "--time-budget above that (it counts the time already spent)")


def check_budget(minutes: float | None, what: str = "time budget") -> None:
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise InvalidInputError(f"{what} must be a positive number of minutes, got {minutes}")


def check_params(cls, params: dict, epochs: int | None) -> dict:
    """The params as the family's config reads them (``seed=3.0`` becomes 3): what the job and its record use."""
    if epochs is not None and epochs < 1:
        raise InvalidInputError(f"epochs must be at least 1, got {epochs}")
    try:
        checked = cls.Config(**params).model_dump(include=set(params))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'params'}: {err['msg']}" for err in e.errors())
        raise InvalidInputError(f"invalid params for {cls.family}: {problems}") from None
    # an infinite budget or learning rate passes a field's bounds (> 0) and would never end or diverge
    bad = [k for k, v in checked.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise InvalidInputError(f"invalid params for {cls.family}: {', '.join(bad)} must be finite")
    return checked


def _check_memory(est, cfg, n_items: int, workers: int, lengths) -> None:
    """A family whose memory grows with the catalogue (EASE's dense matrix) says what one worker needs: more
    than this machine has free would be killed mid-job, or swap it to a halt."""
    import psutil

    need = getattr(est, "memory_bytes", None)
    if need is None:
        return
    procs = max(1, workers)
    per, free = need(cfg, n_items, lengths), psutil.virtual_memory().available
    if per * procs > free:
        raise InvalidInputError(
            f"{est.family} needs about {_size(per * procs)} for {n_items:,} items ({procs} worker(s) x "
            f"{_size(per)}) and this machine has {_size(free)} free: use fewer workers (each "
            "holds the whole matrix) or a family for large catalogues (itemknn, two-tower)")


def _check_time(est, cfg, n_items: int, budget_s: float) -> None:
    """A one-pass family whose time grows faster than its data (EASE's n^3 inverse) cannot stop at the
    budget as an iterative one does: a job this machine would take longer over is refused before it starts."""
    need = getattr(est, "fit_seconds", None)
    took = need(cfg, n_items) if need is not None else 0.0
    if took > budget_s:
        raise InvalidInputError(
            f"{est.family} on {n_items:,} items takes about {took:.0f} s on this machine (one pass, which cannot "
            f"stop early) and the time budget is {budget_s:.0f} s: raise --time-budget, or use a family that "
            "stops at its budget (sasrec, two-tower) or grows with the data (itemknn)")


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def _check_trainable(est, cfg, sequences, workers: int) -> None:
    """A neural family's training batches, built as its workers will: none at all would fail the job after
    its run exists."""
    from aimass.zoo.trainer import make_loader

    if not hasattr(est, "training_data"):  # one pass over counts: any data with users trains
        return
    dataset = est.training_data([np.asarray(x) for x in sequences], cfg)
    if len(dataset) == 0:
        raise InvalidInputError(f"{est.family} has no training example in this dataset: every user's training "
                                "history (their interactions less the last 2, held out for validation and test) "
                                "is too short for it")
    world = max(1, workers)
    if len(make_loader(est, dataset, cfg, world)[0]) == 0:
        raise InvalidInputError(f"{est.family} has no training batch for {world} workers: batch_size "
                                f"{cfg.batch_size} gives each worker less than one example; raise it or use "
                                "fewer workers")


def _prepare(ds, max_val_users: int | None, seed: int) -> tuple[dict, object]:
    """Splits and the data a job ships to its workers. ``max_val_users`` caps leave-one-out validation (a
    protocol with its own validation users, ``ml1m-seq``, keeps them all); ``data["max_val_users"]`` is
    the cap really applied, which the job record keeps for a resume."""
    from aimass.evaluation import make_splits, protocol_for

    if ds.interactions.empty:
        raise InvalidInputError(f"{ds.ref} has no interactions to train on")
    protocol = protocol_for(ds.interactions)
    cap = None if protocol == "ml1m-seq" else max_val_users
    try:
        splits = make_splits(ds.interactions, protocol, max_val_users=cap, seed=seed)
    except ValueError as e:  # a split column whose layout the protocol cannot read (two test rows of a user)
        raise InvalidInputError(f"{ds.ref}: {e}") from None
    if protocol == "ml1m-seq" and (len(splits.val_users) < MIN_EVAL_USERS or
                                   len(splits.test_users) < MIN_EVAL_USERS):
        raise InvalidInputError(
            f"{ds.ref}'s split column gives {len(splits.val_users)} users a 'val' row and {len(splits.test_users)} "
            f"a 'test' row: training needs at least {MIN_EVAL_USERS} of each")
    if len(splits.val_users) < MIN_EVAL_USERS or len(splits.test_users) < MIN_EVAL_USERS:
        raise InvalidInputError(
            f"{ds.ref} has too few interactions per user: {len(splits.val_users)} users have the 3 or more "
            f"interactions that training, validation and test need (at least {MIN_EVAL_USERS} required)")
    data = {"n_items": splits.n_items, "train": [np.asarray(x) for x in splits.train_sequences],
            "val_histories": [np.asarray(x) for x in splits.val_histories],
            "val_targets": np.asarray(splits.val_targets), "protocol": protocol, "max_val_users": cap,
            "eval_seed": seed}
    return data, splits


def data_stats(lengths, n_items: int) -> dict:
    """What the data-dependent defaults are decided from (logged with the run as ``data.*`` params)."""
    n = np.asarray(lengths, dtype=np.int64)
    return {"data.users": len(n), "data.items": int(n_items), "data.interactions": int(n.sum()),
            "data.mean_length": round(float(n.mean()), 2) if len(n) else 0.0,
            "data.p90_length": int(np.percentile(n, 90)) if len(n) else 0,
            "data.per_item": round(float(n.sum()) / max(n_items, 1), 2)}


def _derived(cls, params: dict, cfg) -> dict:
    """The config values the data decided: fields the user left to their ``None`` / "auto" default."""
    fields = getattr(cls.Config, "model_fields", {})
    return {f"resolved.{k}": v for k, v in cfg.model_dump().items()
            if k not in params and k in fields and fields[k].default in (None, "auto") and v is not None}


def _users_digest(users) -> str:
    import hashlib

    return hashlib.sha1(np.asarray(users, dtype=np.int64).tobytes()).hexdigest()


def _latest_checkpoint(s: Settings, run_id: str) -> Path | None:
    root = s.home / "ray-results" / run_id
    found = sorted((p for p in root.glob("checkpoint_*") if (p / "state.json").exists()),
                   key=lambda p: json.loads((p / "state.json").read_text()).get("step", 0))
    return found[-1] if found else None


def _run(s, cls, family, info, params, data, splits, workers, gpu, epochs, budget_min, progress, resume):
    from aimass import _ray
    from aimass.tracking import TAG, lineage_tags, log_model, metric_key, mlflow_for
    from aimass.training._loop import _state_from
    from aimass.zoo.trainer import budget_note

    if workers:
        ray = _ray.init(s)
        resources = ray.cluster_resources()
        if gpu and resources.get("GPU", 0) < workers:
            raise NoGPUError(f"{workers} GPU worker(s) asked for but the Ray cluster has "
                             f"{int(resources.get('GPU', 0))} GPU(s)")
        if workers > resources.get("CPU", 0):
            raise InvalidInputError(f"{workers} workers asked for but the Ray cluster has "
                                    f"{int(resources.get('CPU', 0))} CPUs")
    else:  # Ray Train's local mode: the loop runs in this process, no Ray cluster (its GPU: _check_gpus)
        ray = None
    mlflow = mlflow_for(s)
    job = {"family": family, "dataset": info.ref, "params": params, "workers": workers, "gpu": gpu,
           "epochs": epochs, "time_budget_min": budget_min, "max_val_users": data["max_val_users"],
           "max_test_users": data.get("max_test_users"), "eval_seed": data["eval_seed"],
           "val_users_sha1": _users_digest(splits.val_users), "item_text": data.get("item_features") is not None}
    if resume:
        active = mlflow.start_run(run_id=resume[0])
    else:
        active = mlflow.start_run(run_name=f"{family}-{info.name}-v{info.version}")
    run_id = active.info.run_id
    started = time.time()
    try:  # from here on a failure ends the run FAILED: a run left active would refuse every later start_run
        if not resume:
            mlflow.log_params({"family": family, "workers": workers, "gpu": gpu, "epochs": epochs,
                               "protocol": data["protocol"], "item_text": job["item_text"],
                               **{f"param.{k}": v for k, v in params.items()}, **data.get("resolved", {})})
            mlflow.set_tags({**lineage_tags(family, info), f"{TAG}job": json.dumps(job)})
        result = _fit(s, ray, cls, family, data, params, run_id, workers, gpu, epochs, budget_min, progress,
                      resume[1] if resume else None)
        state = json.loads((Path(result.checkpoint.path) / "state.json").read_text())
        with result.checkpoint.as_directory() as d, tempfile.TemporaryDirectory() as tmp:
            from aimass.zoo import load_estimator
            from aimass.zoo.sasrec import n_members

            model_dir = Path(tmp) / "model"
            import shutil

            if not (Path(d) / "best").exists():
                raise BackendError(f"{family} diverged: its validation figures were NaN at every one of its "
                                   f"{state['epoch']} epoch(s), so there is no model to keep (a lower lr may help)")
            shutil.copytree(Path(d) / "best", model_dir)
            est = load_estimator(model_dir, family)
            metrics = _final_metrics(est, splits, data.get("max_test_users"), data["eval_seed"],
                                     family if progress else None)
            n_parameters = count_parameters(est)
            members = n_members(getattr(est, "config_", None))  # what the saved model really holds
            # values a family decides from the data while it fits (EASE's lambda from the item counts), beside
            # the ones resolved before it: `runs show` lists every value the data decided
            fitted = {f"resolved.{k}": v for k, v in getattr(est, "decided", dict)().items() if k not in params}
            if fitted and not resume:
                mlflow.log_params(fitted)
                data["resolved"] = {**data.get("resolved", {}), **fitted}
            mlflow.log_metric("n_parameters", n_parameters)
            mlflow.log_metrics({metric_key(k): v for k, v in metrics.items()})
            example = [int(x) for x in splits.item_ids[np.asarray(splits.test_histories[0][-5:]) - 1]]
            info_model = log_model(mlflow, model_dir, splits.item_ids, family, example)
        note = budget_note(_state_from(state), budget_min * 60 if budget_min else None)
        mlflow.set_tags({f"{TAG}best_epoch": state["best_epoch"], f"{TAG}stop_reason": state.get("stop_reason", ""),
                         **({f"{TAG}budget_note": note} if note else {})})
        if not note and resume and f"{TAG}budget_note" in active.data.tags:  # the first part's, of a resumed run
            mlflow.MlflowClient().delete_tag(run_id, f"{TAG}budget_note")
        if resume and f"{TAG}error" in active.data.tags:  # a failed part's reason: the run it ended finished now
            mlflow.MlflowClient().delete_tag(run_id, f"{TAG}error")
        mlflow.end_run("FINISHED")
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt):
            _keep_reason(mlflow, e)
        mlflow.end_run("FAILED" if not isinstance(e, KeyboardInterrupt) else "KILLED")
        if isinstance(e, (InvalidInputError, KeyboardInterrupt)):
            raise
        raise BackendError(f"training job {run_id} failed: {_root_cause(e)}") from e
    hist = state["history"]
    return TrainResult(
        run_id=run_id, family=family, dataset=info.ref, metrics=metrics, model_uri=info_model.model_uri,
        epochs=state["epoch"], best_epoch=state["best_epoch"], wall_time_s=time.time() - started,
        samples_per_s=float(np.mean([h["samples_per_s"] for h in hist])) if hist else 0.0,
        n_parameters=n_parameters, history=hist, stop_reason=state.get("stop_reason", ""),
        resolved=data.get("resolved", {}), note=note, members=members)


def _keep_reason(mlflow, e: BaseException) -> None:
    """The failure's reason as a tag of the run, for whoever reads the run later (the console, `aimass runs show`):
    MLflow keeps only FAILED. Masked, since a store's error quotes its URL; best effort, since a store that refuses
    the tag must not hide the error that ended the job."""
    from aimass.settings import redacted
    from aimass.tracking import TAG

    with contextlib.suppress(Exception):
        mlflow.set_tag(f"{TAG}error", redacted(_root_cause(e))[:500])


def _root_cause(e: BaseException) -> str:
    """The worker's own exception line out of Ray's wrapped traceback text."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
    return errors[-1] if errors else (lines[0] if lines else repr(e))


def count_parameters(est) -> int:
    """Learned numbers in a fitted estimator: tensor elements, array elements, stored sparse entries."""
    import scipy.sparse as sp
    import torch

    total = 0
    for name, value in vars(est).items():
        if not name.endswith("_"):
            continue
        if isinstance(value, torch.nn.Module):
            total += sum(p.numel() for p in value.parameters())
        elif isinstance(value, np.ndarray):
            total += value.size
        elif sp.issparse(value):
            total += value.nnz
    return int(total)


def _fit(s, ray, cls, family, data, params, run_id, workers, gpu, epochs, budget_min, progress, resume_from):
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from aimass.training._loop import worker_loop

    storage = (s.home / "ray-results").resolve()
    if workers:
        queue = Queue(maxsize=1000, actor_options={"num_cpus": 0}) if progress else None
        where = {"data_ref": ray.put(data),
                 "threads_per_worker": max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)}
        scaling = ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker={"CPU": 1})
    else:
        # Local mode keeps the checkpoint object the loop reports, not a copy, so the loop writes its
        # checkpoints where Ray Train would have put them (resume reads them there)
        queue = _LocalQueue(maxsize=1000) if progress else None
        where = {"data": data, "threads_per_worker": _local_cpus(),
                 "local_checkpoints": str(storage / run_id)}
        scaling = ScalingConfig(num_workers=0, use_gpu=gpu)
    config = {"family": family, "params": params, "seed": params.get("seed", 0),
              "epochs": epochs, "time_budget_s": budget_min * 60 if budget_min else None,
              "progress_queue": queue, "run_id": run_id,
              # Ray Train shows this config whole (its dashboard's run settings): a credential in the MLflow URL
              # reaches rank 0 through a file of this user's instead
              "store": s.dump(["home", "mlflow_tracking_uri"], secrets_to=s.secrets_dir),
              # Train V2 dropped resume_from_checkpoint: the loop reads the folder itself
              "resume_from": str(resume_from) if resume_from else None, **where}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=config,
        scaling_config=scaling,
        run_config=RunConfig(name=run_id, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             # OpenMP threads that spin while waiting collapse when another process holds a
                             # core (a training step went from 0.8 s to 3 s here); passive waiting does not
                             worker_runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}),
    )
    if queue is None:
        return _interruptible(trainer)
    shown = epochs or (None if budget_min and "epochs" not in params else getattr(cls.Config(), "epochs", 1))
    with _ProgressBar(queue, family, shown):
        return _interruptible(trainer)


def _interruptible(trainer):
    """trainer.fit() with Ctrl-C a KeyboardInterrupt again. On the main thread Ray Train takes SIGINT over for
    the run: its handler aborts the run (good: the workers stop), after which fit() raises as if the run had
    failed, and the handler stays installed, so no later Ctrl-C in the process (a notebook's kernel, the
    metrics pass after training) did anything. Its handler is chained to note the interrupt (through Ray's
    registration hook where this Ray has it), and the caller's handler is put back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # Ray registers no handler there
        return trainer.fit()
    before = signal.getsignal(signal.SIGINT)
    interrupted = threading.Event()
    register = getattr(trainer, "_register_sigint_handler", None)
    if register is not None:
        def chained(controller):
            register(controller)
            theirs = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                interrupted.set()
                if callable(theirs):
                    theirs(signum, frame)

            signal.signal(signal.SIGINT, handler)

        trainer._register_sigint_handler = chained
    try:
        return trainer.fit()
    except BaseException as e:
        if interrupted.is_set() and not isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt from e  # the run was aborted for the Ctrl-C, not failed
        raise
    finally:
        signal.signal(signal.SIGINT, before)


class _LocalQueue(_queue.Queue):
    """The progress queue of a local-mode job, in this process; Ray's queue (an actor) needs a cluster."""

    def shutdown(self, force: bool = False) -> None:
        pass


class _ProgressBar:
    """The driver's one bar for a job (step, epoch, best validation NDCG@10, ETA), fed by rank 0 through a
    Ray queue, so it works the same when the workers run on other machines of a cluster."""

    def __init__(self, queue, family: str, epochs: int | None):
        import threading

        self.queue, self.family, self.epochs = queue, family, epochs
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self.queue.shutdown(force=True)

    def _run(self) -> None:
        from aimass import console

        bar = console.progress(desc=f"training {self.family}", unit="step")
        best, drawn = None, 0.0
        try:
            while not self.done.is_set():
                try:
                    msg = self.queue.get(timeout=0.5)
                except Exception:  # queue.Empty, or the queue's actor is gone at the end
                    continue
                if msg.get("expected"):
                    bar.total = msg["expected"]
                if msg.get("best", -1.0) >= 0:
                    best = msg["best"]
                bar.n = msg["step"]
                post = {"epoch": f"{min(msg['epoch'], self.epochs)}/{self.epochs}" if self.epochs else msg["epoch"]}
                if best is not None:
                    post["best_val_ndcg@10"] = f"{best:.4f}"
                # at most one redraw a second: fast epochs would otherwise print a line each where stderr is
                # not a terminal (a log, CI); close() draws the last state
                bar.set_postfix(post, refresh=False)
                if time.monotonic() - drawn >= 1.0:
                    bar.refresh()
                    drawn = time.monotonic()
        finally:
            bar.close()


def _final_metrics(est, splits, max_test_users: int | None = None, seed: int = 0, progress: str | None = None
                   ) -> dict:
    """Validation and test figures of the kept model. Full ranking costs users x items: on a catalogue of a
    million items and a hundred thousand users that is hours, so a job may test on a seeded sample of users
    (``max_test_users``, recorded in the run as ``test_users``). ``progress``: the family, to show a bar over
    the users (a minute or more past the training bar on a hundred thousand users)."""
    from aimass import console
    from aimass.evaluation import evaluate

    test_h, test_t = list(splits.test_histories), np.asarray(splits.test_targets)
    if max_test_users is not None and len(test_h) > max_test_users:
        pick = np.sort(np.random.default_rng(seed).choice(len(test_h), max_test_users, replace=False))
        test_h, test_t = [test_h[i] for i in pick], test_t[pick]
    out = {"test_users": float(len(test_h))}
    # shown from 2 s on: a small job's test would only add a line
    with console.progress(total=len(splits.val_histories) + len(test_h), desc=f"testing {progress}", unit="user",
                          disable=progress is None, delay=2.0) as bar:
        # "best_val": the restored best epoch, apart from the per-epoch "val_" series logged during training
        for name, hist, targets in (("best_val", splits.val_histories, splits.val_targets),
                                    ("test", test_h, test_t)):
            m = evaluate(est.score, list(hist), np.asarray(targets), splits.n_items, ks=(10,), progress=bar.update)
            out.update({f"{name}_{k}": float(v) for k, v in m.items() if k != "n_users"})
    return out


def _item_table(ds, splits, family: str) -> dict[str, list[str]]:
    """The items table in the dense id order (entry i describes item i + 1), every column as text: what a
    family that indexes the catalogue itself (search) reads."""
    if ds.items is None or "text" not in ds.items.columns:
        raise InvalidInputError(f"{family} needs item text: {ds.ref} has no items table with a text column")
    table = ds.items.set_index("item_id").reindex(splits.item_ids)
    return {str(c): table[c].fillna("").astype(str).tolist() for c in table.columns}


def _text_features(s: Settings, ds, splits, progress: bool) -> np.ndarray:
    """MiniLM vectors of the items' text in the dense id order, cached per dataset content."""
    cache = s.home / "cache" / "text-features" / f"{ds.info.content_hash}.npy"
    if cache.exists():
        try:
            feats = np.load(cache, allow_pickle=False)
        except (OSError, ValueError):  # unreadable (written by an older aimass before it wrote atomically)
            feats = None
        if feats is not None and feats.shape[0] == splits.n_items + 1:
            return feats
    from aimass import console
    from aimass.zoo.text import item_text_features

    text = ds.items.set_index("item_id")["text"].astype(str)
    texts = [text.get(int(i), "") for i in splits.item_ids]
    # a bar on the terminal with its ETA, before the job and its budget: 135,000 titles took 24 minutes on 2
    # busy cores, with nothing shown (the encoder's own bar went to the log)
    with console.progress(total=len(texts), desc="encoding item text (MiniLM, once per dataset version)",
                          unit="item", disable=not progress) as bar:
        feats = item_text_features(texts, done=bar.update)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # written beside and renamed: a job killed while writing, or one reading meanwhile, never sees half a file
    with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npy", delete=False) as f:
        np.save(f, feats)
    os.replace(f.name, cache)
    return feats


from aimass.training._auto import MIN_BUDGET_MIN as MIN_AUTO_BUDGET_MIN  # noqa: E402, F401
from aimass.training._auto import AutoResult, Candidate, auto, check_auto_budget  # noqa: E402, F401  (it calls train, defined above)
