"""The promotion gate's checks. Each returns pass/fail with the numbers behind it.

Offline quality is only comparable on one test split. Models trained on the same dataset version compare
their recorded test metrics. When the candidate was trained on a version derived from the champion's (the
champion's data plus feedback events, `aimass.datasets.derive`), the champion is re-scored on the candidate's
test split with the protocol training uses, so the two figures are on the same users and targets. Neither
model saw those targets: a derived version only adds interactions, so every user's last one is either a
target held out of the parent or a new event."""
from __future__ import annotations

import re

import numpy as np

from aimass.errors import InvalidInputError
from aimass.settings import Settings

_METRIC = re.compile(r"^test_(?:(?P<name>ndcg|recall|coverage)_at_(?P<k>\d+)|(?P<mrr>mrr))$")


def run_gate(candidate, champion, tolerance: float, latency_budget_ms: float, metric: str,
             *, settings: Settings, rescore_on: str | None = None):
    from aimass.registry import GateCheck

    checks = []
    if champion is not None and champion.version != candidate.version:
        on = _common_split(candidate, champion, rescore_on, settings)
        if on is None:
            same = candidate.dataset_hash == champion.dataset_hash
            checks.append(GateCheck(
                check="dataset", passed=same,
                detail=f"candidate trained on {candidate.dataset}, champion on {champion.dataset}" if not same
                else f"both on {candidate.dataset}"))
            checks.append(_quality(metric, candidate.metrics.get(metric), champion.metrics.get(metric),
                                   tolerance, "champion"))
        else:
            checks += _compared_on(on, candidate, champion, metric, tolerance, settings)
    p99 = scoring_latency_ms(candidate, settings)["p99"]
    checks.append(GateCheck(check="latency", passed=p99 <= latency_budget_ms,
                            detail=f"p99 {p99:.2f} ms at batch 1 vs budget {latency_budget_ms:.1f} ms",
                            values={"p99_ms": p99, "budget_ms": latency_budget_ms}))
    return checks


def _compared_on(on: str, candidate, champion, metric: str, tolerance: float, settings: Settings):
    from aimass.registry import GateCheck

    def score(info) -> float | None:
        return info.metrics.get(metric) if info.dataset == on else rescore(info, on, metric, settings=settings)

    dataset = GateCheck(check="dataset", passed=True, detail=(
        f"compared on {on}'s test split ({_how(candidate, 'candidate', on)}; {_how(champion, 'champion', on)})"))
    quality = _quality(metric, score(candidate), score(champion), tolerance,
                       "champion" if champion.dataset == on else "champion re-scored",
                       candidate_label="" if candidate.dataset == on else "re-scored ")
    own = champion.metrics.get(metric)
    if champion.dataset != on and own is not None:  # what the champion's figure was before: the split moved it
        quality.detail += f"; champion's own {metric} on {champion.dataset}: {own:.4f}"
        quality.values["champion_own"] = own
    return [dataset, quality]


def _quality(metric: str, c: float | None, b: float | None, tolerance: float, label: str, candidate_label: str = ""):
    from aimass.registry import GateCheck

    if c is None or b is None:
        return GateCheck(check="quality", passed=False, detail=f"{metric} missing")
    floor = b * (1 - tolerance)
    return GateCheck(
        check="quality", passed=c >= floor,
        detail=f"{metric} {candidate_label}{c:.4f} vs {label} {b:.4f} (floor {floor:.4f}, tolerance {tolerance:.1%}, "
               f"{(c - b) / b if b else 0.0:+.2%})",
        values={"candidate": c, "champion": b, "floor": floor})


def _how(info, who: str, on: str) -> str:
    return f"{who} trained on it" if info.dataset == on else f"{who} re-scored; trained on {info.dataset}"


