"""Every compression method on a trained SASRec on MovieLens-1M (ml1m-seq protocol), through the real path:
``aimass.registry.compress`` -> new registered version -> metrics. Prints one table.

Either a version already registered in a home:
    python benchmarks/compress_ml1m.py --home HOME --name NAME --version V
or a saved SASRec folder (``SASRec.save``), registered first into --home (default: a temporary home) with the
ml1m dataset read from --data (never copied into the repository):
    python benchmarks/compress_ml1m.py --model-dir /tmp/sr/final_model [--data ../shared/data/ml-1m-seq]

Latency: p50/p99 of one ``score`` call on CPU, batch 1 and batch 64, on the same test-user histories for the
parent and each child, with --threads torch (and onnxruntime) threads. "fp32 fast path" is a reference row,
not registered: the parent's own fp32 weights through the same inference restructuring the compressed SASRec
versions use, so the table separates what the restructuring gives from what each method adds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("AIMASS_BENCH_DATA", REPO.parent / "shared" / "data")) / "ml-1m-seq"


def _register_model_dir(s, model_dir: Path, data: Path, name: str) -> int:
    """Register the ml1m dataset and log + register the saved SASRec as NAME's next version."""
    import numpy as np

    from aimass import datasets, registry
    from aimass.evaluation import make_splits
    from aimass.tracking import lineage_tags, log_model, metric_key, mlflow_for
    from aimass.training import _final_metrics
    from aimass.zoo import load_estimator

    try:
        ds = datasets.load("ml1m", settings=s)
    except Exception:
        datasets.register("ml1m", str(data), "ml1m-seq", settings=s)
        ds = datasets.load("ml1m", settings=s)
    splits = make_splits(ds.interactions, "ml1m-seq")
    est = load_estimator(model_dir, "sasrec")
    raw_is_dense = np.array_equal(splits.item_ids, np.arange(1, splits.n_items + 1))
    if est.n_items_ != splits.n_items or not raw_is_dense:
        sys.exit(f"{model_dir} scores {est.n_items_} items; ml1m has {splits.n_items} with ids "
                 f"{splits.item_ids[:3]}...: the model must use the raw ml1m-seq ids 1..n as dense ids")
    mlflow = mlflow_for(s)
    info = ds.info
    with mlflow.start_run(run_name="sasrec-ml1m-imported") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({**lineage_tags("sasrec", info), "aimass.imported_from": str(model_dir)})
        mlflow.log_metrics({metric_key(k): v for k, v in _final_metrics(est, splits).items()})
        import shutil

        shutil.copytree(model_dir, Path(tmp) / "model")
        example = [int(x) for x in splits.item_ids[np.asarray(splits.test_histories[0][-5:]) - 1]]
        log_model(mlflow, Path(tmp) / "model", splits.item_ids, "sasrec", example)
    return registry.register(run.info.run_id, name, settings=s).version


def _fast_scorer(est):
    """A fitted SASRec's own fp32 weights behind the compressed versions' inference path (SASRecInfer)."""
    import torch

    from aimass.registry import _codecs

    infer = _codecs.sasrec_infer(est.module_, est.config_, {})  # an ensemble: its members' mean
    meta = {"family": "sasrec", "method": "fp32 fast path (reference)", "n_items": est.n_items_, "config": {}}
    return _codecs.CompressedScorer(meta, lambda q: infer(torch.from_numpy(q)).numpy(), est.config_.max_len, True)


def _fastpath_reference(s, ref: str, latency_n: int) -> dict:
    """The parent's fp32 weights through SASRecInfer (no compression): what the restructuring alone gives."""
    from aimass import datasets, registry
    from aimass.evaluation import make_splits
    from aimass.registry import _codecs, _compress

    info = registry.get(ref, settings=s)
    ds = datasets.load(info.dataset, settings=s)
    splits = make_splits(ds.interactions)
    est = registry.load(ref, settings=s).estimator
    fast = _fast_scorer(est)
    child, parent = _compress.measure(est.score, fast.score, splits, splits.n_items, latency_n)
    with tempfile.TemporaryDirectory() as tmp:
        est.save(tmp)
        child["size_bytes"] = parent["size_bytes"] = _codecs.folder_bytes(tmp)
    child["size_ratio"] = 1.0
    return {"parent": parent, "fast": child}


