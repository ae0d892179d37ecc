"""The Ray Train worker's side of a job (aimass.training._loop) that runs without Ray."""
from __future__ import annotations

from aimass.training._loop import _state_from


def test_a_checkpoint_from_before_best_at_s_gets_it_from_its_history():
    st = _state_from({"epoch": 3, "best_epoch": 2, "history": [{"train_time_s": 1.0}, {"train_time_s": 2.0},
                                                                {"train_time_s": 4.0}]})
    assert (st.best_at_s, st.train_time_s) == (3.0, 7.0)
