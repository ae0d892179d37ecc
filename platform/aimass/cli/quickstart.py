from __future__ import annotations

import typer

from aimass.cli._common import JSON, emit, state


def quickstart(
    users: int = typer.Option(1000, help="Demo users"),
    tracks: int = typer.Option(2000, help="Demo tracks"),
    family: str = typer.Option("sasrec", help="Model family to train"),
    time_budget: float = typer.Option(3.0, "--time-budget", help="Minutes of training at most"),
    workers: int = typer.Option(1, "--workers", help="Ray Train workers"),
    as_json: bool = JSON,
):
    """The main job, end to end on the embedded default: demo dataset -> DVC registry -> Ray Train -> MLflow."""
    from aimass import datasets, training

    s = state.settings
    say = (lambda *_: None) if as_json else typer.echo
    say(f"[1/3] generating the demo music-streaming log ({users} users, {tracks} tracks)")
    inter, items = datasets.generate_demo(s.home / "demo-data", datasets.DemoConfig(users=users, tracks=tracks))
    say("[2/3] registering it in the DVC data registry")
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
    if not as_json:
        for k, val in summary.items():
            typer.echo(f"{k:>16}: {val}")
    say(f"[3/3] training {family} on {v.ref} with Ray Train ({workers} worker(s), at most {time_budget} min), "
        "tracked in MLflow")
    r = training.train(family, v.ref, workers=workers, time_budget_min=time_budget, progress=not as_json,
                       settings=s)
    run = {"run_id": r.run_id, "family": r.family, "epochs": r.epochs, "best_epoch": r.best_epoch,
           "wall_time_s": round(r.wall_time_s, 1), "model_uri": r.model_uri,
           **{k: round(val, 4) for k, val in r.metrics.items()}}
    if as_json:
        emit({"dataset": summary, "training": run, "tracking_uri": s.tracking_uri}, True)
        return
    for k, val in run.items():
        typer.echo(f"{k:>20}: {val}")
    typer.echo(f"\nMLflow run {r.run_id} in {s.tracking_uri}; browse it with\n"
               f"  .venv/bin/mlflow ui --backend-store-uri {s.tracking_uri} --host 127.0.0.1 --port 5000")
