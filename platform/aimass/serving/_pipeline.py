"""Multi-stage recommendation: retrieval (a two-tower model scores the whole catalogue) -> ranking (SASRec
re-scores the candidates) -> rules (exclude seen, dedupe, at most N per artist / genre).

Each stage is an `Engine`. In Ray Serve each runs in its own deployment (scaled on its own) and the ingress
calls them through deployment handles; under a bare `bentoml serve` they run in-process. `Stages` hides
which, so the rules are written once."""
from __future__ import annotations

import asyncio

from aimass.errors import AimassError, InvalidInputError
from aimass.serving._engine import Engine
from aimass.settings import Settings

CANDIDATES_PER_ITEM = 5
MIN_CANDIDATES = 50


class StageServer:
    """What a stage exposes; the Serve deployment of a stage wraps exactly this."""

    def __init__(self, ref: str, settings: Settings | None = None):
        self.engine = Engine(ref, settings or Settings())

    def candidates(self, user_id, history, n, exclude_seen, exclude, filters, columns) -> dict:
        out = self.engine.recommend(user_id, history, n, exclude_seen, exclude, filters)
        dense = self.engine.scorer.dense(out["items"])
        out["attributes"] = {c: self.engine.columns[c][dense].tolist() for c in columns
                             if c in self.engine.columns}
        return out

    def rank(self, user_id, history, candidates) -> dict:
        return self.engine.rank(user_id, history, candidates)

    def card(self) -> dict:
        return self.engine.card()


class Stages:
    """Calls the two stages: Serve deployment handles when given, else in-process servers."""

    def __init__(self, retrieval, ranking, handles: bool):
        self.retrieval, self.ranking, self.handles = retrieval, ranking, handles

    @classmethod
    def local(cls, settings: Settings) -> Stages:
        if not settings.serve_ranker:
            raise InvalidInputError("a multi-stage service needs a ranking model (AIMASS_SERVE_RANKER)")
        return cls(StageServer(settings.serve_model, settings), StageServer(settings.serve_ranker, settings),
                   handles=False)

    async def call(self, stage, method: str, **kw):
        if self.handles:
            from ray.exceptions import RayTaskError

            try:
                return await getattr(stage, method).remote(**kw)
            except RayTaskError as e:  # a stage's own refusal: its message, not the remote traceback around it
                if isinstance(e.cause, AimassError):
                    raise e.cause from None
                raise
        return await asyncio.to_thread(getattr(stage, method), **kw)


async def recommend(stages: Stages, user_id, history, k, exclude_seen, exclude, filters,
                    max_per_artist: int | None, max_per_genre: int | None) -> dict:
    n = max(MIN_CANDIDATES, k * CANDIDATES_PER_ITEM)
    got = await stages.call(stages.retrieval, "candidates", user_id=user_id, history=history, n=n,
                            exclude_seen=exclude_seen, exclude=exclude, filters=filters,
                            columns=["artist", "genre", "genres"])
    items, scores = got["items"], got["scores"]
    if items and not got["cold_start"]:
        ranked = await stages.call(stages.ranking, "rank", user_id=user_id, history=history, candidates=items)
        items, scores = ranked["items"], ranked["scores"]
    attrs = {c: dict(zip(got["items"], v, strict=True)) for c, v in got["attributes"].items()}
    if "genre" not in attrs and "genres" in attrs:  # MovieLens's items: several genres an item, each one capped
        attrs["genre"] = {i: [g.strip() for g in str(v).replace("|", ",").split(",") if g.strip()]
                          for i, v in attrs.pop("genres").items()}
    items, scores = rules(items, scores, k, attrs, {"artist": max_per_artist, "genre": max_per_genre})
    return {"items": items, "scores": scores, "cold_start": got["cold_start"], "strategy": got["strategy"],
            "history_length": got["history_length"], "history_tail": got["history_tail"]}


def rules(items: list[int], scores: list[float], k: int, attrs: dict[str, dict[int, str]],
          caps: dict[str, int | None]) -> tuple[list[int], list[float]]:
    """Dedupe, then keep at most caps[column] items per value of that column (when the items table has it;
    an item with several values, a list, counts for each), in rank order, until k items are taken."""
    taken: list[int] = []
    kept: list[float] = []
    seen: set[int] = set()
    counts: dict[tuple[str, str], int] = {}
    for item, score in zip(items, scores, strict=True):
        if item in seen:
            continue
        keys = [(c, v) for c, cap in caps.items() if cap and c in attrs
                for v in _values(attrs[c].get(item)) if v]
        if any(counts.get(key, 0) >= caps[key[0]] for key in keys):
            continue
        seen.add(item)
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        taken.append(item)
        kept.append(score)
        if len(taken) == k:
            break
    return taken, kept


def _values(v) -> list:
    return v if isinstance(v, list) else [v]