def _interleaved(s, name: str, latency_n: int, rounds: int, only: list[int] | None = None) -> None:
    """Re-time every registered version of NAME (or the versions ``only``), loaded through ``registry.load``,
    plus the parent's fp32 weights through the compressed versions' inference path ("fp32 fast path"), in
    interleaved rounds (parent, child, child, ..., parent, ...) on the same batches, so machine noise hits all
    alike; prints p50/p99 over all rounds' calls and the speedup vs the parent (version without a parent)."""
    import numpy as np

    from aimass import datasets, registry
    from aimass.evaluation import make_splits
    from aimass.registry import _compress

    versions = [v for v in registry.versions(name, settings=s) if not only or v.version in only]
    ds = datasets.load(versions[0].dataset, settings=s)
    splits = make_splits(ds.interactions)
    models = {v.ref: (v, registry.load(v.ref, settings=s).estimator) for v in versions}
    base = next(v.ref for v, _ in models.values() if v.parent_version is None)
    fast = _fast_scorer(models[base][1])
    models[f"{base} fast path"] = (SimpleNamespace(method=fast.method, parent_version=1), fast)
    batches = _compress.latency_batches(splits.test_histories, latency_n)
    times: dict = {(ref, b): [] for ref in models for b in batches}
    for _ in range(rounds):
        for ref, (_, est) in models.items():
            for b, bs in batches.items():
                for x in bs[:3]:
                    est.score(x)
                for x in bs:
                    t0 = time.perf_counter()
                    est.score(x)
                    times[(ref, b)].append((time.perf_counter() - t0) * 1000)
    p50 = {k: float(np.percentile(t, 50)) for k, t in times.items()}
    print(f"\ninterleaved latency, {rounds} rounds x ({latency_n} calls at batch 1, {len(batches[64])} at "
          f"batch 64), ms per score() call, torch threads {__import__('torch').get_num_threads()}")
    print("| version | method | b1 p50 | b1 p99 | b64 p50 | b64 p99 | speedup b1 | speedup b64 |\n"
          "|---|---|---|---|---|---|---|---|")
    for ref, (v, _) in models.items():
        p99 = {b: float(np.percentile(times[(ref, b)], 99)) for b in batches}
        print(f"| {ref} | {v.method} | {p50[(ref, 1)]:.2f} | {p99[1]:.2f} | {p50[(ref, 64)]:.1f} | "
              f"{p99[64]:.1f} | {p50[(base, 1)] / p50[(ref, 1)]:.2f}x | "
              f"{p50[(base, 64)] / p50[(ref, 64)]:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, help="aimass home (default with --model-dir: a temporary one)")
    ap.add_argument("--name", default="sasrec-ml1m")
    ap.add_argument("--version", type=int)
    ap.add_argument("--model-dir", type=Path, help="a saved SASRec folder to register first")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the ml-1m-seq folder (read only)")
    ap.add_argument("--methods",
                    default="int8,fp16,bf16,bf16-fp32compute,prune,prune-structured,distill,onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-n", type=int, default=200, help="timed calls at batch 1 (batch 64: a fifth)")
    ap.add_argument("--prune-steps", type=int, default=300)
    ap.add_argument("--distill-steps", type=int, default=600)
    ap.add_argument("--distill-budget-s", type=float, default=600)
    ap.add_argument("--distill-param", action="append", default=[], metavar="KEY=VALUE",
                    help="a distillation option (JSON value), e.g. dim=64, n_blocks=2, lr=0.003, temperature=1")
    ap.add_argument("--int8-head", default="int8", choices=["int8", "float"])
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--interleaved", type=int, metavar="ROUNDS", default=0,
                    help="only re-time every version of --name in --home, in ROUNDS interleaved rounds")
    ap.add_argument("--versions", type=int, nargs="*", help="with --interleaved: only these versions "
                    "(the parent, a version without a parent, must be one of them)")
    args = ap.parse_args()
    if args.interleaved:
        import torch

        from aimass.settings import Settings

        torch.set_num_threads(args.threads)
        return _interleaved(Settings(home=args.home), args.name, args.latency_n, args.interleaved, args.versions)
    if (args.model_dir is None) == (args.version is None):
        ap.error("give either --version (with --home) or --model-dir")

    import torch

    torch.set_num_threads(args.threads)
    from aimass import registry
    from aimass.registry._compress import compress
    from aimass.settings import Settings

    home = args.home or Path(tempfile.mkdtemp(prefix="aimass-compress-bench-")) / "home"
    s = Settings(home=home)
    version = args.version
    if args.model_dir is not None:
        t0 = time.time()
        version = _register_model_dir(s, args.model_dir, args.data, args.name)
        print(f"registered {args.model_dir} as {args.name}/{version} in {home} ({time.time() - t0:.0f}s)",
              flush=True)
    ref = f"{args.name}/{version}"
    options = {
        "int8": ("int8", {"head": args.int8_head}),
        "int8-perchannel": ("int8", {"head": args.int8_head, "linear": "per_channel"}),
        "fp16": ("fp16", {}),
        "bf16": ("bf16", {}),
        "bf16-fp32compute": ("bf16", {"compute": "fp32"}),
        "prune": ("prune", {"kind": "unstructured", "sparsity": 0.5, "steps": args.prune_steps}),
        "prune-structured": ("prune", {"kind": "structured", "sparsity": 0.5, "steps": args.prune_steps}),
        "distill": ("distill", {"n_blocks": 1, "steps": args.distill_steps, "time_budget_s": args.distill_budget_s,
                                **{k: json.loads(v) for k, v in (p.split("=", 1) for p in args.distill_param)}}),
        "onnx": ("onnx", {}),
    }
    rows = []
    t0 = time.time()
    ref_rows = _fastpath_reference(s, ref, args.latency_n)
    rows.append({"method": f"parent ({ref}, fp32)", **ref_rows["parent"]})
    rows.append({"method": "fp32 fast path (ref, not registered)", **ref_rows["fast"]})
    print(f"parent + reference measured ({time.time() - t0:.0f}s)", flush=True)
    for label in [m.strip() for m in args.methods.split(",") if m.strip()]:
        method, opts = options[label]
        t0 = time.time()
        v = compress(args.name, version, method, settings=s, progress=True, latency_n=args.latency_n, **opts)
        run = registry._client(s).get_run(v.run_id)
        m = run.data.metrics
        rows.append({"method": f"{label} -> {v.ref}", **{k: m[k] for k in m if not k.startswith("parent_")},
                     "wall_s": time.time() - t0})
        print(f"{label}: {v.ref} in {time.time() - t0:.0f}s", flush=True)
    _table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _table(rows) -> None:
    head = ("method", "size bytes", "x smaller", "b1 p50", "b1 p99", "b64 p50", "b64 p99", "speedup b1",
            "NDCG@10", "dNDCG rel", "Recall@10", "top10 overlap")
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    base = rows[0]
    for r in rows:
        sp = base["latency_b1_p50_ms"] / r["latency_b1_p50_ms"]
        d = (r["test_ndcg_at_10"] - base["test_ndcg_at_10"]) / base["test_ndcg_at_10"]
        print(f"| {r['method']} | {int(r['size_bytes']):,} | {base['size_bytes'] / r['size_bytes']:.2f} | "
              f"{r['latency_b1_p50_ms']:.2f} | {r['latency_b1_p99_ms']:.2f} | "
              f"{r['latency_b64_p50_ms']:.1f} | "
              f"{r['latency_b64_p99_ms']:.1f} | {sp:.2f}x | {r['test_ndcg_at_10']:.4f} | {d:+.2%} | "
              f"{r['test_recall_at_10']:.4f} | {r.get('top10_overlap_vs_parent', 1.0):.3f} |")
    for r in rows:
        if "onnx_top10_exact" in r:
            print(f"\n{r['method']}: top-10 identical to torch for {r['onnx_top10_exact']:.1%} of sample "
                  f"users (same set {r['onnx_top10_same_set']:.1%}), "
                  f"max |score diff| {r['onnx_max_abs_diff']:.2e}")
    print("\nlatency in ms per score() call; speedup and deltas vs the parent row of this run (each "
          "compressed "
          "version also logs its own parent measurement, taken in its run)")


if __name__ == "__main__":
    main()
