from __future__ import annotations

import typer

from aimass.cli._common import JSON, emit, rows, state


def doctor(as_json: bool = JSON):
    """Each component (catalog, data registry, DVC remote, MLflow store, Ray): location, version, health (an
    object-store DVC remote needs DVC's plugin for its scheme, an MLflow server must answer GET /health, a Ray
    address must take a connection); and every serving cluster on this machine whose home is gone (status warn;
    stop them with `aimass deployments shutdown --orphans`). Exits 1 when a component is in error."""
    from aimass.doctor import check

    report = check(state.settings)
    emit(report, as_json, rows(report, ["component", "status", "version", "location", "detail"]))
    if any(c["status"] == "error" for c in report):
        raise typer.Exit(1)
