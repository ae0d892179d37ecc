"""MLflow: the embedded store (SQLite + local artifacts), runs, and the logged model (a custom pyfunc holding
the family's own files: weights as safetensors/npz + JSON config, no pickle)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from aimass.settings import Settings

EXPERIMENT = "aimass"
PYFUNC_CODE = Path(__file__).with_name("_pyfunc.py")


def mlflow_for(settings: Settings):
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        artifacts = (settings.home / "mlartifacts").resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def metric_key(name: str) -> str:
    return name.replace("@", "_at_")


def log_model(mlflow, model_dir: Path, item_ids: np.ndarray, family: str, example_history: list[int]):
    """Log the fitted model as `model`; returns the ModelInfo (model_uri `models:/m-...`)."""
    from mlflow.models import infer_signature

    ids_file = model_dir.parent / "item_ids.npy"
    np.save(ids_file, np.asarray(item_ids, dtype=np.int64))
    example = pd.DataFrame({"history": [list(map(int, example_history))], "k": [10]})
    from aimass.training._pyfunc import AimassRecommender

    rec = AimassRecommender.from_files(model_dir, ids_file, family)
    output = rec.recommend(example)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_CODE),
        artifacts={"model": str(model_dir), "item_ids": str(ids_file),
                   "family": str(_write(model_dir.parent / "family.json", {"family": family}))},
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=["aimass"],
    )


def _write(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj))
    return path
