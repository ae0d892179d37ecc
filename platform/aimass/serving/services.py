"""The BentoML services: one per model family of the zoo (bentos/<family>/service.py imports its class from
here so that Ray Serve replicas import it too), plus the multi-stage pipeline. The type hints of the
`@bentoml.api` methods are the request schema; the return types are the response schema.

The family table is the zoo's registry: every family gets the generic single-model service under its zoo
class name (`service("sasrec")` is `SASRec`, importable as `aimass.serving.services.SASRec`), built on first
use so that importing this module imports no family. A family that needs more adds its class to SPECIAL.

A service is configured by its AIMASS_* variables (AIMASS_SERVE_MODEL, AIMASS_HOME, ...), which a Serve
deployment, a Bento's envs or the shell sets: its constructor is an entry point and parses Settings."""
from __future__ import annotations

import contextlib
import functools
from http import HTTPStatus

import bentoml
from bentoml.exceptions import BentoMLException

from aimass import zoo
from aimass.errors import AimassError, InvalidInputError, NotFoundError
from aimass.serving import _pipeline
from aimass.serving._engine import Engine
from aimass.serving._http import Gate
from aimass.serving._schema import (
    Candidates,
    Exclude,
    ExcludeSeen,
    Filters,
    History,
    ItemId,
    K,
    MaxPer,
    ModelCard,
    PipelineRecommendation,
    Ranking,
    Recommendation,
    Similar,
    UserId,
)
from aimass.settings import Settings

TRAFFIC = {"timeout": 30, "max_concurrency": 256}


@contextlib.contextmanager
def _errors():
    """aimass errors become 4xx answers naming the problem; anything else stays a 500 (a bug)."""
    try:
        yield
    except InvalidInputError as e:
        raise BentoMLException(str(e), error_code=HTTPStatus.BAD_REQUEST) from None
    except NotFoundError as e:
        raise BentoMLException(str(e), error_code=HTTPStatus.NOT_FOUND) from None
    except AimassError as e:
        raise BentoMLException(str(e), error_code=HTTPStatus.CONFLICT) from None


def _served(engine: Engine, ctx: bentoml.Context) -> dict:
    i = engine.info
    rid = getattr(ctx.request.state, "request_id", None) or ""
    return {"model": i.name, "version": i.version, "dataset": i.dataset, "request_id": rid}


def _settings() -> Settings:
    s = Settings()
    if not s.serve_model:
        raise InvalidInputError("no model to serve: set AIMASS_SERVE_MODEL=NAME/VERSION (aimass deploy does)")
    return s


class _SingleModel:
    """recommend / similar / rank over one registered model version, in-process."""

    def __init__(self) -> None:
        s = _settings()
        self.engine = Engine(s.serve_model, s)

    @bentoml.api
    def recommend(self, ctx: bentoml.Context, user_id: UserId | None = None, history: History | None = None,
                  k: K = 10, exclude_seen: ExcludeSeen = True, exclude: Exclude | None = None,
                  filters: Filters | None = None) -> Recommendation:
        """Top-k items for a user id or an explicit recent-items history (which takes precedence). An unknown
        user with no history gets popular items, marked cold_start."""
        with _errors():
            out = self.engine.recommend(user_id, history, k, exclude_seen, exclude, filters)
        return Recommendation(**_served(self.engine, ctx), **out)

    @bentoml.api
    def similar(self, ctx: bentoml.Context, item_id: ItemId, k: K = 10,
                filters: Filters | None = None) -> Similar:
        """Items the model most expects after `item_id`."""
        with _errors():
            out = self.engine.similar(item_id, k, filters)
        return Similar(**_served(self.engine, ctx), **out)

    @bentoml.api
    def rank(self, ctx: bentoml.Context, items: Candidates, user_id: UserId | None = None,
             history: History | None = None) -> Ranking:
        """Score and order a candidate list for a user id or a history."""
        with _errors():
            out = self.engine.rank(user_id, history, items)
        return Ranking(**_served(self.engine, ctx), **out)

    @bentoml.api(route="/admin/info")
    def admin_info(self, ctx: bentoml.Context) -> ModelCard:
        """The served version and its lineage (admin key)."""
        return ModelCard(**{**_served(self.engine, ctx), **self.engine.card()})


