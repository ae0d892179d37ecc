"""`aimass.models`, the registry's SDK face: what it exports, and the loader that models logged before the zoo
moved to `aimass.zoo` still import from it."""
from __future__ import annotations

import numpy as np

import aimass
from aimass import registry
from aimass.zoo.popularity import Popularity


def test_face_exports_the_registry_calls():
    m = aimass.models
    assert (m.register, m.versions, m.promote, m.load, m.show, m.list) == (
        registry.register, registry.versions, registry.promote, registry.load, registry.get, registry.list_models)
    assert "int8" in m.METHODS and "champion" in m.ALIASES


def test_models_logged_before_the_rename_still_load(tmp_path):
    # their logged _pyfunc.py does `from aimass.models import load_estimator`
    seqs = [np.array([1, 2, 3]), np.array([2, 3, 3, 4]), np.array([3, 4])]
    Popularity().fit(seqs, 4).save(tmp_path / "m")
    from aimass.models import load_estimator

    est = load_estimator(tmp_path / "m", "popularity")
    scores = est.score([np.array([1])])
    assert isinstance(est, Popularity) and scores.shape == (1, 5) and scores[0].argmax() == 3
