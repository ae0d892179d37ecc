"""Kept for compressed versions logged before the MLflow plumbing moved to `aimass.tracking`: their logged
code imports `AimassRecommender` from here, and a registry must keep loading what it already holds."""
from aimass.tracking.pyfunc import AimassRecommender

__all__ = ["AimassRecommender"]
