from __future__ import annotations

import json

import typer

from aimass import console
from aimass.cli._common import JSON, emit, parse_pairs, rows, state
from aimass.settings import shown_url
from aimass.zoo import families, family_class  # the zoo's registry: no model code is imported

runs_app = typer.Typer(no_args_is_help=True)


def train(
    family: str = typer.Argument(None, help=f"Model family: {', '.join(families())}; or auto (model search "
                                            "within --time-budget, the best registered)"),
    dataset: str = typer.Option(None, "--dataset", "-d", help="NAME or NAME@vN"),
    workers: int = typer.Option(None, "--workers", "-w", show_default="1",
                                help="Ray Train workers (0: in this process, Ray Train's local mode)"),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per worker"),
    epochs: int = typer.Option(None, "--epochs", help="Override the family's epochs"),
    time_budget: float = typer.Option(None, "--time-budget", help="Minutes of training at most"),
    param: list[str] = typer.Option(None, "--param", "-p", help="key=value (JSON values), repeatable"),
    resume: str = typer.Option(None, "--resume", help="RUN_ID of a stopped job to continue"),
    max_test_users: int = typer.Option(None, "--max-test-users",
                                       help="Test on a seeded sample of this many users (default: all; auto: "
                                            "20,000)"),
    name: str = typer.Option(None, "--name", help="auto: register the best as this model (default: the "
                                                  "dataset's name)"),
    item_text: bool = typer.Option(None, "--item-text/--no-item-text", help=(
        "MiniLM features of the items' text (default: on for a family that takes them when the items table "
        "has text; encoded once per dataset version, before the budget starts)")),
    as_json: bool = JSON,
):
    """Train a model family on a dataset version with Ray Train, tracked in MLflow."""
    from aimass import training
    from aimass.errors import InvalidInputError

    if family == "auto":
        if not dataset or time_budget is None or resume or param or gpu or item_text is not None:
            raise InvalidInputError("auto wants --dataset and --time-budget, and no --param, --gpu, --item-text "
                                    "or --resume")
        return _auto(dataset, time_budget, 1 if workers is None else workers, epochs, max_test_users, name,
                     as_json)
    if name:
        raise InvalidInputError("--name is for auto (the model the search registers); register a run with "
                                "`aimass models register RUN_ID --name NAME`")
    if resume:
        # the run's job fixes these: silently ignoring one would train something else than was asked
        fixed = [flag for flag, given in (("FAMILY", family), ("--dataset", dataset), ("--param", param),
                                          ("--workers", workers is not None), ("--gpu", gpu),
                                          ("--max-test-users", max_test_users is not None),
                                          ("--item-text", item_text is not None)) if given]
        if fixed:
            raise InvalidInputError(f"--resume continues the run's own job: {', '.join(fixed)} cannot be given "
                                    "with it (only --epochs and --time-budget)")
        training.check_budget(time_budget, "--time-budget")  # before the stage line, as below
        console.stage(f"resuming run {resume} with Ray Train; logs: {console.log_path()}")
        r = training.resume(resume, epochs=epochs, time_budget_min=time_budget, progress=not as_json,
                            settings=state.settings)
    else:
        if not family or not dataset:
            raise InvalidInputError("give FAMILY and --dataset NAME[@vN] (or --resume RUN_ID)")
        params = parse_pairs(param, "--param")
        workers = 1 if workers is None else workers
        # the flags' own checks before any lookup (naming the flag), and the stage line that announces the job
        # after train's checks of the data too: bad input gets one line
        training.check_params(family_class(family), dict(params), epochs)
        training.check_job(state.settings, workers, max_test_users)
        training.check_budget(time_budget, "--time-budget")
        r = training.train(family, dataset, params, workers=workers, gpu=gpu, epochs=epochs,
                           time_budget_min=time_budget, max_test_users=max_test_users, item_text=item_text,
                           progress=not as_json, settings=state.settings, on_start=lambda: console.stage(
                               f"training {family} on {dataset} with Ray Train ({workers} worker(s)), tracked in "
                               f"MLflow; logs: {console.log_path()}"))
    out = {"run_id": r.run_id, "family": r.family, "dataset": r.dataset, "epochs": r.epochs,
           "best_epoch": r.best_epoch, "wall_time_s": round(r.wall_time_s, 1),
           "samples_per_s": round(r.samples_per_s, 1), "model_uri": r.model_uri, "metrics": r.metrics,
           "tracking_uri": shown_url(state.settings.tracking_uri), **({"note": r.note} if r.note else {})}
    if r.members > 1:  # an ensemble (aimass.zoo.sasrec): say so, it costs that much at serving
        out["members"] = r.members
    emit(out, as_json, [f"{k:>14}: {v}" for k, v in out.items() if k != "metrics"]
         + [f"{k:>14}: {v:g}" if k.endswith("_users") or k == "n_parameters" else f"{k:>14}: {v:.4f}"
            for k, v in r.metrics.items()])


