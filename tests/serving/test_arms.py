"""A replica's traffic arms (aimass.serving._arms): a shadow whose worker cannot start fails the split in time,
and the /metrics counters summed over its engines never fall when a split change releases one."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from aimass.errors import BackendError
from aimass.serving import _traffic
from aimass.serving._arms import Arms, Shadow, Table
from aimass.serving._http import _EngineStats
from aimass.settings import Settings


@pytest.mark.integration
def test_a_shadow_whose_worker_cannot_be_scheduled_fails_in_time(tmp_path):
    import ray

    ray.init(num_cpus=0, include_dashboard=False, _node_ip_address="127.0.0.1")  # no CPU for the shadow's worker
    try:
        s = Settings(home=tmp_path / "home", traffic_apply_timeout_s=2)
        with pytest.raises(BackendError, match="did not start within 2 s"):
            Shadow("recs/1", s)
    finally:
        ray.shutdown()


def test_metrics_counters_keep_what_a_released_engine_counted():
    class Engine:
        def __init__(self, hits, misses, batches, rows):
            self.cache = SimpleNamespace(hits=hits, misses=misses)
            self.batcher = SimpleNamespace(batches=batches, rows=rows)
            self.warmed, self.closed = 0, False

        def close(self):
            self.closed = True

    arms = Arms.__new__(Arms)  # its state only: no catalog, no split to follow
    old, new = Engine(5, 2, 3, 9), Engine(1, 1, 1, 2)
    arms.engines, arms.shadows = {"recs/1": old, "recs/2": new}, {}
    arms.released = {"hits": 0, "misses": 0, "batches": 0, "rows": 0}
    arms.table = Table(None, None, (("recs/2", _traffic.BUCKETS),))  # the split moved all traffic to recs/2
    served = SimpleNamespace(arms=arms, event_log=None)

    def counters() -> dict:
        return {(m.name, tuple(s.labels.items())): s.value for m in _EngineStats(lambda: served).collect()
                for s in m.samples if m.type == "counter" and s.name.endswith("_total")}

    before = counters()
    arms._release(None)
    assert old.closed and list(arms.engines) == ["recs/2"]
    assert counters() == before  # a counter that fell would read as a reset: a false burst in rate()
    assert before[("aimass_answer_cache", (("result", "hit"),))] == 6
