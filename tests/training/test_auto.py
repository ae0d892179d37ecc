"""Model search's choices that need no training: which probes a search's baselines rule out."""
from __future__ import annotations

from aimass.training._auto import Candidate, _bag_of_items_evidence


def _baselines(ease: float | None, knn: float | None = 0.10) -> list[Candidate]:
    board = [Candidate("popularity", {}, "baseline", run_id="p", val_ndcg=0.01)]
    board.append(Candidate("itemknn", {}, "baseline", run_id="k", val_ndcg=knn) if knn is not None
                 else Candidate("itemknn", {}, "baseline", skipped="failed: disk full"))
    board.append(Candidate("ease", {}, "baseline", run_id="e", val_ndcg=ease) if ease is not None
                 else Candidate("ease", {}, "baseline", skipped="EASE needs ... the limit is max_items=20,000"))
    return board


def test_mult_vae_is_ruled_out_only_when_ease_trails_item_knn():
    why = _bag_of_items_evidence(_baselines(ease=0.05))
    assert why is not None and "0.0500 vs 0.1000" in why and why.startswith("not probed")
    assert _bag_of_items_evidence(_baselines(ease=0.10)) is None  # a tie: the bag model may compete
    assert _bag_of_items_evidence(_baselines(ease=0.12)) is None
    # no evidence either way: EASE refused for its size, or item-kNN failed
    assert _bag_of_items_evidence(_baselines(ease=None)) is None
    assert _bag_of_items_evidence(_baselines(ease=0.05, knn=None)) is None