def _common_split(candidate, champion, rescore_on: str | None, settings: Settings) -> str | None:
    """The dataset version both models are compared on, or None to compare their recorded metrics (same data,
    or unrelated data, which the dataset check then refuses). Only a version derived from both models'
    training versions (or one of them) qualifies: anywhere else a test target may be in one's training data."""
    from aimass import datasets

    if rescore_on is None:
        if candidate.dataset_hash == champion.dataset_hash or not candidate.dataset or not champion.dataset:
            return None
        on = candidate.dataset
        return on if champion.dataset in _lineage_of(on, settings) else None
    on = datasets.get(rescore_on, settings=settings).ref
    line = _lineage_of(on, settings)
    for info in (candidate, champion):
        if info.dataset not in line:
            raise InvalidInputError(
                f"cannot compare on {on}: {info.ref} was trained on {info.dataset}, which is not {on} or an "
                f"ancestor of it (its test targets could be in that model's training data)")
    return on


def _lineage_of(ref: str, settings: Settings) -> list[str]:
    """`ref` and the versions it was derived from, newest first."""
    from aimass import datasets

    return [datasets.get(ref, settings=settings).ref, *(x.parent for x in datasets.ancestry(ref, settings=settings))]


def rescore(info, dataset: str, metric: str = "test_ndcg_at_10", *, settings: Settings) -> float:
    """`metric` of the registered version `info` on `dataset`'s test split, exactly as training computes its
    `test_*` metrics (aimass.training: `make_splits` with the protocol the data calls for, full ranking,
    `evaluate` at batch 256). Items the model never saw get -inf: it cannot recommend them, and a target
    among them counts as a miss; unknown items in a history are dropped, as serving drops them."""
    from aimass import datasets
    from aimass.evaluation import evaluate, make_splits, protocol_for
    from aimass.registry import load

    m = _METRIC.match(metric)
    if m is None:
        raise InvalidInputError(f"cannot re-score {metric!r}: only test_ndcg_at_K, test_recall_at_K, "
                                "test_coverage_at_K and test_mrr can be computed again")
    k = int(m["k"]) if m["k"] else 10
    ds = datasets.load(dataset, settings=settings)
    splits = make_splits(ds.interactions, protocol_for(ds.interactions))
    model = load(info.ref, settings=settings)
    known_ids = np.asarray(model.item_ids, dtype=np.int64)
    pos = np.minimum(np.searchsorted(known_ids, splits.item_ids), max(len(known_ids) - 1, 0))
    known = (known_ids[pos] == splits.item_ids) if len(known_ids) else np.zeros(len(splits.item_ids), bool)
    column = np.zeros(splits.n_items + 1, dtype=np.int64)  # split's dense id -> the model's (0: unknown)
    column[1:][known] = pos[known] + 1
    into = np.flatnonzero(known) + 1

    def score(histories: list[np.ndarray]) -> np.ndarray:
        mapped = [column[np.asarray(h, dtype=np.int64)] for h in histories]
        theirs = np.asarray(model.estimator.score([h[h > 0] for h in mapped]))
        out = np.full((len(histories), splits.n_items + 1), -np.inf, dtype=np.float64)
        out[:, into] = theirs[:, column[into]]
        return out

    result = evaluate(score, list(splits.test_histories), np.asarray(splits.test_targets), splits.n_items,
                      ks=tuple(sorted({10, k})))
    key = "mrr" if m["mrr"] else f"{m['name']}@{k}"
    return float(result[key])


def scoring_latency_ms(info, settings: Settings, n: int = 200, batch: int = 1) -> dict:
    """p50/p99 of one `score` call on CPU, on histories drawn from the model's own catalogue."""
    from aimass.registry import load
    from aimass.registry._latency import latency_ms

    model = load(info.ref, settings=settings)
    rng = np.random.default_rng(0)
    n_items = len(model.item_ids)
    histories = [rng.integers(1, n_items + 1, size=rng.integers(5, 50)) for _ in range(batch)]
    return latency_ms(model.estimator.score, [histories] * n, warmup=5)
