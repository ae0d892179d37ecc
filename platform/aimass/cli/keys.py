"""`aimass keys create|list|revoke`: API keys for the served endpoints. A key is printed once, at creation;
only its hash is stored."""
from __future__ import annotations

import typer

from aimass.cli._common import JSON, emit, rows, state

app = typer.Typer(no_args_is_help=True)
_COLS = ["key_id", "name", "role", "created_at", "revoked_at"]


@app.command()
def create(name: str, admin: bool = typer.Option(False, "--admin", help="Also allowed on admin routes"),
           as_json: bool = JSON):
    """Create a key; it is shown only now: store it."""
    from aimass import serving

    key, row = serving.create_key(name, "admin" if admin else "consumer", settings=state.settings)
    emit({"key": key, **row.model_dump(mode="json")}, as_json,
         [f"key: {key}", f"id: {row.key_id} ({row.role}); shown only once: store it now"])


@app.command("list")
def list_(include_revoked: bool = typer.Option(False, "--all", help="Also revoked keys"),
          as_json: bool = JSON):
    from aimass import serving

    ks = serving.list_keys(include_revoked=include_revoked, settings=state.settings)
    emit(ks, as_json, rows([k.model_dump(mode="json") for k in ks], _COLS))


@app.command()
def revoke(key_id: str, as_json: bool = JSON):
    """Revoke by key id; endpoints refuse it within a second."""
    from aimass import serving

    emit(serving.revoke_key(key_id, settings=state.settings), as_json)
