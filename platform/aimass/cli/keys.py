"""`aimass keys create|list|revoke`: API keys for the served endpoints. A key is printed once, at creation;
only its hash is stored."""
from __future__ import annotations

import typer

from aimass.cli._common import JSON, emit, rows, seconds, state

app = typer.Typer(no_args_is_help=True)
_COLS = ["key_id", "name", "role", "endpoints", "created_at", "expires_at", "revoked_at"]


@app.command()
def create(name: str, admin: bool = typer.Option(False, "--admin", help="Also allowed on admin routes"),
           endpoint: list[str] = typer.Option(None, "--endpoint", help=(
               "Only this endpoint (repeat for several); other endpoints answer 403. Default: every endpoint")),
           expires_in: str = typer.Option(None, "--expires-in", help="Ends after this long: 90s, 30m, 12h, 30d, 1w"),
           as_json: bool = JSON):
    """Create a key; it is shown only now: store it."""
    from aimass import serving

    ttl = seconds(expires_in, "--expires-in") if expires_in is not None else None
    key, row = serving.create_key(name, "admin" if admin else "consumer", endpoints=endpoint or None,
                                  expires_in_s=ttl, settings=state.settings)
    bounds = [f"endpoints {row.endpoints.replace(',', ', ')}" if row.endpoints else "every endpoint",
              *([f"expires {row.expires_at:%Y-%m-%d %H:%M} UTC"] if row.expires_at else [])]
    try:
        emit({"key": key, **row.model_dump(mode="json")}, as_json,
             [f"key: {key}", f"id: {row.key_id} ({row.role}; {', '.join(bounds)}); shown only once: store it now"])
    except BaseException:  # never shown (a full disk, a closed pipe): no one holds it, so it must not stay valid
        serving.revoke_key(row.key_id, settings=state.settings)
        raise


@app.command("list")
def list_(include_revoked: bool = typer.Option(False, "--all", help="Also revoked and expired keys"),
          as_json: bool = JSON):
    from aimass import serving

    ks = serving.list_keys(include_revoked=include_revoked, settings=state.settings)
    emit(ks, as_json, rows([k.model_dump(mode="json") for k in ks], _COLS))


@app.command()
def revoke(key_id: str, as_json: bool = JSON):
    """Revoke by key id; endpoints refuse it within a second."""
    from aimass import serving

    emit(serving.revoke_key(key_id, settings=state.settings), as_json)
