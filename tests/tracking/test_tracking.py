"""aimass's MLflow experiment (aimass.tracking.mlflow_for) on the embedded store (SQLite in the home)."""
from __future__ import annotations

import pytest


def test_an_experiment_another_process_just_created_is_used_not_an_error(settings):
    """Two commands started at once on a fresh home both find the experiment missing; the one that creates it
    second is refused by the store, and must go on with the one the other made."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from aimass import tracking

    settings.home.mkdir(parents=True)
    other = MlflowClient(tracking_uri=settings.tracking_uri)  # the process that won the race
    made = other.create_experiment(tracking.EXPERIMENT)
    mlflow.set_tracking_uri(settings.tracking_uri)
    with pytest.raises(MlflowException):  # what the second create meets: the race itself
        mlflow.create_experiment(tracking.EXPERIMENT)

    tracking._create_experiment(mlflow, settings)
    assert tracking.mlflow_for(settings).get_experiment_by_name(tracking.EXPERIMENT).experiment_id == made
    assert [e.name for e in other.search_experiments()].count(tracking.EXPERIMENT) == 1


def test_the_experiment_is_created_once_with_its_artifacts_in_the_home(settings):
    from aimass import tracking

    exp = tracking.mlflow_for(settings).get_experiment_by_name(tracking.EXPERIMENT)
    assert exp.artifact_location == (settings.home / "mlartifacts").resolve().as_uri()
    assert tracking.mlflow_for(settings).get_experiment_by_name(tracking.EXPERIMENT).experiment_id == exp.experiment_id


def test_a_logged_models_signature_types_the_history_even_from_an_empty_example(settings, tmp_path):
    """The example history is the first test user's; one with none typed `history` as Any, which any input
    passes."""
    import numpy as np

    from aimass import tracking
    from aimass.zoo import family_class

    est = family_class("popularity")()
    est.fit([np.array([1, 2, 3]), np.array([2, 3])], 3)
    folder = tmp_path / "job" / "model"
    est.save(folder)
    mlflow = tracking.mlflow_for(settings)
    loaded = _code_models()
    with mlflow.start_run():
        info = tracking.log_model(mlflow, folder, np.array([10, 20, 30]), "popularity", [])
    history = next(c for c in info.signature.inputs.inputs if c.name == "history")
    assert "long" in str(history.type), history
    # MLflow loaded the model from its code to check the example; nothing of that outlives the logging (a
    # process that trains job after job, as a search does, kept every job's model: a million-item table each)
    import gc

    gc.collect()
    assert _code_models() <= loaded
    made = [o for o in gc.get_objects() if str(type(o).__module__).startswith("code_model_")]
    assert not [o for o in made if type(o).__module__ not in loaded]


def _code_models() -> set[str]:
    """The modules MLflow made of models-from-code it loaded (one per load)."""
    import sys

    return {n for n in sys.modules if n.startswith("code_model_")}
