from __future__ import annotations

import typer

from aimass import console
from aimass.cli._common import JSON, emit, parse_pairs, rows, state
from aimass.models import METHODS  # aimass.cli imports the aimass package, so this costs nothing more

app = typer.Typer(no_args_is_help=True)
_COLS = ["ref", "aliases", "family", "method", "parent_version", "dataset", "test_ndcg_at_10", "run_id"]


def _row(v) -> dict:
    return {**v.model_dump(mode="json"), "ref": v.ref, "aliases": ",".join(v.aliases),
            "test_ndcg_at_10": f"{v.metrics.get('test_ndcg_at_10', float('nan')):.4f}"}


@app.command()
def register(run_id: str, name: str = typer.Option(..., "--name", "-n"), as_json: bool = JSON):
    """Register the model a training run logged as the next version of NAME."""
    from aimass import registry

    v = registry.register(run_id, name, settings=state.settings)
    emit(v, as_json, rows([_row(v)], _COLS))


@app.command("list")
def list_(as_json: bool = JSON):
    from aimass import registry

    ms = registry.list_models(settings=state.settings)
    emit(ms, as_json, rows([{**m, "aliases": ", ".join(f"{a}={v}" for a, v in m["aliases"].items())}
                            for m in ms], ["name", "versions", "latest", "aliases"]))


@app.command()
def show(ref: str, as_json: bool = JSON):
    """NAME (latest), NAME/VERSION or NAME@ALIAS."""
    from aimass import registry

    emit(registry.get(ref, settings=state.settings), as_json)


@app.command()
def versions(name: str, as_json: bool = JSON):
    from aimass import registry

    vs = registry.versions(name, settings=state.settings)
    emit(vs, as_json, rows([_row(v) for v in vs], _COLS))


@app.command()
def promote(
    name: str,
    version: int,
    alias: str = typer.Option("champion", "--alias"),
    force: bool = typer.Option(False, "--force", help="Promote even if the gate fails (recorded as a tag)"),
    tolerance: float = typer.Option(0.01, help="Relative quality drop allowed vs the champion"),
    latency_budget_ms: float = typer.Option(50.0, help="p99 scoring latency at batch 1, CPU"),
    as_json: bool = JSON,
):
    """Point ALIAS at VERSION after the promotion gate (quality vs champion, same dataset, latency)."""
    from aimass import registry

    p = registry.promote(name, version, alias=alias, force=force, tolerance=tolerance,
                         latency_budget_ms=latency_budget_ms, settings=state.settings)
    emit(p, as_json, [f"{name}/{version} is now {alias}" + (" (forced)" if p.forced else "")
                      + (f", was {p.previous}" if p.previous else "")]
         + [f"  {'pass' if c.passed else 'FAIL'} {c.check}: {c.detail}" for c in p.checks])


@app.command()
def compress(
    name: str,
    version: int,
    method: str = typer.Option(..., "--method", "-m", help=", ".join(METHODS)),
    option: list[str] = typer.Option(None, "--option", "-o", help="key=value (JSON values), repeatable"),
    as_json: bool = JSON,
):
    """Make a smaller version of NAME/VERSION; it is registered with VERSION as its parent."""
    from aimass import models, registry

    options = parse_pairs(option, "--option")
    _check_options(options)
    # the SDK's own checks (method, its options, the family's fit), so bad input gets one line, no stage line
    parent = registry.get(f"{name}/{version}", settings=state.settings)
    registry.check_compression(parent.family, method, parent=parent, **options)
    console.stage(f"compressing {name}/{version} with {method}; logs: {console.log_path()}")
    v = models.compress(name, version, method, progress=not as_json, settings=state.settings, **options)
    emit(v, as_json, rows([_row(v)], _COLS) + [f"  {k}: {val:.4f}" for k, val in sorted(v.metrics.items())])


def _check_options(options: dict) -> None:
    """-o names that are the compress calls' own arguments would collide with them (a TypeError, not a
    message): refused, named."""
    import inspect

    from aimass import models, registry
    from aimass.errors import InvalidInputError

    own = {p.name for f in (models.compress, registry.check_compression)
           for p in inspect.signature(f).parameters.values() if p.kind is not p.VAR_KEYWORD}
    taken = sorted(own & set(options))
    if taken:
        raise InvalidInputError(f"--option {', '.join(taken)}: not a compression option (the command sets it "
                                "from its arguments); drop it, see registry/README.md for each method's options")
