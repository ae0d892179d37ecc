"""The training reference of a model version: what its answers look like on the traffic it was trained for.

A fixed-seed sample of the training users, each answered as a `recommend(user_id)` request is (the user's
whole stored history, seen items excluded, top 10), measured with the same per-answer columns as served
traffic. The facts the columns need (training popularity per item, training interactions per user, an item
label for diversity) are kept beside it, so that a report over a cached reference loads neither the model
nor the dataset. Cached per model version under home/monitoring/_reference/NAME-VERSION/, built once under a
lock and moved into place whole. A version never changes, but NAME/VERSION names another one once the home
points at another tracking store (or a wiped one: MLflow numbers from 1 again), so the cache records whose
version it was built from (store, run, source, dataset) and is rebuilt when that differs."""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from aimass.monitoring import _features
from aimass.settings import Settings

log = logging.getLogger(__name__)
USERS = 2000  # reference answers: enough for stable distributions, seconds to build for any family
SEED = 0
K = 10  # the reference's list length; served lists are cut to it before they are measured
_BATCH = 256
_CELLS = 8_000_000  # scores held at once while building: 64 MB of float64


@dataclass
class Reference:
    model: str
    version: int
    dataset: str | None
    rows: pd.DataFrame  # per-answer columns (_features.COLUMNS), `user_id` and `items` (the listed raw ids)
    catalogue: _features.Catalogue
    feedback: dict  # the training interactions' event mix, when the dataset has an event column
    created_at: datetime
    users: int  # the sample size asked for (fewer answers when the dataset has fewer users)
    build_seconds: float | None = None  # set when this call built it (None: read from the cache)
    identity: dict | None = None  # whose version it was built from (identity()); None in a cache made before

    @property
    def ref(self) -> str:
        return f"{self.model}/{self.version}"


def folder(settings: Settings, model: str, version: int) -> Path:
    return settings.home / "monitoring" / "_reference" / f"{model}-{version}"


def identity(model: str, version: int, settings: Settings) -> dict:
    """Whose version MODEL/VERSION is in the home's tracking store now: what the registry marks a downloaded
    copy with (store, run, source), and the dataset it was trained on. NotFoundError when there is none."""
    from aimass import registry

    info = registry.get(f"{model}/{version}", settings=settings)
    return {**registry.version_identity(settings, info), "dataset": info.dataset}


