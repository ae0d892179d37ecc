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
    """Deploy a registered model version on Ray Serve (loopback, API keys required). Prints one line (the
    deployment as JSON with --json); a deploy that fails stops the serving cluster if it started it."""
    from aimass import serving

    d = serving.deploy(ref, endpoint, ranker=ranker, min_replicas=min_replicas, max_replicas=max_replicas,
                       target_ongoing_requests=target_ongoing_requests, settings=state.settings)
    what = f"{d.model}/{d.version} ({d.family})" + (f" ranked by {d.ranker}" if d.ranker else "")
    scheduler = schedule(state.settings)
    emit(d, as_json, [f"deployed {what} at {d.url} ({d.status}; {d.min_replicas}-{d.max_replicas} replicas, "
                      f"{d.proxy} proxy; POST {d.url}/recommend with 'Authorization: Bearer <key>'); {scheduler}"])


def schedule(settings) -> str:
    """Start (or update) the drift/retrain scheduler in the serving cluster; a line saying what it does. The
    endpoint serves whether or not it starts, so a failure is reported, not raised."""
    import logging

    from aimass import retraining

    try:
        retraining.start_in_cluster(settings)
    except Exception:
        logging.getLogger("aimass").exception("the scheduler did not start")
        return "warning: the drift/retrain scheduler did not start (see the log)"
    drift = f"every {settings.monitor_interval_s:g} s" if settings.monitor_interval_s else "off"
    triggers = [t for t, on in (("schedule", settings.retrain_interval_s), ("volume", settings.retrain_min_events),
                                ("drift", settings.retrain_on_drift)) if on]
    return f"scheduler: drift reports {drift}; retraining triggers: {', '.join(triggers) or 'none'}"


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
def shutdown(orphans: bool = typer.Option(False, "--orphans", help=(
        "Instead: stop every serving cluster on this machine whose home folder is gone (what `aimass doctor` "
        "lists as orphaned)")), as_json: bool = JSON):
    """Stop every deployment and the embedded serving cluster of this home, every process of it."""
    from aimass import serving

    if orphans:
        stopped = serving.shutdown_orphans()
        emit({"stopped": stopped}, as_json, [f"stopped the serving cluster of {o['home']} (pids "
                                             f"{' '.join(map(str, o['pids']))})" for o in stopped]
             or ["no orphaned serving cluster"])
        return
    done = serving.shutdown(settings=state.settings)
    emit({"stopped": done}, as_json, ["stopped the serving cluster" if done else "no serving cluster was running"])
