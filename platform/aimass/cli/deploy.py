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
    upscale_delay: float = typer.Option(10.0, "--upscale-delay",
                                        help="Seconds the autoscaler must want more replicas before adding them"),
    downscale_delay: float = typer.Option(60.0, "--downscale-delay",
                                          help="Seconds the autoscaler must want fewer replicas before removing "
                                               "them"),
    as_json: bool = JSON,
):
    """Deploy a registered model version on Ray Serve (loopback, API keys required). Prints one line (the
    deployment as JSON with --json, plus `scheduler`: the scheduler's line); a deploy that fails stops the
    serving cluster if it started it."""
    from aimass import serving

    d = serving.deploy(ref, endpoint, ranker=ranker, min_replicas=min_replicas, max_replicas=max_replicas,
                       target_ongoing_requests=target_ongoing_requests, upscale_delay_s=upscale_delay,
                       downscale_delay_s=downscale_delay, settings=state.settings)
    what = f"{d.model}/{d.version} ({d.family})" + (f" ranked by {d.ranker}" if d.ranker else "")
    scheduler = schedule(state.settings)
    # in the JSON too: a script must see the warning that the scheduler did not start, as a person does
    emit({**d.model_dump(mode="json"), "scheduler": scheduler}, as_json,
         [f"deployed {what} at {d.url} ({d.status}; {d.min_replicas}-{d.max_replicas} replicas, "
          f"scaling up after {upscale_delay:g} s and down after {downscale_delay:g} s, "
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
def show(endpoint: str, decisions: int = typer.Option(10, "--decisions",
                                                      help="How many recent scaling decisions to show"),
         as_json: bool = JSON):
    """The deployment, what Serve runs for it now (replicas, ongoing requests per replica, the autoscaling
    target and bounds) and its last scaling decisions. With --json: the deployment's fields plus `scaling`."""
    from aimass import serving

    d = serving.show(endpoint, settings=state.settings)
    scaling = serving.scaling(endpoint, settings=state.settings, limit=decisions)
    data = {**d.model_dump(mode="json"), "scaling": scaling}
    if as_json:
        emit(data, True)
        return
    lines = [f"{k:>23}: {v}" for k, v in d.model_dump(mode="json").items()]
    emit(data, False, lines + [""] + _scaling_lines(scaling))


def _num(v, unit: str = "") -> str:
    return "-" if v is None else f"{v:g}{unit}"


def _scaling_lines(sc: dict) -> list[str]:
    """The snapshot as one row per deployment, then the decisions as a small table."""
    if not sc.get("running"):
        out = ["replicas: the serving cluster is not running"]
    elif sc.get("status") == "UNKNOWN" and not sc.get("deployments"):
        out = ["replicas: Serve's controller did not answer (restarting or busy): try again"]
    elif not sc.get("deployments"):
        out = [f"replicas: Serve runs no application {sc['endpoint']!r}"]
    else:
        table = []
        for x in sc["deployments"]:
            ongoing = x.get("ongoing")
            table.append({
                "deployment": x["deployment"], "status": x.get("status") or "-",
                "replicas": f"{x['replicas']}" + (f" (target {x['target_replicas']})"
                                                  if x.get("target_replicas") not in (None, x["replicas"]) else ""),
                "bounds": f"{_num(x.get('min_replicas'))}-{_num(x.get('max_replicas'))}",
                # live counts, one per running replica; '?' for one that did not answer
                "ongoing now": " ".join("?" if v is None else str(v) for v in ongoing.values()) if ongoing else "-",
                "autoscaler/replica": _num(x.get("autoscaler_ongoing_per_replica")),
                "target/replica": _num(x.get("target_ongoing_requests")),
                "delays up/down": f"{_num(x.get('upscale_delay_s'), 's')}/{_num(x.get('downscale_delay_s'), 's')}",
            })
        out = rows(table, ["deployment", "status", "replicas", "bounds", "ongoing now", "autoscaler/replica",
                           "target/replica", "delays up/down"])
    events = [{"at": e["at"][:19].replace("T", " "), "deployment": e["deployment"],
               "replicas": f"{e['replicas_from']} -> {e['replicas_to']}", "trigger": e.get("trigger") or "-",
               "ongoing/replica": _num(e.get("ongoing_per_replica"))} for e in sc.get("decisions") or []]
    out += ["", "last scaling decisions (UTC, newest first):" if events else "no scaling decisions recorded"]
    if events:
        out += rows(events, ["at", "deployment", "replicas", "trigger", "ongoing/replica"])
    return out


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
