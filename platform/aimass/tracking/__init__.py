"""MLflow plumbing shared by training, the registry and compression: the embedded store (SQLite + local
artifacts), metric keys, the lineage tags every run and model version carries, and logging a fitted model as
the pyfunc scorer of ``aimass.tracking.pyfunc`` (the family's own files: safetensors/npz + JSON, no pickle).

One place, below training and registry, so that both speak the same names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aimass.settings import Settings

EXPERIMENT = "aimass"
TAG = "aimass."  # prefix of every tag aimass writes on runs and model versions
# What a trained model came from; copied from the run to its registered versions and to compressed children.
LINEAGE = ("family", "dataset", "dataset_version", "dataset_ref", "dataset_hash")


def mlflow_for(settings: Settings):
    """The ``mlflow`` module pointed at the settings' store, with aimass's experiment selected."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        _create_experiment(mlflow, settings)
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def _create_experiment(mlflow, settings: Settings) -> None:
    """Create aimass's experiment in the settings' store, unless another process has: two commands started at
    once on a fresh home both find it missing, and the store refuses the second one's create."""
    from mlflow.exceptions import MlflowException

    where: dict[str, str] = {}
    if not serves_artifacts(settings):  # a store without a server (SQLite, a database URL): artifacts in the home
        artifacts = (settings.home / "mlartifacts").resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        where["artifact_location"] = artifacts.as_uri()
    # else the server's own artifact store (mlflow-artifacts: its --artifacts-destination, an object store): a
    # folder of this machine's home would be unreadable to the serving replicas and jobs of other nodes
    try:
        mlflow.create_experiment(EXPERIMENT, **where)
    except MlflowException:
        # whatever the store calls the refusal (RESOURCE_ALREADY_EXISTS from SQLite, another code through a
        # server), the experiment being there now is all that matters; any other failure leaves it absent
        if mlflow.get_experiment_by_name(EXPERIMENT) is None:
            raise


def serves_artifacts(settings: Settings) -> bool:
    """Whether the tracking store is a server (http, https, databricks), which keeps the artifacts itself."""
    return settings.tracking_uri.split(":", 1)[0].lower() in ("http", "https", "databricks")


def client(settings: Settings):
    from mlflow import MlflowClient

    mlflow_for(settings)
    return MlflowClient(tracking_uri=settings.tracking_uri)


def metric_key(name: str) -> str:
    """MLflow's spelling of a metric name (``val_ndcg@10`` -> ``val_ndcg_at_10``): MLflow refuses ``@``."""
    return name.replace("@", "_at_")


def logged_models(mlflow, run_id: str) -> list[str]:
    """The model URIs a run logged, newest first: a resumed run (and `aimass train auto`'s final candidate,
    which continues its probe's run) logs one model per job, and the last one is the run's model."""
    models = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list",
                                         order_by=[{"field_name": "creation_time", "ascending": False}])
    return [f"models:/{m.model_id}" for m in models]


def lineage_tags(family: str, dataset_info) -> dict[str, str]:
    """The lineage tags of a training run on ``dataset_info`` (an ``aimass.datasets`` version record)."""
    values = {"family": family, "dataset": dataset_info.name, "dataset_version": str(dataset_info.version),
              "dataset_ref": dataset_info.ref, "dataset_hash": dataset_info.content_hash}
    return {f"{TAG}{k}": values[k] for k in LINEAGE}


def lineage_of(tags: dict[str, str]) -> dict[str, str]:
    """The lineage subset of a run's or version's tags (what a child run or a registered version copies)."""
    return {f"{TAG}{k}": tags[f"{TAG}{k}"] for k in LINEAGE if f"{TAG}{k}" in tags}


def log_model(mlflow, model_dir: Path, item_ids: np.ndarray, family: str, example_history: list[int], *,
              model_class=None, **meta):
    """Log the model folder as ``model``, models-from-code: the file that defines ``model_class`` (default
    :class:`aimass.tracking.pyfunc.AimassRecommender`; the registry's compressed scorer subclasses it) is
    the logged code, so loading imports it and reads the folder, never unpickles. ``meta`` joins the family
    in ``family.json``. Returns the ModelInfo (model_uri ``models:/m-...``)."""
    import inspect

    import pandas as pd
    from mlflow.models import infer_signature

    from aimass.tracking.pyfunc import AimassRecommender

    model_class = model_class or AimassRecommender
    ids_file = model_dir.parent / "item_ids.npy"
    np.save(ids_file, np.asarray(item_ids, dtype=np.int64))
    fam = model_dir.parent / "family.json"
    fam.write_text(json.dumps({"family": family, **meta}))
    # an empty history (a first test user with none) would type `history` as Any in the signature: one item then
    example = pd.DataFrame({"history": [list(map(int, example_history)) or [int(item_ids[0])]], "k": [10]})
    output = model_class.from_files(model_dir, ids_file, family).recommend(example)
    try:
        return mlflow.pyfunc.log_model(
            name="model", python_model=inspect.getfile(model_class),
            artifacts={"model": str(model_dir), "item_ids": str(ids_file), "family": str(fam)},
            signature=infer_signature(example, output), input_example=example, pip_requirements=["aimass"])
    finally:
        _forget_code_models()


def _forget_code_models() -> None:
    """Drop what MLflow keeps of the models-from-code it loaded to check the input example: each load imports the
    code file as a new module (``code_model_<uuid>`` in sys.modules) and leaves the model in a global, so the
    checked model (a million-item table) lived as long as the process, one more for each job of a search."""
    import sys

    import mlflow.models.model

    mlflow.models.model.__mlflow_model__ = None
    for name in [n for n in sys.modules if n.startswith("code_model_")]:
        del sys.modules[name]
