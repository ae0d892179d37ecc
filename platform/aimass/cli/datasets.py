from __future__ import annotations

from pathlib import Path

import typer

from aimass.cli._common import JSON, demo_config, emit, rows, state

app = typer.Typer(no_args_is_help=True)
_COLS = ["ref", "n_rows", "n_users", "n_items", "format", "content_hash", "created_at"]


def _summary(v) -> list[str]:
    d = v.model_dump(mode="json")
    d["ref"] = v.ref
    d["content_hash"] = v.content_hash[:12]
    return rows([d], _COLS)


@app.command()
def register(
    name: str,
    path: Path,
    format: str = typer.Option(..., "--format", "-f", help="ml1m-seq, sasrec, movielens-meta, lastfm, csv, parquet"),
    items: Path = typer.Option(None, "--items", help="Optional items file (csv/parquet, or movies.dat)"),
    columns: str = typer.Option(None, "--columns", help="csv/parquet: the file's names for the canonical "
                                "columns, e.g. userId=user_id,movieId=item_id,rating=value (X=- leaves X out)"),
    as_json: bool = JSON,
):
    """Register PATH as the next version of NAME (identical content returns the existing version)."""
    from aimass import datasets
    from aimass.datasets import parse_columns

    v = datasets.register(name, path, format, items=items, columns=parse_columns(columns) if columns else None,
                          settings=state.settings)
    emit(v, as_json, _summary(v))


@app.command("list")
def list_(as_json: bool = JSON):
    """The latest version of every dataset."""
    from aimass import datasets

    vs = datasets.list(settings=state.settings)
    emit(vs, as_json, rows([{**v.model_dump(mode="json"), "ref": v.ref, "content_hash": v.content_hash[:12]}
                            for v in vs], _COLS))


@app.command()
def show(ref: str, as_json: bool = JSON):
    """One version: NAME (latest) or NAME@vN."""
    from aimass import datasets

    emit(datasets.get(ref, settings=state.settings), as_json)


@app.command()
def versions(name: str, as_json: bool = JSON):
    from aimass import datasets

    vs = datasets.versions(name, settings=state.settings)
    emit(vs, as_json, rows([{**v.model_dump(mode="json"), "ref": v.ref, "content_hash": v.content_hash[:12]}
                            for v in vs], _COLS))


@app.command()
def pull(ref: str, out: Path = typer.Option(None, "--out", help="Destination folder"), as_json: bool = JSON):
    """Fetch a version's canonical Parquet files (from the DVC remote when not cached)."""
    from aimass import datasets

    info = datasets.get(ref, settings=state.settings)  # once: NAME could name a newer version a second time
    path = datasets.pull(info.ref, out, settings=state.settings)
    emit({"ref": info.ref, "path": str(path),
          "files": sorted(p.name for p in path.iterdir() if not p.name.startswith("."))}, as_json)


@app.command("generate-demo")
def generate_demo(
    out: Path,
    users: int = typer.Option(1000, help="Number of users"),
    tracks: int = typer.Option(2000, help="Number of tracks"),
    mean_history: float = typer.Option(40.0, help="Median plays per user (the mean is about 1.2x)"),
    seed: int = typer.Option(0),
    as_json: bool = JSON,
):
    """Write the built-in music-streaming demo dataset (interactions.csv, items.csv) to OUT."""
    from aimass.datasets import generate_demo as gen

    cfg = demo_config(users=users, tracks=tracks, mean_history=mean_history, seed=seed)
    inter, items = gen(out, cfg)
    emit({"interactions": str(inter), "items": str(items), "config": cfg.model_dump()}, as_json)
