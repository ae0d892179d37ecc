"""The Open Inference Protocol v2 answer as the service builds it (aimass.serving._v2.response), in-process: the
answer's model_version is given only when one model answered every row."""
from __future__ import annotations

from aimass.serving import _v2


def _rows(*refs: tuple[str, int]) -> list[tuple[dict, dict]]:
    return [({"model": m, "version": v, "arm": f"{m}/{v}", "request_id": f"r{i}"},
             {"items": [1, 2], "scores": [0.5, 0.25]}) for i, (m, v) in enumerate(refs)]


def test_model_version_is_given_only_when_one_model_answered_every_row():
    p = _v2.Parsed(id="q", users=[1, 2], k=2, outputs=list(_v2.OUTPUTS))
    assert _v2.response("recs", p, _rows(("recs", 3), ("recs", 3)))["model_version"] == "3"
    # a split of recs-a/1 and recs-b/1: the same version number from two models
    out = _v2.response("recs", p, _rows(("recs-a", 1), ("recs-b", 1)))
    assert "model_version" not in out and out["id"] == "q"
    assert next(o for o in out["outputs"] if o["name"] == "arm")["data"] == ["recs-a/1", "recs-b/1"]
    assert "model_version" not in _v2.response("recs", p, _rows(("recs", 1), ("recs", 2)))
