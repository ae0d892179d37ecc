"""aimass: model-as-a-service for recommendation and search models.

The SDK's public face. Everything a data scientist calls is re-exported here; the modules behind it are
private.
"""
from aimass import admin, dashboard, datasets, events, experiments, models, monitoring, retraining, runs
from aimass.errors import AimassError
from aimass.settings import Settings
from aimass.training import TrainResult, resume, train

__all__ = ["AimassError", "Settings", "TrainResult", "admin", "dashboard", "datasets", "events", "experiments",
           "models", "monitoring", "resume", "retraining", "runs", "train"]
__version__ = "0.1.0"
