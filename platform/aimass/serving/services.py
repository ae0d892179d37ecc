"""The BentoML services: one per model family of the zoo (bentos/<family>/service.py imports its class from
here so that Ray Serve replicas import it too), plus the multi-stage pipeline. The type hints of the
`@bentoml.api` methods are the request schema; the return types are the response schema.

The family table is the zoo's registry: every family gets the generic single-model service under its zoo
class name (`service("sasrec")` is `SASRec`, importable as `aimass.serving.services.SASRec`), built on first
use so that importing this module imports no family. A family that needs more adds its class to SPECIAL.

A service is configured by its AIMASS_* variables (AIMASS_SERVE_MODEL, AIMASS_HOME, ...), which a Serve
deployment, a Bento's envs or the shell sets: its constructor is an entry point and parses Settings."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from http import HTTPStatus

import bentoml
from bentoml.exceptions import BentoMLException

from aimass import events as ev
from aimass import zoo
from aimass.errors import AimassError, InvalidInputError, NotFoundError
from aimass.serving import _pipeline, _search, _timeout, _v2
from aimass.serving._arms import Arms
from aimass.serving._engine import Engine
from aimass.serving._http import Gate, endpoint_of
from aimass.serving._schema import (
    Candidates,
    Exclude,
    ExcludeSeen,
    FeedbackAck,
    FeedbackBatch,
    FeedbackBody,
    FeedbackEvent,
    Filters,
    History,
    ItemId,
    K,
    MaxPer,
    ModelCard,
    PipelineRecommendation,
    Prefix,
    Query,
    Ranking,
    Recommendation,
    SearchMode,
    SearchResults,
    Similar,
    Suggestions,
    SuggestK,
    UserId,
)
from aimass.settings import Settings

TRAFFIC = {"timeout": 30, "max_concurrency": 256}
_timeout.install()  # BentoML's timeout without a live timer per request (see _timeout)


class _ClientErrors(logging.Filter):
    """BentoML logs every answer it turns into a 4xx (a body that fails validation, an aimass refusal) as an
    ERROR with its traceback and the offending input's values: any key holder could fill a replica's log with
    them and bury the real errors. The client gets the reason in its answer; a 5xx is still logged whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):  # the request's body, unless aimass's own code raised it (a bug
            return _raised_here(exc)  # BentoML answers with a 400 all the same)
        return not (isinstance(exc, BentoMLException) and int(exc.error_code) < 500)


def _raised_here(exc: BaseException) -> bool:
    """Whether a frame of aimass's own code is in `exc`'s traceback."""
    import traceback
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    return any(str(Path(f.filename).resolve()).startswith(root) for f in traceback.extract_tb(exc.__traceback__))


# the logger BentoML's log_exception writes to (once per process: a module is imported once)
logging.getLogger("bentoml._internal.server.http_app").addFilter(_ClientErrors())
# Every service's BentoML configuration. BentoML's own per-request metrics, access log and tracing spans are off:
# the gate answers /metrics, the served-answer log records every answer, and they cost a large share of a cheap
# route's CPU (its /metrics hung inside Serve anyway, ../shared/STACK.md). They are a service's options, not
# BENTOML_CONFIG_OPTIONS: to_asgi() merges each service's defaults over the api_server options of the
# environment, which is how the environment's switches were silently undone.
# The host: a bare `bentoml serve` of a Bento binds all interfaces otherwise (its /healthz and /docs.json answer
# without a key); `--host` still chooses another.
CONFIG = {"traffic": TRAFFIC, "metrics": {"enabled": False}, "logging": {"access": {"enabled": False}},
          "tracing": {"excluded_urls": ".*"}, "http": {"host": "127.0.0.1"}}
log = logging.getLogger(__name__)
_live: dict[type, object] = {}  # service class -> its instance in this process (for the HTTP gate)
_generic: dict[type, object] = {}  # a family's generic service class -> its BentoML service


class Unavailable(AimassError):
    """A store that cannot commit now: nothing was stored; the same request may be retried (503)."""


