"""One loaded model and the facts of its dataset that serving needs: user histories (recommend by user id),
popularity (cold start), item columns (filters, diversity rules), and, for a deployed endpoint, the online
state its feedback events build (_online). Pure Python: the Bento services and the multi-stage Serve
deployments call it; it raises only aimass errors, which the HTTP layer maps to 4xx."""
from __future__ import annotations

import logging
import threading
import unicodedata

import numpy as np
import pandas as pd

from aimass.errors import InvalidInputError, NotFoundError
from aimass.evaluation import top_k
from aimass.settings import Settings

_TEXT_COLUMNS = {"item_id", "text", "title"}  # free text: not useful as a filter
_WARM_K = 10  # the k of /recommend's default request (serving._schema: `k: K = 10`)
log = logging.getLogger(__name__)


class Engine:
    def __init__(self, ref: str, settings: Settings):
        from aimass import datasets, registry

        self.scorer = registry.load(ref, settings=settings)
        self.info = self.scorer.info
        self.item_ids = np.asarray(self.scorer.item_ids)
        n = len(self.item_ids)
        ds = datasets.load(self.info.dataset, settings=settings) if self.info.dataset else None
        self.histories: dict[int, np.ndarray] = {}
        self.popularity = np.zeros(n + 1, dtype=np.float64)  # by dense id; column 0 is padding
        self.columns: dict[str, np.ndarray] = {}
        if ds is not None:
            inter = ds.interactions
            by_user = inter.groupby("user_id", sort=False)["item_id"]
            self.histories = {int(u): g.to_numpy() for u, g in by_user}
            dense = self.scorer.dense(inter["item_id"].to_numpy())
            np.add.at(self.popularity, dense, 1.0)
            if ds.items is not None:
                table = ds.items.set_index("item_id").reindex(self.item_ids)
                for col in table.columns:
                    if col not in _TEXT_COLUMNS and not pd.api.types.is_numeric_dtype(table[col]):
                        # NFC: "Türkiye" typed with a combining diaeresis is the same value
                        values = [unicodedata.normalize("NFC", v) for v in table[col].fillna("").astype(str)]
                        self.columns[col] = np.concatenate([[""], np.asarray(values, dtype=object)])
        self.popularity[0] = -np.inf
        self.dense_of = {int(r): i + 1 for i, r in enumerate(self.item_ids.tolist())}
        from aimass.serving._vectors import Vectors

        self.vectors = Vectors.of(self.scorer.estimator, settings.serve_ann_min_items,
                                  settings.home / "cache" / "ann")
        self.batcher = None
        # only a model whose rows do not depend on the batch: a compressed version's may (int8 picks one
        # activation scale per batch, and its SASRec pads to the batch's longest history)
        if settings.serve_batch_max > 1 and getattr(self.scorer.estimator, "batch_invariant", True):
            from aimass.serving._batch import Batcher

            self.batcher = Batcher(self._forward, settings.serve_batch_max, settings.serve_batch_wait_ms / 1000)
        self.online = None
        self.cache = None
        if settings.serve_cache_users:
            from aimass.serving._cache import Answers

            self.cache = Answers(settings.serve_cache_users)
        if settings.serve_endpoint:
            from aimass.serving._online import Online

            self.online = Online(settings.serve_endpoint, settings, self.dense_of, self.popularity,
                                 cutoff=_cutoff(self.info.dataset, settings.serve_endpoint, settings))
        self.warmed = 0  # answers computed into the cache by warm()
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        if self.online is not None:
            self.online.stop()

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    # --- inputs -------------------------------------------------------------------------------------------
    def known(self, raw: list[int], what: str) -> np.ndarray:
        """Dense ids of `raw`; refuses unknown ids, naming them (not found: the item does not exist)."""
        dense = self.scorer.dense(raw)
        if len(dense) != len(raw):
            unknown = sorted(set(raw) - set(self.item_ids[dense - 1].tolist()))
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise NotFoundError(f"unknown item ids in {what}: {shown} (not in the catalogue of model "
                                f"{self.info.name}/{self.info.version})")
        return dense

    def history(self, user_id: int | None, history: list[int] | None) -> np.ndarray | None:
        """The dense history to score from, or None for a cold start (unknown user, no history)."""
        if history is not None:
            return self.known(history, "history") if history else None
        if user_id is None:
            raise InvalidInputError("give a user_id or a history")
        raw = self.histories.get(int(user_id))
        dense = self.scorer.dense(raw) if raw is not None and len(raw) else None
        if self.online is not None:
            dense = self.online.history(int(user_id), dense)
        return dense if dense is not None and len(dense) else None

    def allowed(self, seen: np.ndarray | None, exclude_seen: bool, exclude: list[int],
                filters: dict[str, list[str]], user_id: int | None = None) -> np.ndarray:
        ok = np.ones(self.n_items + 1, dtype=bool)
        ok[0] = False
        if exclude_seen and seen is not None:
            ok[seen] = False
        if self.online is not None and user_id is not None:  # a dislike hides the item even from a re-play list
            hidden = self.online.hidden_of(int(user_id))
            if hidden:
                ok[list(hidden)] = False
        if exclude:
            ok[self.scorer.dense(exclude)] = False  # unknown ids cannot be returned anyway
        for col, values in filters.items():
            if col not in self.columns:
                have = ", ".join(sorted(self.columns)) or "none (the dataset has no items table with labels)"
                raise NotFoundError(f"unknown filter column {col!r}; filterable columns: {have}")
            ok &= np.isin(self.columns[col], [unicodedata.normalize("NFC", str(v)) for v in values])
        return ok

    # --- scoring ------------------------------------------------------------------------------------------
    def cold(self) -> tuple[np.ndarray, str]:
        """Scores for a user with no history: today's trending items when the endpoint's feedback says enough
        about today, else all-time popularity (training data plus positive events)."""
        trend = self.online.trending() if self.online is not None else None
        return (trend, "trending") if trend is not None else (self.popularity.copy(), "popular")

    def _forward(self, histories: list[np.ndarray]):
        """The model on several histories: user vectors when the family has them, else every item's score."""
        if self.vectors is not None:
            return self.vectors.estimator.user_vectors(histories)
        return self.scorer.estimator.score(histories)

    def model(self, seen: np.ndarray) -> np.ndarray:
        """One history's row of :meth:`_forward`, batched with concurrent requests' when batching is on."""
        return self.batcher(seen) if self.batcher is not None else self._forward([seen])[0]

    def scores(self, seen: np.ndarray | None) -> np.ndarray:
        if seen is None:
            return self.cold()[0]
        if self.vectors is not None:
            return self.vectors.scores(self.model(seen))
        return np.asarray(self.model(seen), dtype=np.float64)

    def best(self, seen: np.ndarray, ok: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        """The model's k best allowed items for history `seen`: through the item vectors (and their
        nearest-neighbour index on a large catalogue) when the family has them."""
        if self.vectors is None:
            return self.top(self.scores(seen), ok, k)
        cols, best = self.vectors.top(self.model(seen), ok, k)
        return self.item_ids[cols - 1].tolist(), _finite(best)

    def top(self, scores: np.ndarray, ok: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        """The k best allowed items (raw ids), best first, ties in catalogue order; an allowed item the model
        scores -inf or NaN still ranks, last."""
        cols, best = top_k(scores, k, ok)
        return self.item_ids[cols - 1].tolist(), _finite(best)

    def _kept(self, user_id: int | None, history: list[int] | None, k: int, exclude_seen: bool,
              exclude: list[int] | None, filters: dict | None) -> tuple[tuple, int] | None:
        """The cache key and the user's generation when this request's answer is one the cache keeps."""
        if self.cache is None or history is not None or user_id is None or exclude or filters:
            return None
        return (k, exclude_seen), self.online.generation.get(int(user_id), 0) if self.online else 0

    def cached(self, user_id: int | None, history: list[int] | None, k: int, exclude_seen: bool = True,
               exclude: list[int] | None = None, filters: dict[str, list[str]] | None = None) -> dict | None:
        """:meth:`recommend`'s answer if the cache holds it now (a hit), else None (no miss counted: the caller
        computes it through :meth:`recommend`, which counts it)."""
        kept = self._kept(user_id, history, k, exclude_seen, exclude, filters)
        return None if kept is None else self.cache.get(int(user_id), *kept, count_miss=False)

    def recommend(self, user_id: int | None, history: list[int] | None, k: int, exclude_seen: bool = True,
                  exclude: list[int] | None = None, filters: dict[str, list[str]] | None = None,
                  mark_hit: bool = False) -> dict:
        """The answer; with `mark_hit`, one the cache held carries `"cached": True` (the served-answer log's
        flag, which the caller pops: an arm's latency is its computed answers')."""
        kept = self._kept(user_id, history, k, exclude_seen, exclude, filters)
        if kept:
            key, generation = kept
            hit = self.cache.get(int(user_id), key, generation)
            if hit is not None:
                return {**hit, "cached": True} if mark_hit else hit
        out = self._compute(user_id, history, k, exclude_seen, exclude, filters)
        if kept and not out["cold_start"]:
            self.cache.put(int(user_id), key, generation, out)
        return out

    def _compute(self, user_id: int | None, history: list[int] | None, k: int, exclude_seen: bool,
                 exclude: list[int] | None, filters: dict[str, list[str]] | None) -> dict:
        seen = self.history(user_id, history)
        ok = self.allowed(seen, exclude_seen, exclude or [], filters or {}, user_id)  # their dislikes either way
        if seen is None:
            scores, strategy = self.cold()
            items, best = self.top(scores, ok, k)
        else:
            strategy = "model"
            items, best = self.best(seen, ok, k)
        return {"items": items, "scores": best, "cold_start": seen is None, "strategy": strategy,
                "history_length": 0 if seen is None else len(seen), "history_tail": self.raw(seen)}

    def warm(self, users: int) -> None:
        """Starts computing the default answers of up to `users` users into the cache (:meth:`_warm`) in a
        background thread, which :meth:`close` stops: a replica does, for each version it serves."""
        if self.cache is not None and users and self.histories:
            threading.Thread(target=self._warm, args=(min(users, self.cache.users),), name="aimass-cache-warm",
                             daemon=True).start()

    def _warm(self, n: int) -> None:
        """Computes the default request's answer (k=10, seen items excluded: the route's defaults) of the `n`
        users with the longest histories (ties by id) into the cache, as `recommend` would: a user whose answer
        is already kept is skipped, and an event that arrives meanwhile makes the warmed answer stale.
        After each user it sleeps as long as the user took, so live requests keep at least half of the core."""
        import time

        users = sorted(self.histories, key=lambda u: (-len(self.histories[u]), u))[:n]
        try:
            for user in users:
                if self._closed.is_set():
                    return
                t0 = time.perf_counter()
                key, generation = self._kept(user, None, _WARM_K, True, None, None)
                if not self.cache.has(user, key, generation):
                    out = self._compute(user, None, _WARM_K, True, None, None)
                    if not out["cold_start"]:
                        self.cache.put(user, key, generation, out)
                        self.warmed += 1
                self._closed.wait(time.perf_counter() - t0)
        except Exception:  # a warm-up is an optimisation: the requests compute what it could not
            log.exception("warming the answer cache stopped")

    def raw(self, dense: np.ndarray | None, tail: int = 50) -> list[int]:
        return [] if dense is None else self.item_ids[np.asarray(dense[-tail:]) - 1].tolist()

    def similar(self, item_id: int, k: int, filters: dict[str, list[str]] | None = None) -> dict:
        dense = self.scorer.dense([item_id])
        if len(dense) == 0:
            raise NotFoundError(f"unknown item id {item_id} (not in the catalogue of model "
                                f"{self.info.name}/{self.info.version})")
        ok = self.allowed(dense, True, [], filters or {})
        # "Similar" = what the model expects next after this one item: defined for every family.
        items, scores = self.best(dense, ok, k)
        return {"item_id": item_id, "items": items, "scores": scores}

    def rank(self, user_id: int | None, history: list[int] | None, candidates: list[int]) -> dict:
        cand = self.known(candidates, "candidates")
        seen = self.history(user_id, history)
        if seen is not None and self.vectors is not None:  # only the candidates' rows
            s = (self.vectors.table[cand] @ self.model(seen)).astype(np.float64)
        else:
            s = self.scores(seen)[cand]
        order = np.argsort(-s, kind="stable")
        return {"items": [int(candidates[i]) for i in order], "scores": _finite(s[order]),
                "cold_start": seen is None, "history_length": 0 if seen is None else len(seen),
                "history_tail": self.raw(seen)}

    def card(self) -> dict:
        i = self.info
        return {"model": i.name, "version": i.version, "dataset": i.dataset, "family": i.family,
                "n_items": self.n_items}


def _cutoff(dataset: str | None, endpoint: str, settings: Settings) -> int:
    """The log position up to which `endpoint`'s events are already in the training data of `dataset` (or of
    an ancestor version it was derived from): applying them again would count them twice."""
    from aimass import datasets

    return datasets.folded_through(dataset, endpoint, settings=settings) if dataset else 0


def _finite(x: np.ndarray) -> list[float]:
    """JSON has no infinities: clip them to the float range."""
    return np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=1e300, neginf=-1e300).tolist()