@bentoml.service(name="aimass-pipeline", traffic=TRAFFIC)
class Pipeline:
    """retrieval (AIMASS_SERVE_MODEL, two-tower) -> ranking (AIMASS_SERVE_RANKER, SASRec) -> rules."""

    def __init__(self) -> None:
        from aimass.serving import app

        s = _settings()
        self.stages = app.stage_handles() or _pipeline.Stages.local(s)
        self.retrieval_card = None

    async def _cards(self) -> tuple[dict, dict]:
        if self.retrieval_card is None:
            self.retrieval_card = await self.stages.call(self.stages.retrieval, "card")
            self.ranking_card = await self.stages.call(self.stages.ranking, "card")
        return self.retrieval_card, self.ranking_card

    async def _served(self, ctx: bentoml.Context) -> dict:
        r, q = await self._cards()
        rid = getattr(ctx.request.state, "request_id", None) or ""
        stages = [{"stage": "retrieval", **_lineage(r)}, {"stage": "ranking", **_lineage(q)}]
        return {"model": q["model"], "version": q["version"], "dataset": q["dataset"], "request_id": rid,
                "stages": stages}

    @bentoml.api
    async def recommend(self, ctx: bentoml.Context, user_id: UserId | None = None,
                        history: History | None = None, k: K = 10, exclude_seen: ExcludeSeen = True,
                        exclude: Exclude | None = None, filters: Filters | None = None,
                        max_per_artist: MaxPer | None = 2,
                        max_per_genre: MaxPer | None = None) -> PipelineRecommendation:
        """Retrieval, ranking and rules in one call; model/version name the ranking stage, `stages` both."""
        with _errors():
            out = await _pipeline.recommend(self.stages, user_id, history, k, exclude_seen, exclude or [],
                                            filters or {}, max_per_artist, max_per_genre)
        return PipelineRecommendation(**await self._served(ctx), **out)

    @bentoml.api(route="/admin/info")
    async def admin_info(self, ctx: bentoml.Context) -> ModelCard:
        """The served versions of both stages (admin key)."""
        r, q = await self._cards()
        return ModelCard(**await self._served(ctx), family="pipeline", n_items=q["n_items"])


def _lineage(card: dict) -> dict:
    return {k: card[k] for k in ("model", "version", "dataset")}


Pipeline.add_asgi_middleware(Gate, service=Pipeline)
SPECIAL = {"pipeline": Pipeline}


def servable() -> list[str]:
    """Every family a deployment may name: the zoo's, and the special services."""
    return [*zoo.families(), *SPECIAL]


@functools.cache  # one class per family: BentoML and the Bento's import path must see the same object
def service(family: str):
    """The BentoML service of `family`: its special one, or the generic single-model service named after
    the zoo's class (and so its own Bento and OpenAPI title)."""
    if family in SPECIAL:
        return SPECIAL[family]
    name = zoo.family_class(family).__name__  # refuses an unknown family, naming the known ones
    cls = type(name, (_SingleModel,), {"__module__": __name__, "__doc__": f"The {family} service: recommend, "
                                       "similar and rank with one registered model version."})
    svc = bentoml.service(name=f"aimass-{family}", traffic=TRAFFIC)(cls)
    svc.add_asgi_middleware(Gate, service=svc)
    return svc


def __getattr__(name: str):
    """`from aimass.serving.services import SASRec` (what bentos/<family>/service.py does)."""
    for family in zoo.families():
        if family.replace("-", "").lower() == name.lower():
            return service(family)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