def live(service_class) -> object | None:
    """The instance of `service_class` this process serves, once BentoML has built it (else None)."""
    return _live.get(service_class)


@contextlib.contextmanager
def _errors():
    """aimass errors become 4xx answers naming the problem; anything else stays a 500 (a bug)."""
    try:
        yield
    except InvalidInputError as e:
        raise BentoMLException(str(e), error_code=HTTPStatus.BAD_REQUEST) from None
    except Unavailable as e:
        raise BentoMLException(str(e), error_code=HTTPStatus.SERVICE_UNAVAILABLE) from None
    except NotFoundError as e:
        raise BentoMLException(str(e), error_code=HTTPStatus.NOT_FOUND) from None
    except AimassError as e:
        raise BentoMLException(str(e), error_code=HTTPStatus.CONFLICT) from None


def _rid(ctx: bentoml.Context) -> str:
    return getattr(ctx.request.state, "request_id", None) or ""


def _served(engine: Engine, rid: str) -> dict:
    i = engine.info
    return {"model": i.name, "version": i.version, "dataset": i.dataset, "request_id": rid}


def _settings() -> tuple[Settings, bool]:
    """The replica's settings, and whether they name its endpoint (a deployment's replica) or only a model (a
    bare `bentoml serve`, whose feedback goes to an endpoint named after the model)."""
    s = Settings()
    if not s.serve_model:
        raise InvalidInputError("no model to serve: set AIMASS_SERVE_MODEL=NAME/VERSION (aimass deploy does)")
    if s.serve_endpoint:
        return s, True
    return s.model_copy(update={"serve_endpoint": endpoint_of(s)}), False


class _Feedback:
    """POST /feedback and the served-answer log, shared by every service."""

    def _start_feedback(self, s: Settings) -> None:
        self.settings, self.endpoint = s, s.serve_endpoint
        self.rules = ev.Rules.of(s)
        self.event_log = ev.EventLog(s)
        self.served_log = ev.ServedLog(s)
        _live[type(self)] = self

    def _record(self, ctx: bentoml.Context, route: str, served: dict, user_id: int | None, out: dict) -> dict:
        tail = out.pop("history_tail", [])
        self.served_log.record(self.endpoint, served["request_id"], route, served["model"], served["version"],
                               user_id, tail, out["items"], out["scores"], out.get("strategy", "model"),
                               history_length=out.get("history_length"))
        return out

    def _known(self, e: FeedbackEvent) -> tuple[bool | None, bool | None]:
        return None, None

    def _applied(self, rows: list[tuple]) -> None:
        """Own acknowledged events, applied before the answer leaves (other replicas poll for them)."""

    @bentoml.api
    async def feedback(self, body: FeedbackBody, /, ctx: bentoml.Context) -> FeedbackAck:
        """Store one event or a batch ({"events": [...]}, up to 1000), durably, before answering.

        The answer comes only once the events are committed to stable storage. A repeated event_id is stored
        once and answered with duplicate: true. Unknown users and items are stored (flagged known_user /
        known_item false); an unknown type, a malformed timestamp or an unknown field is refused (400), a
        timestamp more than a day ahead too (409), and nothing of the request is stored."""
        with _errors():
            return FeedbackAck(**await self.store(body, getattr(ctx.request.state, "request_id", None) or ""))

    async def store(self, body: FeedbackEvent | FeedbackBatch, request_id: str) -> dict:
        """What /feedback does with a validated body: FeedbackAck's fields, as plain data. The HTTP gate calls
        it directly with the body validated against this same signature (FEEDBACK_BODY) and sends the answer as
        JSON: BentoML's request machinery, and building and dumping the models, cost most of the route's CPU."""
        events = body.events if isinstance(body, FeedbackBatch) else [body]
        ev.check(events, self.rules, self.settings)
        # as the model knew them before this request: read before the commit, after which the replica's poll
        # may already have applied the request's own events
        known = [self._known(e) for e in events]
        try:
            acks = await self.event_log.append_async(self.endpoint, events)
        except Exception as e:  # the store is away: a retry with the same ids is safe
            log.exception("storing feedback failed")
            raise Unavailable(f"feedback not stored ({type(e).__name__}); retry with the same event_ids") from None
        self._applied([(a.seq, e.user_id, e.item_id, e.type, e.value, e.timestamp)
                       for a, e in zip(acks, events, strict=True) if not a.duplicate])
        out = [{"event_id": a.event_id, "seq": a.seq, "duplicate": a.duplicate, "known_user": k[0],
                "known_item": k[1]} for a, k in zip(acks, known, strict=True)]
        dup = sum(a.duplicate for a in acks)
        return {"stored": len(acks) - dup, "duplicates": dup, "duplicate": dup == len(acks), "events": out,
                "request_id": request_id}


