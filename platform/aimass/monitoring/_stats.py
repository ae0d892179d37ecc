"""The drift tests (registered with Evidently, so its HTML shows the verdicts the summary gives) and the
Wilson interval of the online rates.

A column drifts only when the difference is both large and real: an effect size at or above its threshold
AND a significance test below ALPHA. The effect size alone (Evidently's choice above 1,000 rows) lets the
sampling noise of a window of a few hundred answers pass 0.1; a p-value alone (its choice below) flags
differences too small to matter once a window holds 10,000 answers. Together the verdict does not depend on
the window's size: small windows are held back by the test, large ones by the effect size."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

ALPHA = 1e-4  # measured: 1e-3 flagged 1 of 350 random windows (two correlated score columns), 1e-4 none
NUM_THRESHOLD = 0.1  # Wasserstein distance in reference standard deviations
CAT_THRESHOLD = 0.1  # Jensen-Shannon distance (natural log; 0 to 0.83)
# The reference is answered for training users, all by the model; live traffic brings new users, whose cold
# starts are no drift at a few percent (3% already gave 0.103). The strategy column drifts from 0.274, the
# distance of a fifth of the answers not the model's; user_activity still shows a change in the users' mix.
THRESHOLDS = {"strategy": 0.274}
NUM_TEST = "aimass-wasserstein-ks"
CAT_TEST = "aimass-jensenshannon-chi2"
Z95 = 1.959963984540054


def numeric(reference: np.ndarray, current: np.ndarray, threshold: float = NUM_THRESHOLD) -> tuple[float, float, bool]:
    """(normed Wasserstein distance, two-sample Kolmogorov-Smirnov p-value, drifted)."""
    from scipy import stats

    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    # the floor is Evidently's own: a constant reference column still gets a finite distance
    distance = float(stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001))
    # the exact p-value costs 0.1 s a call at 10,000 x 2,000 rows (and Evidently calls this thrice per column);
    # the asymptotic one is accurate from a hundred rows a side
    p = float(stats.ks_2samp(ref, cur, method="asymp" if min(len(ref), len(cur)) >= 100 else "auto").pvalue)
    return distance, p, bool(distance >= threshold and p < ALPHA)


def categorical(reference: np.ndarray, current: np.ndarray,
                threshold: float = CAT_THRESHOLD) -> tuple[float, float, bool]:
    """(Jensen-Shannon distance of the value shares, chi-square p-value of the 2 x values table, drifted)."""
    from scipy import stats
    from scipy.spatial import distance

    ref = pd.Series(reference).astype(str).value_counts()
    cur = pd.Series(current).astype(str).value_counts()
    table = pd.concat([ref, cur], axis=1).fillna(0).to_numpy(dtype=np.float64).T
    if table.shape[1] < 2:
        return 0.0, 1.0, False
    js = float(distance.jensenshannon(table[0] / table[0].sum(), table[1] / table[1].sum()))
    table = _pooled(table)
    p = float(stats.chi2_contingency(table, correction=False).pvalue) if table.shape[1] >= 2 else 1.0
    return js, p, bool(js >= threshold and p < ALPHA)


def _pooled(table: np.ndarray) -> np.ndarray:
    """The 2 x values table with the values whose expected count is under 5 pooled into one, the chi-square
    approximation's condition: one answer of a value the reference never had gave p ~ 1e-15 (a window of one
    cold start flagged). A pool still under 5 joins the smallest of the rest; fewer than 2 columns: no test."""
    def expected(t):
        return t.sum(1, keepdims=True) * t.sum(0, keepdims=True) / t.sum()

    small = expected(table).min(axis=0) < 5
    if not small.any():
        return table
    table = np.column_stack([table[:, ~small], table[:, small].sum(axis=1)])
    while table.shape[1] > 2 and expected(table)[:, -1].min() < 5:
        rest = table[:, :-1]
        j = int(np.argmin(rest.sum(axis=0)))
        rest[:, j] += table[:, -1]
        table = rest
    return table


def _evidently_numeric(reference: pd.Series, current: pd.Series, feature_type, threshold: float):
    d, _, drifted = numeric(reference.to_numpy(), current.to_numpy(), threshold)
    return d, drifted


def _evidently_categorical(reference: pd.Series, current: pd.Series, feature_type, threshold: float):
    d, _, drifted = categorical(reference.to_numpy(), current.to_numpy(), threshold)
    return d, drifted


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    register_stattest(StatTest(name=NUM_TEST, allowed_feature_types=[ColumnType.Numerical],
                               display_name=f"Wasserstein distance (normed) >= threshold and KS p < {ALPHA:g}",
                               default_threshold=NUM_THRESHOLD), default_impl=_evidently_numeric)
    register_stattest(StatTest(name=CAT_TEST, allowed_feature_types=[ColumnType.Categorical],
                               display_name=f"Jensen-Shannon distance >= threshold and chi-square p < {ALPHA:g}",
                               default_threshold=CAT_THRESHOLD), default_impl=_evidently_categorical)
    _registered = True


def evidently_report(current: pd.DataFrame, reference: pd.DataFrame, numeric_columns: list[str],
                     categorical_columns: list[str], drift_share: float, out: Path) -> dict:
    """Run Evidently's DataDriftPreset over the columns with the tests above; write report.html and
    report.json into `out`; return the snapshot's dict."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    _register()
    columns = numeric_columns + categorical_columns
    definition = DataDefinition(numerical_columns=numeric_columns, categorical_columns=categorical_columns)
    preset = DataDriftPreset(columns=columns, drift_share=drift_share, num_method=NUM_TEST, cat_method=CAT_TEST,
                             num_threshold=NUM_THRESHOLD, cat_threshold=CAT_THRESHOLD,
                             per_column_threshold={c: t for c, t in THRESHOLDS.items() if c in columns})
    snapshot = Report([preset]).run(Dataset.from_pandas(current[columns], data_definition=definition),
                                    Dataset.from_pandas(reference[columns], data_definition=definition))
    snapshot.save_html(str(out / "report.html"))
    snapshot.save_json(str(out / "report.json"))
    return snapshot.dict()


def drifted_count(snapshot: dict) -> int | None:
    for m in snapshot.get("metrics", []):
        if m.get("metric_name", "").startswith("DriftedColumnsCount"):
            return int(m["value"]["count"])
    return None


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float | None, float | None, float | None]:
    """(rate, low, high): the Wilson score interval, sound for small counts and rates near 0 or 1."""
    if trials <= 0:
        return None, None, None
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # at 0 or all successes the bound is exactly 0 or 1; floating point would leave 1e-17 or 0.9999999999999999
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return p, low, high
