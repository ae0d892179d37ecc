"""Compression of registered model versions: int8, fp16, bf16, prune, distill, onnx.

    >>> v = compress("recs", 3, "int8")          # -> recs/4, parent_version 3, method "int8"
    >>> aimass.registry.load("recs/4").recommend(df)   # one loader, whatever the method

Each compressed version is evaluated on the parent's dataset version and split protocol (test NDCG@10 and
Recall@10), sized (bytes of its folder), timed on CPU at batch 1 and 64 on the same histories as the parent,
logged as its own MLflow run (the parent run's dataset tags, ``aimass.parent_model``, ``aimass.method``) with
the model logged as code (``registry/_pyfunc.py``) and registered with the parent as lineage.
Storage formats are in ``_codecs``."""
from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aimass.errors import AimassError, BackendError, InvalidInputError
from aimass.registry import METHODS
from aimass.registry import _closed_form as CF
from aimass.registry import _codecs as C
from aimass.registry._latency import latency_batches, latency_ms
from aimass.settings import Settings, default_settings, error_line

_COMMON = {"latency_n": int, "seed": int}
_OPTIONS = {
    "int8": {"head": str, "linear": str},
    "fp16": {},
    "bf16": {"compute": str},
    "prune": {"kind": str, "sparsity": float, "steps": int, "lr": float, "time_budget_s": float},
    "distill": {"n_blocks": int, "dim": int, "n_heads": int, "ffn_mult": int, "temperature": float, "alpha": float,
                "steps": int, "lr": float, "batch_size": int, "time_budget_s": float},
    "onnx": {"check_users": int, "opset": int},
}
_CHOICES = {"head": ("int8", "float"), "linear": ("per_tensor", "per_channel"), "compute": ("bf16", "fp32"),
            "kind": ("unstructured", "structured")}


def neural_families() -> list[str]:
    """The zoo's families with neural weights that the methods know how to rewrite: what every method but
    distill applies to (a family says ``compressible = False`` until its layers are covered)."""
    from aimass.zoo import families, family_class

    return [f for f in families() if family_class(f).is_torch and getattr(family_class(f), "compressible", True)]


def distillable_families() -> list[str]:
    """The zoo's families that can teach a smaller student of their own kind (a ``distill_step`` hook)."""
    from aimass.zoo import family_class

    return [f for f in neural_families() if hasattr(family_class(f), "distill_step")]


def check_parent(info) -> None:
    """Refuses a version that cannot be compressed whatever the method: a compressed one, one without its
    dataset version to evaluate on."""
    if info.method != "original":
        raise InvalidInputError(f"{info.ref} is already compressed ({info.method}); compress an original "
                                "version")
    if not info.dataset:
        raise InvalidInputError(f"{info.ref} records no dataset version to evaluate on")