class _SingleModel(_Feedback):
    """recommend / similar / rank over the registered versions of the endpoint's traffic split, in-process:
    each request is answered by its user's arm (sticky), named in the answer."""

    def __init__(self) -> None:
        s, deployed = _settings()
        self._start_feedback(s)
        # a bare `bentoml serve` of recs/1 answers with recs/1: an endpoint "recs" with a split of its own is
        # another service's, whose changes it must neither follow nor vote on
        self.arms = Arms(s, self.endpoint, s.serve_model, self._record_shadow, follow=deployed)
        self._pool = None  # recommend_body's threads, made at its first computed answer
        if self.engine.batcher is not None and type(self) in _generic:
            # BentoML runs a sync API in the service's `threads` threads, 1 unless configured: requests one at a
            # time leave the batcher nothing to batch (measured: a mean batch of 1.0). The limiter reads the
            # number at the first request, so this replica's own setting counts. Generic services only: the
            # search service's query-vector cache is a plain OrderedDict, kept to one thread.
            _generic[type(self)].config["threads"] = min(s.serve_batch_max, TRAFFIC["max_concurrency"])

    @property
    def engine(self) -> Engine:
        """The first arm's engine (the control)."""
        return self.arms.primary()

    def _known(self, e: FeedbackEvent) -> tuple[bool | None, bool | None]:
        engine = self.engine
        online = engine.online
        user = int(e.user_id) in engine.histories or (online is not None and int(e.user_id) in online.extra)
        return user, int(e.item_id) in engine.dense_of

    def _applied(self, rows: list[tuple]) -> None:
        for engine in list(self.arms.engines.values()):
            if engine.online is not None and rows:
                engine.online.apply(rows, own=True)

    def _answer(self, rid: str, route: str, user_id: int | None, call, query: str | None = None,
                picked: tuple | None = None, cached: bool = False) -> tuple[dict, dict, object] | None:
        """The request's arm (`picked`, or picked now) computes `call(engine)`; (served fields, answer, routing
        table) with latency, or None when the call answers None (nothing recorded). `cached`: the call only
        takes an answer the cache holds, recorded as such (an experiment's latency guardrail compares computed
        answers: the control's cache is warm when a canary's starts cold)."""
        t, ref, engine = picked or self.arms.pick(user_id)
        t0 = time.perf_counter()
        self.arms.delay(t, ref)
        served = {**_served(engine, rid), "arm": ref, "experiment_id": t.experiment_id}
        try:
            with _errors():
                out = call(engine)
            if out is None:
                return None
        except BentoMLException:  # the client's mistake (4xx): not the arm's failure
            raise
        except Exception:  # the arm failed (a 5xx): counted against it by the experiment's error guardrail
            self.served_log.record(self.endpoint, served["request_id"], route, served["model"], served["version"],
                                   user_id, [], [], [], "error", arm=ref, experiment_id=t.experiment_id,
                                   latency_ms=round((time.perf_counter() - t0) * 1000, 3), query=query)
            raise
        ms = (time.perf_counter() - t0) * 1000
        tail = out.pop("history_tail", [])
        self.served_log.record(self.endpoint, served["request_id"], route, served["model"], served["version"],
                               user_id, tail, out["items"], out["scores"], out.get("strategy", "model"), arm=ref,
                               experiment_id=t.experiment_id, latency_ms=round(ms, 3), query=query,
                               mode=out.pop("logged_mode", None), history_length=out.get("history_length"),
                               cached=out.pop("cached", False) or cached)
        return served, out, t

    def _record_shadow(self, engine: Engine, t, request_id: str, user_id: int | None, out: dict, overlap: float,
                       ms: float) -> None:
        i = engine.info
        self.served_log.record(self.endpoint, request_id, "recommend", i.name, i.version, user_id,
                               out.get("history_tail", []), out["items"], out["scores"], out.get("strategy", "model"),
                               arm=t.shadow, experiment_id=t.experiment_id, latency_ms=round(ms, 3), shadow=True,
                               overlap=round(overlap, 4), history_length=out.get("history_length"),
                               cached=bool(out.get("cached")))

    @bentoml.api
    def recommend(self, ctx: bentoml.Context, user_id: UserId | None = None, history: History | None = None,
                  k: K = 10, exclude_seen: ExcludeSeen = True, exclude: Exclude | None = None,
                  filters: Filters | None = None) -> Recommendation:
        """Top-k items for a user id or an explicit recent-items history (which takes precedence). A user id's
        history includes its positive feedback since training. An unknown user with no history gets trending
        or popular items, marked cold_start. The answer names the traffic arm that gave it."""
        req = {"user_id": user_id, "history": history, "k": k, "exclude_seen": exclude_seen, "exclude": exclude,
               "filters": filters}
        served, out = self._recommend(_rid(ctx), req)
        return Recommendation(**served, **out)

    async def recommend_body(self, req: dict, rid: str) -> bytes:
        """What POST /recommend answers (a Recommendation's JSON) for a request validated against the route's
        own signature, without BentoML's request machinery, which the HTTP gate skips for this route (most of a
        cheap answer's CPU): an answer the cache holds is taken in the event loop, any other is computed in the
        service's threads, as many as BentoML would run (`threads`)."""
        picked = self.arms.pick(req["user_id"])
        # the cached answer is taken in one step with the arm it was checked on: checked, then taken after a
        # feedback event or a split change, it could be gone and computed here, holding the event loop
        got = None if picked[0].delays.get(picked[1]) else self._recommend(rid, req, picked, cached=True)
        if got is None:
            if self._pool is None:
                import concurrent.futures

                threads = _generic[type(self)].config.get("threads", 1) if type(self) in _generic else 1
                self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="aimass-recommend")
            got = await asyncio.get_running_loop().run_in_executor(self._pool, self._recommend, rid, req, picked)
        served, out = got
        return Recommendation(**served, **out).model_dump_json().encode()

    def _recommend(self, rid: str, req: dict, picked: tuple | None = None,
                   cached: bool = False) -> tuple[dict, dict] | None:
        """(served fields, answer) of /recommend; with `cached`, only an answer the cache holds (else None)."""
        got = self._answer(rid, "recommend", req["user_id"],
                           (lambda e: e.cached(**req)) if cached else (lambda e: e.recommend(**req, mark_hit=True)),
                           picked=picked,
                           cached=cached)
        if got is None:
            return None
        served, out, t = got
        self.arms.copy_to_shadow(t, req, out, served["request_id"])
        return served, out

    def infer_v2(self, p: _v2.Parsed, rid: str) -> dict:
        """An Open Inference Protocol v2 request (aimass.serving._v2): /recommend for each of its users, each
        answer logged under a request id of its own (the request's, suffixed by the row when there are several)."""
        rows = []
        for i, user in enumerate(p.users):
            req = {"user_id": user, "history": None, "k": p.k, "exclude_seen": True, "exclude": None,
                   "filters": None}
            rows.append(self._recommend(rid if len(p.users) == 1 else f"{rid[:56]}-{i}", req))
        return _v2.response(self.endpoint, p, rows)

    @bentoml.api
    def similar(self, ctx: bentoml.Context, item_id: ItemId, k: K = 10,
                filters: Filters | None = None) -> Similar:
        """Items the model most expects after `item_id` (answered by the split's first arm: no user to stick
        to)."""
        def call(e: Engine) -> dict:
            out = e.similar(item_id, k, filters)
            return {**out, "history_tail": [item_id]}

        served, out, _ = self._answer(_rid(ctx), "similar", None, call)
        return Similar(**served, **out)

    @bentoml.api
    def rank(self, ctx: bentoml.Context, items: Candidates, user_id: UserId | None = None,
             history: History | None = None) -> Ranking:
        """Score and order a candidate list for a user id or a history."""
        served, out, _ = self._answer(_rid(ctx), "rank", user_id, lambda e: e.rank(user_id, history, items))
        return Ranking(**served, **out)

    @bentoml.api(route="/admin/info")
    def admin_info(self, ctx: bentoml.Context) -> ModelCard:
        """The first arm's version and its lineage (admin key); `aimass traffic show` has the whole split."""
        engine = self.engine
        t = self.arms.table
        return ModelCard(**{**_served(engine, _rid(ctx)), "arm": t.bounds[0][0], "experiment_id": t.experiment_id,
                            **engine.card()})


