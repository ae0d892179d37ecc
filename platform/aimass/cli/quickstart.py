from __future__ import annotations

import typer

from aimass import console
from aimass.cli._common import JSON, emit, rows, state

# what a newcomer reads in the summary; every metric is in the MLflow run and in --json
_SHOWN = {"best_val_ndcg@10": "val NDCG@10", "test_ndcg@10": "test NDCG@10", "test_recall@10": "Recall@10",
          "test_mrr": "MRR"}


def quickstart(
    users: int = typer.Option(1000, help="Demo users"),
    tracks: int = typer.Option(2000, help="Demo tracks"),
    family: str = typer.Option("sasrec", help="Model family to train"),
    time_budget: float = typer.Option(3.0, "--time-budget", help="Minutes of training at most"),
    workers: int = typer.Option(1, "--workers", help="Ray Train workers"),
    as_json: bool = JSON,
):
    """The main job, end to end on the embedded default: demo dataset -> DVC registry -> Ray Train -> MLflow."""
    from aimass import datasets, models, serving, training
    from aimass.errors import ConflictError

    s = state.settings
    console.stage(f"[1/6] generating the demo music-streaming log ({users} users, {tracks} tracks)")
    inter, items = datasets.generate_demo(s.home / "demo-data", datasets.DemoConfig(users=users, tracks=tracks))
    console.stage("[2/6] registering it in the DVC data registry")
    v = datasets.register("demo", inter, "csv", items=items, settings=s)
    ds = datasets.load(v.ref, settings=s)
    i = ds.interactions
    per_user = i.groupby("user_id").size()
    summary = {
        "dataset": v.ref,
        "content_hash": v.content_hash,
        "interactions": v.n_rows,
        "users": v.n_users,
        "items": v.n_items,
        "events": i["event"].value_counts().to_dict(),
        "history_length": {"min": int(per_user.min()), "median": float(per_user.median()),
                           "max": int(per_user.max())},
        "time_span_days": round((i["timestamp"].max() - i["timestamp"].min()) / 86_400, 1),
        "top_genres": ds.items.set_index("item_id").loc[i["item_id"], "genre"].value_counts().head(5).to_dict(),
        "registry": str(s.registry_path),
        "git_tag": v.git_tag,
    }
    console.stage(f"[3/6] training {family} on {v.ref} with Ray Train ({workers} worker(s), at most {time_budget} "
                  "min), tracked in MLflow")
    r = training.train(family, v.ref, workers=workers, time_budget_min=time_budget, progress=not as_json,
                       settings=s)
    run = {"run_id": r.run_id, "family": r.family, "epochs": r.epochs, "best_epoch": r.best_epoch,
           "wall_time_s": round(r.wall_time_s, 1), "model_uri": r.model_uri,
           **{k: round(val, 4) for k, val in r.metrics.items()}}
    name = f"demo-{family}"
    console.stage(f"[4/6] registering the run as model {name!r} in the MLflow registry and promoting it to "
                  "champion")
    mv = models.register(r.run_id, name, settings=s)
    try:
        promotion = models.promote(name, mv.version, settings=s).model_dump(mode="json")
    except ConflictError as e:
        if any("champion" in other.aliases for other in models.versions(name, settings=s)):
            # a rerun whose model is worse than the champion: the gate keeps the old one
            promotion = {"promoted": False, "reason": str(e)}
        else:  # no champion yet, and this one failed only the latency budget (a busy machine): the demo
            # needs a champion to serve, so it is forced, which the version's tags record
            console.stage(f"      {e}; forcing it: there is no champion yet")
            promotion = models.promote(name, mv.version, force=True, settings=s).model_dump(mode="json")
    console.stage(f"[5/6] compressing {mv.ref} to int8 (a child version, evaluated on the same split)")
    small = models.compress(name, mv.version, "int8", progress=not as_json, settings=s)
    side = [_side(models.show(mv.ref, settings=s), small.metrics, "parent_"), _side(small, small.metrics, "")]
    console.stage(f"[6/6] deploying {name}@champion on Ray Serve at {s.host} with a new demo API key")
    key, _ = serving.create_key("demo", settings=s)
    d = serving.deploy(f"{name}@champion", endpoint="demo", settings=s)
    curl = serving.curl_example(d, key, user_id=int(i["user_id"].iloc[0]))
    if as_json:
        emit({"dataset": summary, "training": run, "tracking_uri": s.tracking_uri, "promotion": promotion,
              "models": side, "deployment": d.model_dump(mode="json"), "api_key": key, "curl": curl}, True)
        return
    console.stage(f"logs: {console.log_path()}")
    metrics = ", ".join(f"{label} {r.metrics[k]:.4f}" for k, label in _SHOWN.items() if k in r.metrics)
    console.result("\n".join([
        "",
        f"dataset  {v.ref}: {v.n_rows:,} plays by {v.n_users:,} users of {v.n_items:,} tracks",
        f"model    {mv.ref} from MLflow run {r.run_id} ({r.epochs} epochs, {r.wall_time_s:.0f} s): {metrics}",
        "",
        *rows(side, list(side[0])),
        *([f"champion unchanged: {promotion['reason']}"] if not promotion["promoted"] else []),
        "",
        f"MLflow   .venv/bin/mlflow ui --backend-store-uri {s.tracking_uri} --host 127.0.0.1 --port 5000",
        f"API      {d.url} (OpenAPI: {d.url}/docs.json)",
        f"API key  {key} (shown once; stored hashed)",
        "Try it:",
        f"  {curl}",
        "Stop serving: .venv/bin/aimass deployments shutdown",
    ]))


def _side(v, m: dict, prefix: str) -> dict:
    """One row of the parent-vs-int8 table, from the compression's own measurements of both."""
    return {"version": v.ref, "method": v.method, "aliases": ",".join(v.aliases) or "-",
            "size_bytes": int(m[f"{prefix}size_bytes"]), "test_ndcg@10": round(m[f"{prefix}test_ndcg_at_10"], 4),
            "p50_b1_ms": round(m[f"{prefix}latency_b1_p50_ms"], 2),
            "p99_b1_ms": round(m[f"{prefix}latency_b1_p99_ms"], 2),
            "p50_b64_ms": round(m[f"{prefix}latency_b64_p50_ms"], 2)}