def check(method: str, family: str | None, options: dict) -> dict:
    """Refuse what cannot work before anything is loaded or written; returns the typed options."""
    if method not in METHODS:
        raise InvalidInputError(f"unknown compression method {method!r}; known: {', '.join(METHODS)}")
    neural = neural_families()
    if family == "ease":  # the closed-form family: its one matrix, see registry/_closed_form.py
        if method not in CF.METHODS:
            raise InvalidInputError(f"compression method {method!r} does not apply to family 'ease' (its "
                                    f"methods: {', '.join(CF.METHODS)})")
    elif family not in neural:
        raise InvalidInputError(f"compression method {method!r} does not apply to family {family!r}: "
                                f"methods apply to {', '.join(neural)} (and {', '.join(CF.METHODS)} to ease)")
    if method == "distill" and family not in distillable_families():
        raise InvalidInputError(f"compression method 'distill' does not apply to family {family!r} "
                                f"(only {', '.join(distillable_families())} can teach a smaller student)")
    allowed = {**_COMMON, **(CF.OPTIONS[method] if family == "ease" else _OPTIONS[method])}
    out = {}
    for k, v in options.items():
        if k not in allowed:
            raise InvalidInputError(f"unknown option {k!r} for method {method!r}; "
                                    f"known: {', '.join(allowed) or 'none'}")
        try:
            # int(2.9) and int(True) would pass as 2 and 1, float("nan") as a learning rate: none is what was meant
            if isinstance(v, bool) and allowed[k] is not bool or allowed[k] is int and not float(v).is_integer():
                raise ValueError(v)
            out[k] = allowed[k](v)
            if isinstance(out[k], float) and not math.isfinite(out[k]):
                raise ValueError(v)
        except (TypeError, ValueError, OverflowError):
            kind = {int: "a whole number", float: "a finite number"}.get(allowed[k], allowed[k].__name__)
            raise InvalidInputError(f"option {k}={v!r} of method {method!r} must be {kind}") from None
        if k in _CHOICES and out[k] not in _CHOICES[k]:
            raise InvalidInputError(f"option {k}={v!r}: use one of {', '.join(_CHOICES[k])}")
        if allowed[k] in (int, float) and (out[k] < 0 if k == "seed" else out[k] <= 0):
            raise InvalidInputError(f"option {k}={v!r} must be {'0 or more' if k == 'seed' else 'positive'}")
        if k == "seed" and out[k] >= 2**32:  # what every family's seed takes (numpy's range)
            raise InvalidInputError(f"option seed={v!r} must be below 2**32")
    if "head" in out and family != "sasrec":  # build() gives the others a float head whatever was asked
        raise InvalidInputError(f"option head={out['head']!r} applies to family 'sasrec' only (its output layer is "
                                f"the item table), not to {family!r}: leave the option out")
    if out.get("kind") == "structured" and family not in ("sasrec", "two-tower"):
        raise InvalidInputError(f"structured pruning removes feed-forward units, which {family} has none of: "
                                "use kind=unstructured")
    if not 0 < out.get("sparsity", 0.5) < 1:
        raise InvalidInputError(f"sparsity must be in (0, 1), got {out['sparsity']}")
    if not 0 <= out.get("alpha", 0.5) <= 1:
        raise InvalidInputError(f"alpha must be in [0, 1], got {out['alpha']}")
    return out


# ---------------------------------------------------------------------------------------------- builders

def build(method: str, est, family: str, splits, out: Path, opts: dict, progress: bool = False) -> dict:
    """Write the compressed folder of ``est`` (a fitted family estimator) to ``out``; returns its meta."""
    out.mkdir(parents=True, exist_ok=True)
    if family == "ease":
        return CF.build(est, method, opts, out)
    module = est.module_.eval()
    meta = {"family": family, "method": method, "n_items": int(est.n_items_),
            "config": est.config_.model_dump()}
    feats = getattr(module, "item_features", None)
    if feats is not None:
        meta["n_features"] = int(feats.shape[1])
    from safetensors.torch import save_file

    if method == "int8":
        blobs, details = C.encode_int8(module, per_channel=opts.get("linear") == "per_channel")
        meta.update(details, head=opts.get("head", "int8") if family == "sasrec" else "float")
        save_file(blobs, str(out / C.WEIGHTS))
    elif method in ("fp16", "bf16"):
        dt = torch.float16 if method == "fp16" else torch.bfloat16
        meta["compute"] = opts.get("compute", "bf16") if method == "bf16" else "fp32"
        save_file({k: (v.to(dt) if v.is_floating_point() else v).contiguous()
                   for k, v in module.state_dict().items()}, str(out / C.WEIGHTS))
    elif method == "prune":
        pruned, masks = _prune(est, family, splits, opts, progress)
        meta.update(kind=opts.get("kind", "unstructured"), sparsity=opts.get("sparsity", 0.5))
        tensors, meta["shapes"] = {}, {}
        for k, v in pruned.state_dict().items():
            if k in masks:
                tensors[f"{k}::mask"], tensors[f"{k}::values"] = C.encode_sparse(v)
                meta["shapes"][k] = list(v.shape)
            else:
                tensors[k] = v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
        save_file(tensors, str(out / C.WEIGHTS))
    elif method == "distill":
        student, scfg, details = _distill(est, splits, opts, progress)
        meta.update(config=scfg.model_dump(), distill=details)
        save_file({k: v.detach().float().contiguous() for k, v in student.state_dict().items()},
                  str(out / C.WEIGHTS))
    elif method == "onnx":
        C.export_onnx(module, family, est.config_, out / C.ONNX_FILE, opts.get("opset", 17))
    C.write_meta(out, meta)
    return meta


