from __future__ import annotations

import typer

from aimass.cli._common import JSON, emit, rows, state


def quickstart(
    users: int = typer.Option(1000, help="Demo users"),
    tracks: int = typer.Option(2000, help="Demo tracks"),
    as_json: bool = JSON,
):
    """The main job, end to end on the embedded default: make the demo dataset, register it, summarise it."""
    from aimass import datasets

    s = state.settings
    say = (lambda *_: None) if as_json else typer.echo
    say(f"[1/2] generating the demo music-streaming log ({users} users, {tracks} tracks)")
    inter, items = datasets.generate_demo(s.home / "demo-data", datasets.DemoConfig(users=users, tracks=tracks))
    say("[2/2] registering it in the DVC data registry")
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
    emit(summary, as_json, [f"{k:>16}: {val}" for k, val in summary.items()])
