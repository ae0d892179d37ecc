"""aimass: model-as-a-service for recommendation and search models.

The SDK's public face. Everything a data scientist calls is re-exported here; the modules behind it are
private.
"""
from aimass import datasets
from aimass.errors import AimassError
from aimass.settings import Settings

__all__ = ["AimassError", "Settings", "datasets"]
__version__ = "0.1.0"