def get(model: str, version: int, settings: Settings, users: int = USERS) -> Reference:
    """The cached reference of MODEL/VERSION, built first when missing, built for another sample size, or
    built from another version of that name (a cache without the record, made before it, is rebuilt once)."""
    path = folder(settings, model, version)
    current = identity(model, version, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_dir():
            try:
                ref = _read(path, model, version)
                if ref.users == users and ref.identity == current:
                    return ref
                if ref.identity != current:
                    log.info("rebuilding the monitoring reference of %s/%s: it was built from another version "
                             "of that name (%s; now %s)", model, version, ref.identity, current)
            except Exception:  # an unreadable cache (older layout, disk trouble) is rebuilt, not trusted
                log.warning("rebuilding the unreadable monitoring reference at %s", path, exc_info=True)
        t0 = time.perf_counter()
        ref = build(model, version, settings, users)
        ref.identity = current
        ref.build_seconds = round(time.perf_counter() - t0, 3)
        _write(ref, path)
        return ref


def build(model: str, version: int, settings: Settings, users: int = USERS) -> Reference:
    from aimass.errors import NotFoundError
    from aimass.evaluation import exclusion_mask, top_k
    from aimass.events import TAIL
    from aimass.serving import Engine

    engine = Engine(f"{model}/{version}", settings)
    if not engine.histories:
        raise NotFoundError(f"model {model}/{version} records no training dataset with user histories "
                            f"(dataset: {engine.info.dataset or 'none'}): there is no reference to compare with")
    label = _label_column(engine.columns)
    catalogue = _features.Catalogue(
        item_ids=engine.item_ids.astype(np.int64), popularity=engine.popularity[1:].copy(),
        labels=engine.columns[label][1:] if label else None, label=label,
        user_ids=np.fromiter(engine.histories, dtype=np.int64, count=len(engine.histories)),
        activity=np.fromiter((len(h) for h in engine.histories.values()), dtype=np.int64,
                             count=len(engine.histories)))
    rng = np.random.default_rng(SEED)
    pool = np.sort(catalogue.user_ids)
    chosen = rng.choice(pool, size=min(users, len(pool)), replace=False)
    histories = [np.asarray(engine.histories[int(u)]) for u in chosen]
    items, scores = [], []
    batch = max(1, min(_BATCH, _CELLS // (engine.n_items + 1)))  # a large catalogue scores fewer rows at a time
    for i in range(0, len(histories), batch):
        dense = [engine.scorer.dense(h) for h in histories[i:i + batch]]
        s = np.asarray(engine.scorer.estimator.score(dense), dtype=np.float64)
        cols, best = top_k(s, K, exclusion_mask(s.shape[1], dense))
        for c, b in zip(cols, best, strict=True):
            keep = c > 0  # a row with fewer allowed items than K is padded with -1
            items.append(engine.item_ids[c[keep] - 1].astype(np.int64).tolist())
            scores.append(b[keep].tolist())
    answers = pd.DataFrame({"user_id": chosen.astype(np.int64), "history_length": [len(h) for h in histories],
                            "history_tail": [h[-TAIL:].tolist() for h in histories], "items": items,
                            "scores": scores, "strategy": "model"})
    rows = _features.per_answer(answers, catalogue, K)
    rows["user_id"] = answers["user_id"]
    rows["items"] = answers["items"]
    return Reference(model=model, version=version, dataset=engine.info.dataset, rows=rows, catalogue=catalogue,
                     feedback=_event_mix(engine.info.dataset, settings), created_at=datetime.now(UTC), users=users)


def _event_mix(dataset: str | None, settings: Settings) -> dict:
    """Shares of the training interactions by event type and polarity (under the home's feedback rules): what
    the window's feedback rates are read against. Empty when the dataset has no event column."""
    from aimass import datasets
    from aimass.events import Rules

    if not dataset:
        return {}
    inter = datasets.load(dataset, settings=settings).interactions  # pulled by the Engine already: a local read
    if "event" not in inter.columns or not len(inter):
        return {}
    types = inter["event"].astype(str)
    values = inter["value"] if "value" in inter.columns else pd.Series(np.nan, index=inter.index)
    pol = Rules.of(settings).polarities(types, values)
    return {"interactions": len(inter), "positive_share": round(float((pol > 0).mean()), 6),
            "negative_share": round(float((pol < 0).mean()), 6),
            "by_type": {str(k): round(float(v), 6) for k, v in types.value_counts(normalize=True).items()}}


def _label_column(columns: dict[str, np.ndarray]) -> str | None:
    """The item label diversity counts: the categorical column with the fewest distinct values among those
    with 2 to 100 (genre rather than artist; a column of one value or of free tags says nothing)."""
    best = None
    for name, values in columns.items():
        n = len(set(values[1:].tolist()) - {""})
        if 2 <= n <= 100 and (best is None or n < best[1]):
            best = (name, n)
    return best[0] if best else None


def _write(ref: Reference, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ref.rows.to_parquet(tmp / "answers.parquet", index=False)
    c = ref.catalogue
    pd.DataFrame({"item_id": c.item_ids, "popularity": c.popularity,
                  **({"label": c.labels} if c.labels is not None else {})}).to_parquet(tmp / "items.parquet",
                                                                                       index=False)
    pd.DataFrame({"user_id": c.user_ids, "activity": c.activity}).to_parquet(tmp / "users.parquet", index=False)
    meta = {"model": ref.model, "version": ref.version, "dataset": ref.dataset, "users": ref.users, "seed": SEED,
            "k": K, "label": c.label, "feedback": ref.feedback, "created_at": ref.created_at.isoformat(),
            "build_seconds": ref.build_seconds, "identity": ref.identity}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _read(path: Path, model: str, version: int) -> Reference:
    meta = json.loads((path / "meta.json").read_text())
    rows = pd.read_parquet(path / "answers.parquet")
    rows["items"] = rows["items"].map(lambda x: [int(i) for i in x])
    items = pd.read_parquet(path / "items.parquet")
    users = pd.read_parquet(path / "users.parquet")
    catalogue = _features.Catalogue(
        item_ids=items["item_id"].to_numpy(np.int64), popularity=items["popularity"].to_numpy(np.float64),
        labels=items["label"].to_numpy(object) if "label" in items.columns else None, label=meta["label"],
        user_ids=users["user_id"].to_numpy(np.int64), activity=users["activity"].to_numpy(np.int64))
    return Reference(model=model, version=version, dataset=meta["dataset"], rows=rows, catalogue=catalogue,
                     feedback=meta["feedback"], created_at=datetime.fromisoformat(meta["created_at"]),
                     users=meta["users"], identity=meta.get("identity"))
