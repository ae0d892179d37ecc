"""Registered models, the data scientist's face of the registry: `aimass.models.register(run_id, name)`,
`list()`, `show("NAME@alias" | "NAME/V")`, `versions(name)`, `promote(name, version)`,
`compress(name, version, method)` and `load(ref)`, which returns a ready scorer whatever made the version
(`load_logged(model_uri)` for a run's model not registered).

The trainable families (the model zoo) are `aimass.zoo`."""
from __future__ import annotations

from aimass.registry import (
    ALIASES,
    METHODS,
    ModelVersionInfo,
    Promotion,
    compress,
    load,
    load_logged,
    promote,
    register,
    versions,
)
from aimass.registry import get as show
from aimass.registry import list_models as list  # noqa: A001 - `aimass.models.list()` reads as intended


def load_estimator(path, family: str | None = None):
    """Kept for models logged before the zoo moved to `aimass.zoo`: their logged `_pyfunc.py` imports it from
    here, and a registry must keep loading what it already holds."""
    from aimass.zoo import load_estimator as load_from_zoo

    return load_from_zoo(path, family)


__all__ = ["ALIASES", "METHODS", "ModelVersionInfo", "Promotion", "compress", "list", "load", "load_logged", "promote",
           "register", "show", "versions"]