@bentoml.service(name="aimass-pipeline", **CONFIG)
class Pipeline(_Feedback):
    """retrieval (AIMASS_SERVE_MODEL, two-tower) -> ranking (AIMASS_SERVE_RANKER, SASRec) -> rules."""

    def __init__(self) -> None:
        from aimass.serving import app

        s, _ = _settings()
        self.stages = app.stage_handles() or _pipeline.Stages.local(s)
        self.cards: tuple[dict, dict] | None = None
        self._start_feedback(s)

    def _applied(self, rows: list[tuple]) -> None:
        """In-process stages (a bare `bentoml serve`) apply the replica's own events before the answer, as a
        single model does. Stages behind Serve handles learn them by polling the log only: a call through a
        handle reaches one replica of the stage's deployment, not the one the user's next request will reach,
        so it could not keep that promise and would only cost /feedback a remote call per stage."""
        if self.stages.handles or not rows:
            return
        for stage in (self.stages.retrieval, self.stages.ranking):
            if stage.engine.online is not None:
                stage.engine.online.apply(rows, own=True)

    async def _cards(self) -> tuple[dict, dict]:
        if self.cards is None:  # set once both are in: a request arriving between the two awaits fetches its own
            self.cards = (await self.stages.call(self.stages.retrieval, "card"),
                          await self.stages.call(self.stages.ranking, "card"))
        return self.cards

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
        served = await self._served(ctx)
        return PipelineRecommendation(**served, **self._record(ctx, "recommend", served, user_id, out))

    @bentoml.api(route="/admin/info")
    async def admin_info(self, ctx: bentoml.Context) -> ModelCard:
        """The served versions of both stages (admin key)."""
        r, q = await self._cards()
        return ModelCard(**await self._served(ctx), family="pipeline", n_items=q["n_items"])


