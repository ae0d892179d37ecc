"""aimass: model-as-a-service for recommendation and search models.

The SDK's public face. Everything a data scientist calls is re-exported here; the modules behind it are
private.
"""
from aimass import admin, dashboard, datasets, events, experiments, models, monitoring, retraining, runs, serving
from aimass.errors import AimassError
from aimass.settings import Settings
from aimass.training import AutoResult, TrainResult, resume, train
from aimass.training import auto as train_auto

__all__ = ["AimassError", "Settings", "TrainResult", "admin", "dashboard", "datasets", "events", "experiments",
           "models", "monitoring", "resume", "retraining", "runs", "serving", "train", "train_auto", "AutoResult"]
__version__ = "0.1.0"
