"""The catalog's record of an endpoint's splits (aimass.serving._traffic), without a cluster: what is in force
and what a rollback restores once the endpoint was deleted or a multi-stage application took it over."""
import pytest

from aimass.errors import NotFoundError
from aimass.serving import _traffic


def test_retired_splits_are_neither_in_force_nor_rolled_back_to(settings):
    _traffic.activate_initial(settings, "shop", "recs/1")
    _traffic.activate_initial(settings, "shop", "recs/2")
    assert _traffic.previous(settings, "shop").arms[0]["ref"] == "recs/1"
    _traffic.retire(settings, "shop", "the endpoint was deleted")
    assert _traffic.current(settings, "shop") is None
    with pytest.raises(NotFoundError):
        _traffic.previous(settings, "shop")
    _traffic.activate_initial(settings, "shop", "recs/3")  # a new deployment of the name starts afresh
    assert _traffic.current(settings, "shop").arms[0]["ref"] == "recs/3"
    with pytest.raises(NotFoundError):  # the deleted deployment's recs/2 is not what a rollback brings back
        _traffic.previous(settings, "shop")
    states = {h.arms[0]["ref"]: (h.state, h.error) for h in _traffic.history(settings, "shop")}
    assert states == {"recs/3": ("active", None), "recs/2": ("retired", "the endpoint was deleted"),
                      "recs/1": ("retired", "the endpoint was deleted")}


def test_with_no_replica_running_a_split_is_loaded_here_before_it_goes_in_force(settings):
    """Scaled to zero, no replica can try a split: one whose version cannot load went in force at once, and
    every replica started after it failed. Now it is loaded here first and refused, the split in force kept."""
    from aimass.errors import BackendError

    _traffic.activate_initial(settings, "shop", "recs/1")
    split = _traffic.propose(settings, "shop", [_traffic.Arm(ref="ghost/1", weight=100)], None)
    with pytest.raises(BackendError, match="no replica of 'shop' runs .* ghost/1 could not be loaded"):
        _traffic.wait(settings, split, lambda: set())
    assert _traffic.current(settings, "shop").arms[0]["ref"] == "recs/1"
    assert [h.state for h in _traffic.history(settings, "shop")][0] == "failed"