@bentoml.service(name="aimass-search", **CONFIG)
class Search(_SingleModel):
    """search and suggest over a registered search index (family `search`: BM25 and MiniLM vectors), besides
    the recommend / similar / rank every model answers; splits and rollbacks as for any model (a shadow arm
    sees the /recommend traffic only)."""

    def __init__(self) -> None:
        super().__init__()
        self.past = _search.PastQueries(self.served_log, self.endpoint)

    @bentoml.api
    def search(self, ctx: bentoml.Context, query: Query, k: K = 10, mode: SearchMode | None = None,
               user_id: UserId | None = None, filters: Filters | None = None) -> SearchResults:
        """The k best items for a query: words (BM25), meaning (MiniLM) or both fused (hybrid). With a known
        user_id, the user's history (with their feedback since training) reorders the results; an unknown user
        gets them unpersonalised. Items the user disliked (negative feedback) are left out. A word the catalogue
        lacks is corrected (`corrected` says to what). Clicks on results go to POST /feedback with this answer's
        request_id."""
        served, out, _ = self._answer(
            _rid(ctx), "search", user_id, lambda e: _search.search(e, query, k, mode, user_id, filters),
            query=_search.loggable(query))
        return SearchResults(**served, **{k_: v for k_, v in out.items() if k_ != "strategy"})

    @bentoml.api
    def suggest(self, ctx: bentoml.Context, prefix: Prefix, k: SuggestK = 5,
                user_id: UserId | None = None) -> Suggestions:
        """Completions of what the user has typed: item titles whose start, or a word's, matches the prefix, by
        popularity and, with a known user_id, by what the user's history goes with (never an item the user
        disliked); then the endpoint's past queries that several users asked. An unknown user gets the same
        completions as no user."""
        t, ref, engine = self.arms.pick(user_id)
        with _errors():
            out = _search.suggest(engine, prefix, k, self.past, user_id)
        return Suggestions(**_served(engine, _rid(ctx)), arm=ref, experiment_id=t.experiment_id, prefix=prefix,
                           **out)