def _finetune(cls, module: nn.Module, cfg, sequences, steps: int, lr: float, seed: int,
              budget_s: float | None, after_step=None) -> int:
    """A short fine-tune through the family's own hooks and the zoo's one loop (no validation: a fixed
    number of steps or the time budget)."""
    from aimass.zoo.trainer import EpochLoop, Limits, make_loader

    upd, fields = {"lr": lr}, type(cfg).model_fields
    if "warmup_steps" in fields:  # families with a schedule (Mult-VAE has a fixed lr)
        upd.update(warmup_steps=min(cfg.warmup_steps, max(1, steps // 10)), schedule="cosine")
    if "anneal_steps" in fields:  # Mult-VAE: tune at the trained model's KL weight, not a restarted anneal
        upd["anneal_steps"] = 1
    cfg = cfg.model_copy(update=upd)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = cls.training_data(list(sequences), cfg)
    loader, sampler = make_loader(cls, data, cfg, seed=seed)
    opt = cls.make_optimizer(module, cfg)

    def step(batch, i, progress):
        loss = cls.train_step(module, batch, cfg, opt, i, progress, generator=gen)
        if after_step is not None:
            after_step()
        return loss

    st = EpochLoop(Limits(epochs=10**9, time_budget_s=budget_s, max_steps=steps), step,
                   epoch_hooks=(sampler, data)).run(loader)
    module.eval()
    return st.step


def _prune(est, family: str, splits, opts: dict, progress: bool):
    """Magnitude pruning + a short fine-tune with the mask kept. Unstructured: the smallest-|w| fraction of
    every Linear weight and embedding table, per tensor. Structured: whole feed-forward
    hidden units (rows of its first Linear, columns of its last) by the product of their weight norms."""
    from aimass.zoo import family_class

    kind, sparsity = opts.get("kind", "unstructured"), opts.get("sparsity", 0.5)
    module = copy.deepcopy(est.module_)
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if kind == "unstructured":
            linear, rows = C._linear_kinds(module)
            params = dict(module.named_parameters())
            for key in sorted(linear | rows):
                if key not in params:
                    continue  # buffers (frozen features) are not pruned
                w = params[key]
                k = int(round(sparsity * w.numel()))
                if k == 0:
                    continue
                thresh = w.abs().reshape(-1).kthvalue(k).values
                masks[key] = (w.abs() > thresh).to(w.dtype)
                w.mul_(masks[key])
        else:
            for name, m in list(module.named_modules()):
                lins = [x for x in m.children() if isinstance(x, nn.Linear)] if name.endswith("ffn") else []
                if len(lins) < 2:
                    continue
                first, last = lins[0], lins[-1]
                score = first.weight.norm(dim=1) * last.weight.norm(dim=0)
                n_keep = max(1, int(round(first.out_features * (1 - sparsity))))
                keep = score.topk(n_keep).indices.sort().values
                new_first = nn.Linear(first.in_features, n_keep, bias=first.bias is not None)
                new_last = nn.Linear(n_keep, last.out_features, bias=last.bias is not None)
                new_first.weight.copy_(first.weight[keep])
                if first.bias is not None:
                    new_first.bias.copy_(first.bias[keep])
                new_last.weight.copy_(last.weight[:, keep])
                if last.bias is not None:
                    new_last.bias.copy_(last.bias)
                for i, child in list(m.named_children()):
                    if child is first:
                        m._modules[i] = new_first
                    elif child is last:
                        m._modules[i] = new_last

    def reapply():
        with torch.no_grad():
            params = dict(module.named_parameters())
            for key, mask in masks.items():
                params[key].mul_(mask)

    cls = family_class(family)
    _finetune(cls, module, est.config_, splits.train_sequences, opts.get("steps", 300), opts.get("lr", 1e-3),
              opts.get("seed", 0), opts.get("time_budget_s"), reapply if masks else None)
    return module, masks


def _distill(teacher_est, splits, opts: dict, progress: bool):
    """A smaller SASRec trained on the teacher's soft targets (KL at temperature T over the whole catalogue at
    every position, x T^2) mixed with the hard next-item CE: ``alpha * KL + (1 - alpha) * CE``. With the
    teacher's width, the student starts from the teacher's embeddings, final norm and evenly spaced blocks;
    narrower, from its tables projected on their principal directions (blocks start fresh)."""
    from aimass import console
    from aimass.zoo import family_class
    from aimass.zoo.trainer import STOP_METRIC, EpochLoop, Limits, make_loader, snapshot, validation_metrics

    SASRec = family_class("sasrec")

    from aimass.zoo.sasrec import is_ensemble

    teacher, tcfg = teacher_est.module_.eval(), teacher_est.config_
    # an ensemble teaches its members' mean scores; the student is one network, started from the first member
    first = teacher.members[0] if is_ensemble(tcfg) else teacher
    n_blocks = opts.get("n_blocks", max(1, tcfg.n_blocks - 1))
    dim = opts.get("dim", tcfg.dim if n_blocks < tcfg.n_blocks else max(8, tcfg.dim // 2))
    n_heads = opts.get("n_heads", tcfg.n_heads if dim % tcfg.n_heads == 0 else 1)
    same = (n_blocks, dim) == (tcfg.n_blocks, tcfg.dim) and not is_ensemble(tcfg)
    if same or n_blocks > tcfg.n_blocks or dim > tcfg.dim:
        raise InvalidInputError(f"student (n_blocks={n_blocks}, dim={dim}) must be smaller than the teacher "
                                f"(n_blocks={tcfg.n_blocks}, dim={tcfg.dim})")
    if dim % n_heads:
        raise InvalidInputError(f"student dim={dim} is not divisible by n_heads={n_heads}")
    # defaults from the ml1m runs (README, compression §): a feed-forward twice the teacher's where the student
    # stays smaller (it runs on the last position only at inference: capacity at no latency), soft targets at
    # T = 1 weighed as much as the hard next item; together -4.1% NDCG@10 against -7.0% at T = 2, alpha 0.7
    wider = 2 * tcfg.ffn_mult
    fits = n_blocks * (4 + 2 * wider) * dim ** 2 < tcfg.n_blocks * (4 + 2 * tcfg.ffn_mult) * tcfg.dim ** 2
    ffn_mult = opts.get("ffn_mult", wider if fits else tcfg.ffn_mult)
    steps, lr, T, alpha = opts.get("steps", 500), opts.get("lr", 2e-3), opts.get("temperature", 1.0), \
        opts.get("alpha", 0.5)
    n, seed = teacher_est.n_items_, opts.get("seed", 0)
    # tokens_per_seq re-derived: teachers trained before it existed have none; the loss is the whole
    # catalogue's (distill_ce), so the student's item table takes dense gradients whatever the teacher's loss
    scfg = tcfg.model_copy(update={"n_blocks": n_blocks, "dim": dim, "n_heads": n_heads, "ffn_mult": ffn_mult,
                                   "lr": lr, "loss": "ce",
                                   "warmup_steps": min(50, max(1, steps // 10)), "schedule": "cosine",
                                   "batch_size": opts.get("batch_size", tcfg.batch_size), "tokens_per_seq": None,
                                   "crop": "random", "seed": seed, "members": 1}
                           ).resolve(n, [len(x) for x in splits.train_sequences])
    torch.manual_seed(seed)
    student = SASRec.build_module(scfg, n)
    n_params = sum(p.numel() for p in student.parameters())
    if n_params >= (t_params := sum(p.numel() for p in teacher.parameters())):
        raise InvalidInputError(f"student (n_blocks={n_blocks}, dim={dim}, ffn_mult={ffn_mult}) has {n_params:,} "
                                f"parameters, the teacher {t_params:,}: it must be smaller")
    init = "blocks" if dim == tcfg.dim and n_heads == tcfg.n_heads else "projected"
    with torch.no_grad():
        if init == "blocks":
            picks = np.round(np.linspace(0, tcfg.n_blocks - 1, n_blocks)).astype(int).tolist()
            student.item_emb.load_state_dict(first.item_emb.state_dict())
            student.pos_emb.load_state_dict(first.pos_emb.state_dict())
            student.norm.load_state_dict(first.norm.state_dict())
            for i, j in enumerate(picks):
                _copy_block(first.blocks[j], student.blocks[i])
        else:
            # a narrower student starts from the teacher's item and position tables on their top `dim`
            # right singular vectors: item-item dot products begin as the teacher's best rank-`dim` ones
            proj = torch.linalg.svd(first.item_emb.weight[1:].float(), full_matrices=False).Vh[:dim].T
            student.item_emb.weight.copy_(first.item_emb.weight.float() @ proj)
            student.pos_emb.weight.copy_(first.pos_emb.weight.float() @ proj)
    data = SASRec.training_data(list(splits.train_sequences), scfg)
    loader, sampler = make_loader(SASRec, data, scfg, seed=seed)  # users of similar length: less padding
    opt = SASRec.make_optimizer(student, scfg)
    valid = None
    if len(splits.val_targets):  # at most 2,048 validation users, as training uses: an epoch's check stays cheap
        pick = np.sort(np.random.default_rng(seed).permutation(len(splits.val_targets))[:2048])
        valid = ([splits.val_histories[i] for i in pick], np.asarray(splits.val_targets)[pick])
    kept: dict = {}
    bar = console.progress(total=steps, desc="distilling", unit="step", disable=not progress)

    def step(batch, i, done):
        bar.update()
        return SASRec.distill_step(student, teacher, batch, scfg, opt, i, done, T, alpha)

    def validate():
        return validation_metrics(lambda h: SASRec.score_module(student, h, scfg), valid[0], valid[1], n)

    def on_epoch(metrics, st, improved):
        bar.set_postfix(epoch=st.epoch, best_val_ndcg=f"{max(st.best, 0):.4f}")

    # the student kept is its best validation epoch, as in training (a cosine tail can overshoot); the
    # schedule follows whichever runs out first, the steps or the time budget
    loop = EpochLoop(Limits(epochs=10**9, time_budget_s=opts.get("time_budget_s"), max_steps=steps), step,
                     validate=validate if valid else None, on_epoch=on_epoch,
                     keep_best=(lambda: kept.update(state=snapshot(student))) if valid else None,
                     epoch_hooks=(sampler, data))
    try:
        st = loop.run(loader)
    finally:
        bar.close()
    if "state" in kept:
        student.load_state_dict(kept["state"])
    student.eval()
    history = [{"epoch": h["epoch"], "step": h["step"], STOP_METRIC: h.get(STOP_METRIC)} for h in st.history]
    details = {"steps": st.step, "temperature": T, "alpha": alpha, "init_from_teacher": init,
               "train_s": round(st.train_time_s, 1),
               "final_loss": st.history[-1]["loss"] if st.history else None, "history": history,
               "best_epoch": st.best_epoch if valid else None}
    return student, scfg, details


def _copy_block(src: nn.Module, dst: nn.Module) -> None:
    """``dst`` computes what ``src`` does, also when its feed-forward layer is wider: the extra hidden units
    keep their random input weights but start with zero output weights (a function-preserving widening),
    so they add capacity without moving the starting point. A narrower one keeps the first units."""
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if not k.startswith("ffn.")}, strict=False)
    (w_in, b_in), (w_out, b_out) = (src.ffn[0].weight, src.ffn[0].bias), (src.ffn[3].weight, src.ffn[3].bias)
    h = min(w_in.shape[0], dst.ffn[0].weight.shape[0])
    dst.ffn[0].weight[:h] = w_in[:h]
    dst.ffn[0].bias[:h] = b_in[:h]
    dst.ffn[3].weight.zero_()
    dst.ffn[3].weight[:, :h] = w_out[:, :h]
    dst.ffn[3].bias.copy_(b_out)


# ------------------------------------------------------------------------------------------- measuring

def measure(parent_score, child_score, splits, n_items: int, latency_n: int = 200, seed: int = 0,
            parent: dict | None = None, child_served=None) -> tuple[dict, dict]:
    """Test NDCG/Recall@10 and batch-1/64 latency of parent and child on the same users; returns
    (child metrics with deltas, parent metrics). ``parent`` reuses parent numbers already measured;
    ``child_served`` scores the child's quality as serving does (see _codecs.as_served), latency stays a call."""
    from aimass.evaluation import evaluate

    def one(score, served=None):
        m = evaluate(served or score, list(splits.test_histories), np.asarray(splits.test_targets), n_items,
                     ks=(10,))
        out = {"test_ndcg_at_10": m["ndcg@10"], "test_recall_at_10": m["recall@10"]}
        for b, batches in latency_batches(splits.test_histories, latency_n, seed).items():
            lat = latency_ms(score, batches)
            out[f"latency_b{b}_p50_ms"], out[f"latency_b{b}_p99_ms"] = lat["p50"], lat["p99"]
        return out

    p = parent or one(parent_score)
    c = one(child_score, child_served)
    for k in ("test_ndcg_at_10", "test_recall_at_10"):
        c[f"delta_{k}_rel"] = (c[k] - p[k]) / p[k] if p[k] else 0.0
    c["speedup_b1"] = p["latency_b1_p50_ms"] / c["latency_b1_p50_ms"]
    c["speedup_b64"] = p["latency_b64_p50_ms"] / c["latency_b64_p50_ms"]
    return c, p


def _tested(splits, recorded: float | None):
    """The test users parent and child are measured on: the parent's own seeded sample when its job tested one
    (max_test_users: a large catalogue's full ranking of every test user costs hours, twice here), else all."""
    from types import SimpleNamespace

    from aimass.training import EVAL_SEED

    h, t = list(splits.test_histories), np.asarray(splits.test_targets)
    if recorded is None or int(recorded) >= len(h):
        return SimpleNamespace(test_histories=h, test_targets=t)
    pick = np.sort(np.random.default_rng(EVAL_SEED).choice(len(h), int(recorded), replace=False))
    return SimpleNamespace(test_histories=[h[i] for i in pick], test_targets=t[pick])


# --------------------------------------------------------------------------------------------- compress

def compress(name: str, version: int, method: str, *, settings: Settings | None = None,
             progress: bool = False, **options):
    """Make a smaller/faster copy of ``name/version`` with ``method`` and register it as the next version of
    ``name`` (parent_version = ``version``, method = ``method``). Returns its ModelVersionInfo.

    Options: common ``latency_n`` (timed calls at batch 1; batch 64 gets a fifth), ``seed``; int8 ``head``
    ("int8" | "float"), ``linear`` ("per_tensor" | "per_channel"); bf16 ``compute`` ("bf16" | "fp32");
    prune ``kind`` ("unstructured" | "structured"), ``sparsity`` (0.5), ``steps`` (300), ``lr``,
    ``time_budget_s``; distill ``n_blocks`` (teacher's - 1), ``dim``, ``n_heads``, ``ffn_mult`` (2x the
    teacher's where the student stays smaller), ``temperature`` (1), ``alpha`` (0.5), ``steps`` (500), ``lr``
    (0.002), ``batch_size``, ``time_budget_s`` (validated every epoch, the best
    epoch kept, its curve logged as ``distill_val_ndcg_at_10``); onnx ``check_users`` (256), ``opset`` (17).
    Logged metrics: test_ndcg_at_10, test_recall_at_10, size_bytes, latency_b{1,64}_p{50,99}_ms, the
    parent's as parent_*, delta_test_*_rel ((child - parent) / parent), speedup_b1/_b64 (parent p50 /
    child p50) and size_ratio (parent bytes / child bytes: how many times smaller)."""
    from aimass import datasets, registry
    from aimass.evaluation import make_splits
    from aimass.tracking import TAG, lineage_of, log_model, metric_key, mlflow_for
    from aimass.zoo.trainer import STOP_METRIC

    s = settings or default_settings()
    info = registry.get(f"{name}/{int(version)}", settings=s)
    opts = check(method, info.family, options)
    check_parent(info)
    ds = datasets.load(info.dataset, settings=s)
    splits = make_splits(ds.interactions)
    parent = registry.load(info.ref, settings=s)
    est = parent.estimator
    if splits.n_items != est.n_items_:
        raise InvalidInputError(f"{info.dataset} has {splits.n_items} items but {info.ref} scores "
                                f"{est.n_items_}")
    client = registry._client(s)
    parent_tags = client.get_run(info.run_id).data.tags if info.run_id else {}
    tested = _tested(splits, info.metrics.get("test_users"))
    with tempfile.TemporaryDirectory(prefix="aimass-compress-") as tmp:
        work = Path(tmp)
        est.save(work / "parent")
        folder = work / "model"
        meta = build(method, est, info.family, splits, folder, opts, progress)
        child = C.load_compressed(folder)
        metrics, pmetrics = measure(est.score, child.score, tested, splits.n_items, opts.get("latency_n", 200),
                                    opts.get("seed", 0), child_served=C.as_served(child))
        metrics["test_users"] = pmetrics["test_users"] = float(len(tested.test_targets))
        metrics["size_bytes"] = C.folder_bytes(folder)
        pmetrics["size_bytes"] = C.folder_bytes(work / "parent")
        metrics["size_ratio"] = pmetrics["size_bytes"] / metrics["size_bytes"]
        sample = list(splits.test_histories[: opts.get("check_users", 256)])
        ref, got = est.score(sample), C.as_served(child)(sample)
        if method == "onnx":
            metrics.update(C.onnx_agreement(ref, got, sample))
        pairs = zip(C.top10(ref, sample), C.top10(got, sample), strict=True)
        # of the items each list holds (a user with fewer than 10 rankable items has a shorter one; -1 pads it)
        metrics["top10_overlap_vs_parent"] = float(np.mean([
            len({i for i in a if i >= 0} & {i for i in b if i >= 0}) / max(1, sum(i >= 0 for i in a))
            for a, b in pairs]))
        if child.n_parameters:
            metrics["n_parameters"] = child.n_parameters
        mlflow = mlflow_for(s)
        with mlflow.start_run(run_name=f"compress-{name}-v{version}-{method}") as run:
            mlflow.set_tags(lineage_of(parent_tags))
            history = meta.get("distill", {}).get("history", [])
            brief = {k: v for k, v in meta.items() if k not in ("config", "shapes")}
            if history:  # the per-epoch curve goes in as a metric series (a chart), not into the tag
                brief["distill"] = {k: v for k, v in meta["distill"].items() if k != "history"}
            mlflow.set_tags({f"{TAG}parent_model": info.ref, f"{TAG}method": method,
                             f"{TAG}compress_meta": json.dumps(brief)[:4000]})
            for r in history:
                if r.get(STOP_METRIC) is not None:
                    mlflow.log_metric(metric_key(f"distill_{STOP_METRIC}"), r[STOP_METRIC], step=r["step"])
            mlflow.log_params({"method": method, "parent": info.ref, "protocol": splits.protocol,
                               **{f"option.{k}": v for k, v in opts.items()}})
            mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()})
            mlflow.log_metrics({f"parent_{k}": float(v) for k, v in pmetrics.items()})
            from aimass.registry._pyfunc import CompressedRecommender

            hist = np.asarray(splits.test_histories[0][-5:]) if len(splits.test_histories) else []
            example = [int(x) for x in parent.item_ids[np.asarray(hist, dtype=np.int64) - 1]]
            model_info = log_model(mlflow, folder, parent.item_ids, info.family, example,
                                   model_class=CompressedRecommender, method=method)
        try:
            return registry.register(run.info.run_id, name, parent_version=int(version), method=method,
                                     model_uri=model_info.model_uri, settings=s)
        except Exception as e:  # whatever failed, the work is kept in its run, which registers as this child later
            kept = (f"the compressed model is kept in run {run.info.run_id}: `aimass models register "
                    f"{run.info.run_id} --name {name}` registers it")
            raise _saying(e, kept) from e


def _saying(e: Exception, more: str) -> Exception:
    """``e`` with ``more`` after its message, of its own type (what a caller catches and the CLI's exit code);
    a library's error becomes a BackendError, as every error the SDK raises on purpose is aimass's."""
    if isinstance(e, AimassError):
        try:
            return type(e)(f"{e}; {more}")
        except TypeError:  # an error built from more than a message (GateRefusedError's checks)
            pass
    return BackendError(f"registering the compressed model failed: {error_line(e)}; {more}")
