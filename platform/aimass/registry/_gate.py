"""The promotion gate's checks. Each returns pass/fail with the numbers behind it."""
from __future__ import annotations

import numpy as np

from aimass.settings import Settings


def run_gate(candidate, champion, tolerance: float, latency_budget_ms: float, metric: str,
             *, settings: Settings):
    from aimass.registry import GateCheck

    checks = []
    if champion is not None and champion.version != candidate.version:
        same = candidate.dataset_hash == champion.dataset_hash
        checks.append(GateCheck(
            check="dataset", passed=same,
            detail=f"candidate trained on {candidate.dataset}, champion on {champion.dataset}" if not same
            else f"both on {candidate.dataset}"))
        c, b = candidate.metrics.get(metric), champion.metrics.get(metric)
        if c is None or b is None:
            checks.append(GateCheck(check="quality", passed=False, detail=f"{metric} missing"))
        else:
            floor = b * (1 - tolerance)
            checks.append(GateCheck(
                check="quality", passed=c >= floor,
                detail=f"{metric} {c:.4f} vs champion {b:.4f} (floor {floor:.4f}, tolerance {tolerance:.1%}, "
                       f"{(c - b) / b if b else 0.0:+.2%})"))
    p99 = scoring_latency_ms(candidate, settings)["p99"]
    checks.append(GateCheck(check="latency", passed=p99 <= latency_budget_ms,
                            detail=f"p99 {p99:.2f} ms at batch 1 vs budget {latency_budget_ms:.1f} ms"))
    return checks


def scoring_latency_ms(info, settings: Settings, n: int = 200, batch: int = 1) -> dict:
    """p50/p99 of one `score` call on CPU, on histories drawn from the model's own catalogue."""
    from aimass.registry import load
    from aimass.registry._latency import latency_ms

    model = load(info.ref, settings=settings)
    rng = np.random.default_rng(0)
    n_items = len(model.item_ids)
    histories = [rng.integers(1, n_items + 1, size=rng.integers(5, 50)) for _ in range(batch)]
    return latency_ms(model.estimator.score, [histories] * n, warmup=5)