Search.add_asgi_middleware(Gate, service=Search)


def _lineage(card: dict) -> dict:
    return {k: card[k] for k in ("model", "version", "dataset")}


Pipeline.add_asgi_middleware(Gate, service=Pipeline)
SPECIAL = {"pipeline": Pipeline, "search": Search}


def _fast_root_input(svc) -> None:
    """BentoML rebuilds the JSON schema of a whole-body (root) input on every request to learn its media type
    (_bentoml_sdk.io_models.IORootModel.model_validate_json): a TypeAdapter per request, most of /feedback's
    CPU. The schema never changes, so the request path gets it from a cache; callers with arguments (the
    OpenAPI document) still get a fresh copy."""
    spec = svc.apis["feedback"].input_spec
    spec.media_type = "application/json"
    build = spec.model_json_schema
    cached = build()

    def model_json_schema(*args, **kwargs):
        return build(*args, **kwargs) if args or kwargs else cached

    spec.model_json_schema = model_json_schema


def _strict_inputs(svc) -> None:
    """A body field the route does not have is refused (400 naming it), as /feedback's is: BentoML's input
    models ignore it, so {"filter": ...} for `filters` answered 200, unfiltered. The document then says
    additionalProperties: false, which it is.

    Once per input model: every family's service shares _SingleModel's, and each rebuild doubles what an
    optional or listed field's annotation holds (BentoML's patch_annotation re-wraps it on every schema build),
    so a process that built five services failed at the fifth with a RecursionError."""
    for api in svc.apis.values():
        spec = api.input_spec
        if not getattr(spec, "__root_input__", False) and spec.model_config.get("extra") != "forbid":
            spec.model_config["extra"] = "forbid"
            spec.model_rebuild(force=True)


for _svc in (Pipeline, Search):
    _fast_root_input(_svc)
    _strict_inputs(_svc)


def servable() -> list[str]:
    """Every family a deployment may name: the zoo's, and the special services."""
    return [*zoo.families(), *(f for f in SPECIAL if f not in zoo.families())]


@functools.cache  # one class per family: BentoML and the Bento's import path must see the same object
def service(family: str):
    """The BentoML service of `family`: its special one, or the generic single-model service named after
    the zoo's class (and so its own Bento and OpenAPI title)."""
    if family in SPECIAL:
        return SPECIAL[family]
    name = zoo.family_class(family).__name__  # refuses an unknown family, naming the known ones
    cls = type(name, (_SingleModel,), {"__module__": __name__, "__doc__": f"The {family} service: recommend, "
                                       "similar and rank with one registered model version."})
    svc = bentoml.service(name=f"aimass-{family}", **CONFIG)(cls)
    _generic[cls] = svc
    svc.add_asgi_middleware(Gate, service=svc)
    _fast_root_input(svc)
    _strict_inputs(svc)
    return svc


def __getattr__(name: str):
    """`from aimass.serving.services import SASRec` (what bentos/<family>/service.py does)."""
    for family in zoo.families():
        if family.replace("-", "").lower() == name.lower():
            return service(family)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
