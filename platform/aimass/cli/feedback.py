"""`aimass feedback ingest|list|stats`: the endpoints' feedback logs. Ingest appends a file of events (CSV,
JSON lines or Parquet), checked whole before anything is stored: all rows or, on the first bad one, none."""
from __future__ import annotations

from pathlib import Path

import typer

from aimass.cli._common import JSON, emit, rows, state

app = typer.Typer(no_args_is_help=True)
_COLS = ["seq", "event_id", "user_id", "item_id", "type", "value", "timestamp", "request_id"]


@app.command()
def ingest(path: Path = typer.Argument(..., help="Events file: .csv, .jsonl or .parquet with columns event_id, "
                                                  "user_id, item_id, type, timestamp[, value, request_id]"),
           endpoint: str = typer.Option(..., "--endpoint", "-e", help="The deployed endpoint they belong to"),
           as_json: bool = JSON):
    """Append a file of events to an endpoint's log (repeated event ids are stored once)."""
    from aimass import console, events, serving

    serving.check_deployed(endpoint, settings=state.settings)
    console.stage(f"ingesting {path}")
    r = events.ingest(path, endpoint, settings=state.settings)
    emit(r, as_json, [f"{r.stored} events stored, {r.duplicates} duplicates skipped, from {r.rows} rows in "
                      f"{r.seconds:.2f} s ({r.events_per_s:,.0f} events/s)"])


@app.command("list")
def list_(endpoint: str, limit: int = typer.Option(20, "--limit", "-n", min=1, max=10_000), as_json: bool = JSON):
    """The endpoint's latest events, newest first."""
    from aimass import events, serving

    serving.check_deployed(endpoint, settings=state.settings)
    es = events.list_events(endpoint, limit=limit, settings=state.settings)
    emit(es, as_json, rows([e.model_dump(mode="json") for e in es], _COLS))


@app.command()
def stats(endpoint: str, as_json: bool = JSON):
    """Counts of the endpoint's log: by type and polarity, users, items, unjoined request ids."""
    from aimass import events, serving

    serving.check_deployed(endpoint, settings=state.settings)
    emit(events.stats(endpoint, settings=state.settings), as_json)