def _auto(dataset, budget, workers, epochs, max_test_users, name, as_json):
    from aimass import datasets, models, registry, training
    from aimass.settings import redacted

    registry.check_name(name or dataset.split("@")[0])  # before the budget is spent, not after
    training.check_auto_budget(budget)  # and before the stage line that announces the search
    datasets.get(dataset, settings=state.settings)
    console.stage(f"model search on {dataset} for {budget:g} min: baselines, probes of the neural families, then "
                  f"the best for the rest; logs: {console.log_path()}")
    r = training.auto(dataset, budget, workers=workers, epochs=epochs, max_test_users=max_test_users,
                      progress=not as_json, settings=state.settings)
    failed = None
    try:
        registered = models.register(r.best.run_id, name or r.dataset.split("@")[0], settings=state.settings).ref
    except Exception as e:  # the search's result is still printed (its runs hold the models), then the exit fails
        registered, failed = f"not registered: {redacted(str(e))}", e
    board = [{"rank": i + 1 if c.run_id and c.val_ndcg is not None else "-", "stage": c.stage, "family": c.family,
              "params": json.dumps(c.params) if c.params else "", "val_ndcg@10": _f(c.val_ndcg),
              "test_ndcg@10": _f(c.test_ndcg), "test_hr@10": _f(c.test_recall), "minutes": round(c.wall_time_s / 60, 1),
              "run_id": c.run_id or "", "note": c.skipped or c.note or c.stop_reason}
             for i, c in enumerate(r.leaderboard)]
    out = {"search_id": r.search_id, "dataset": r.dataset, "registered": registered, "best_run_id": r.best.run_id,
           "wall_time_s": r.wall_time_s, "leaderboard": board}
    emit(out, as_json, rows(board, list(board[0])) + [
        f"best: {r.best.family} (val NDCG@10 {r.best.val_ndcg:.4f}), registered: {registered}; the leaderboard is in "
        f"run {r.best.run_id} (leaderboard.json)"])
    if failed is not None:  # a script reading the winner's name must not carry on as if it were registered
        raise failed


def _f(x):
    return "" if x is None else f"{x:.4f}"


@runs_app.command("list")
def list_(as_json: bool = JSON):
    """Training runs, newest first."""
    from aimass import runs

    rs = runs.list_runs(settings=state.settings)
    emit(rs, as_json, rows(rs, ["run_id", "status", "family", "dataset", "val_ndcg_at_10", "test_ndcg_at_10"]))


@runs_app.command()
def show(run_id: str, as_json: bool = JSON):
    """One run: params, metrics, tags, per-epoch history and logged models."""
    from datetime import UTC, datetime

    from aimass import runs

    r = runs.show(run_id, settings=state.settings)
    shown = {k: (datetime.fromtimestamp(v / 1000, UTC).isoformat(timespec="seconds")
                 if k in ("start_time", "end_time") and isinstance(v, int | float) else v) for k, v in r.items()}
    # the times as MLflow keeps them (milliseconds) in JSON, as dates for a person
    emit(r, as_json, [f"{k:>16}: {v}" for k, v in shown.items()])
