"""`aimass deploy` and `aimass deployments ...`: registered versions as REST endpoints on Ray Serve."""
from __future__ import annotations

import typer

from aimass.cli._common import JSON, emit, rows, state

app = typer.Typer(no_args_is_help=True)
_COLS = ["endpoint", "status", "model", "version", "family", "ranker", "proxy", "url"]


def deploy(
    ref: str = typer.Argument(..., help="NAME, NAME/VERSION or NAME@ALIAS (pinned to the version it names)"),
    endpoint: str = typer.Option(..., "--endpoint", "-e", help="Served at http://HOST:PORT/ENDPOINT"),
    ranker: str = typer.Option(None, "--ranker", help="Multi-stage: REF retrieves, RANKER ranks, then rules"),
    min_replicas: int = typer.Option(1, "--min-replicas"),
    max_replicas: int = typer.Option(2, "--max-replicas"),
    target_ongoing_requests: float = typer.Option(8.0, "--target-ongoing-requests",
                                                  help="Autoscaling target per replica"),
    as_json: bool = JSON,
):
    """Deploy a registered model version on Ray Serve (loopback, API keys required)."""
    from aimass import serving

    d = serving.deploy(ref, endpoint, ranker=ranker, min_replicas=min_replicas, max_replicas=max_replicas,
                       target_ongoing_requests=target_ongoing_requests, settings=state.settings)
    emit(d, as_json)


@app.command("list")
def list_(as_json: bool = JSON):
    from aimass import serving

    ds = serving.deployments(settings=state.settings)
    emit(ds, as_json, rows([d.model_dump(mode="json") for d in ds], _COLS))


@app.command()
def show(endpoint: str, as_json: bool = JSON):
    from aimass import serving

    emit(serving.show(endpoint, settings=state.settings), as_json)


@app.command()
def delete(endpoint: str, as_json: bool = JSON):
    """Stop serving ENDPOINT and drop it from the Serve config."""
    from aimass import serving

    emit(serving.delete(endpoint, settings=state.settings), as_json)


@app.command()
def shutdown(as_json: bool = JSON):
    """Stop every deployment and the embedded serving cluster."""
    from aimass import serving

    emit({"stopped": serving.shutdown(settings=state.settings)}, as_json)
