"""The one latency timer of the registry: the promotion gate's budget check and compression's side-by-side
measurements time a model the same way."""
from __future__ import annotations

import time

import numpy as np


def latency_ms(score, batches: list[list[np.ndarray]], warmup: int = 3) -> dict:
    """p50/p99 of one ``score`` call over the given batches (the same for every model compared)."""
    for b in batches[:warmup]:
        score(b)
    times = []
    for b in batches:
        t0 = time.perf_counter()
        score(b)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def latency_batches(histories, n: int, seed: int = 0) -> dict[int, list]:
    rng = np.random.default_rng(seed)
    return {b: [[histories[i] for i in rng.integers(0, len(histories), b)] for _ in range(count)]
            for b, count in ((1, n), (64, max(10, n // 5)))}
