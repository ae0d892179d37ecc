"""The drift tests' thresholds: cold starts at the share live traffic brings are no drift; Evidently's report
applies the same per-column threshold as the summary."""
import numpy as np
import pandas as pd

from aimass import monitoring
from aimass.monitoring import _features, _stats


def _frames(cold_share: float, n: int = 4000) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({c: rng.normal(size=n) for c in _features.NUMERIC})
    ref["strategy"], ref["history_label"] = "model", "a"
    cur = pd.DataFrame({c: rng.normal(size=n) for c in _features.NUMERIC})
    cold = int(n * cold_share)
    cur["strategy"], cur["history_label"] = ["trending"] * cold + ["model"] * (n - cold), "a"
    return cur, ref


def test_a_tenth_of_cold_starts_is_no_drift_but_half_is(tmp_path):
    for share, expected in ((0.1, False), (0.5, True)):
        cur, ref = _frames(share)
        verdict = monitoring._compare(cur, ref)["strategy"]
        assert verdict.drifted is expected, (share, verdict)
        assert verdict.threshold == _stats.THRESHOLDS["strategy"]
        assert verdict.p_value < _stats.ALPHA  # the size is what holds the tenth back, not the test
        out = tmp_path / str(share)
        out.mkdir()
        snapshot = _stats.evidently_report(cur, ref, _features.NUMERIC, _features.CATEGORICAL, 0.5, out)
        assert _stats.drifted_count(snapshot) == int(expected)
