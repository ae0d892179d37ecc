"""Training runs as recorded in MLflow: list and show, in plain dicts for the CLI and scripts."""
from __future__ import annotations

import json

from aimass.errors import BackendError, InvalidInputError, NotFoundError
from aimass.evaluation import metric_name
from aimass.settings import Settings, default_settings, error_line
from aimass.tracking import logged_models, metric_key


def _summary(run) -> dict:
    tags, d = run.data.tags, run.data
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "family": tags.get("aimass.family"),
        "dataset": tags.get("aimass.dataset_ref"),
        "dataset_hash": tags.get("aimass.dataset_hash"),
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "error": tags.get("aimass.error"),  # why a FAILED run failed, as training kept it
        "test_ndcg_at_10": d.metrics.get(metric_key(metric_name("test", "ndcg"))),
        "val_ndcg_at_10": d.metrics.get(metric_key(metric_name("best_val", "ndcg"))),
    }


def list_runs(*, settings: Settings | None = None, max_results: int = 100) -> list[dict]:
    from aimass.tracking import EXPERIMENT, mlflow_for

    # mlflow.search_runs pages through more than a store's page limit itself: only the lower bound is ours
    if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 1:
        raise InvalidInputError(f"max_results must be a whole number of at least 1, got {max_results!r}")

    mlflow = mlflow_for(settings or default_settings())
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], max_results=max_results, output_format="list",
                              order_by=["attributes.start_time DESC"])
    return [_summary(r) for r in runs]


def show(run_id: str, *, settings: Settings | None = None) -> dict:
    from aimass.tracking import mlflow_for

    mlflow = mlflow_for(settings or default_settings())
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.get_run(run_id)
    except MlflowException as e:
        # a run that is not there (or an id that cannot be one) is not found; a store that failed is not that
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise NotFoundError(f"no training run {run_id!r}") from None
        raise BackendError(f"reading training run {run_id!r} failed: {error_line(e)}") from None
    except Exception as e:  # the store itself (a server away, a locked database)
        raise BackendError(f"reading training run {run_id!r} failed: {error_line(e)}") from None
    client = mlflow.MlflowClient()
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
               for k in run.data.metrics if k in ("loss", metric_key(metric_name("val", "ndcg")))}
    models = logged_models(mlflow, run_id)
    return {**_summary(run), "params": run.data.params, "metrics": run.data.metrics,
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")
                     and k != "aimass.job"},
            "job": json.loads(run.data.tags.get("aimass.job", "null") or "null"),
            "history": history, "models": models,
            **({"leaderboard": _leaderboard(mlflow, run_id)} if "aimass.auto.rank" in run.data.tags else {})}


def _leaderboard(mlflow, run_id: str) -> list[dict] | None:
    """The model search's ranking, kept in the winning run (aimass train auto); None on the others."""
    try:
        return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/leaderboard.json"))["leaderboard"]
    except Exception:  # a candidate that did not win has no leaderboard of its own
        return None
