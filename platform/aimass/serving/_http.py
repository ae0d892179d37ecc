"""The HTTP gate in front of every served Bento (an ASGI middleware, so it runs the same under `bentoml
serve` and inside Ray Serve): API keys, body-size limit, request ids, /healthz, our own Prometheus /metrics
(BentoML's hung inside Serve, ../shared/STACK.md), the OpenAPI document (_openapi) and one error body
(`{"error": ..., "detail": [...]}`) for every 4xx and 5xx, whoever produced it. Keys are never logged or
echoed."""
from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from aimass.errors import BackendError
from aimass.serving import _v2
from aimass.serving._keys import Verifier, endpoints_of
from aimass.settings import Settings

OPEN = {"/healthz", "/livez", "/readyz", "/docs", "/docs.json", "/schema.json", "/", "/favicon.ico",
        "/v2/health/live", "/v2/health/ready"}
OPEN_PREFIXES = ("/static_content/",)
UNAUTHORIZED = ("missing, malformed, unknown, revoked or expired API key: send 'Authorization: Bearer <key>' "
                "(aimass keys create)")
_OURS = {"/healthz": "GET", "/docs.json": "GET", "/metrics": "GET"}  # routes the gate answers itself
_UNEXPECTED = "An unexpected error has occurred, please check the server log."  # BentoML's words for a 5xx
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # what /feedback's request_id accepts, so every answer can be named
# Request ids must be unique, not secret: uuid4 reads os.urandom, which cost over a millisecond per call on a
# busy sandboxed host; a generator seeded once from it costs a microsecond.
_ids = random.Random()
log = logging.getLogger(__name__)


def is_admin(path: str) -> bool:
    return path == "/metrics" or path.startswith("/admin/")


def endpoint_of(settings: Settings) -> str | None:
    """The endpoint a replica serves: its deployment's, or for a bare `bentoml serve` (which names none) one
    named after the model, which its feedback is logged under: lower-cased, '.' and '_' as '-', at most 40
    characters, so that it is an endpoint name (`My_Model.v2` -> `my-model-v2`); as written, monitoring and key
    scopes refused it, and its feedback could be neither read nor keyed."""
    if settings.serve_endpoint:
        return settings.serve_endpoint
    if not settings.serve_model:
        return None
    return re.sub(r"[._]", "-", settings.serve_model.split("/")[0].split("@")[0].lower())[:40]


class Gate:
    def __init__(self, app, service):
        self.app = app
        self.settings = Settings()  # a serving process's entry point: its AIMASS_* variables
        self.verifier = Verifier(self.settings)
        self.endpoint = endpoint_of(self.settings)  # what a scoped key must name
        self.service = service
        self.routes = {api.route for api in service.apis.values()}
        self.docs: dict[str, bytes] = {}  # by mount prefix
        self.in_serve = _in_serve()
        self.registry = CollectorRegistry()
        self.requests = Counter("aimass_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("aimass_request_duration_seconds", "Time to answer, by route", ["route"],
                                 registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.registry.register(_EngineStats(self._live))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        root, path = scope.get("root_path", ""), scope["path"]
        path = path[len(root):] or "/" if root and path.startswith(root) else path
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id") or None  # an empty header names no id
        route = path if path in self.routes or path in OPEN or path in _OURS else _v2.label(path)
        status = 500  # what the server's last resort answers for an error that escapes
        try:
            if rid is not None and not _RID.fullmatch(rid):  # Serve's own middleware echoes the header as sent:
                rid = f"{_ids.getrandbits(128):032x}"  # the answer's body and log must not name another id
                status = await _reply(send, 400, {"error": "X-Request-ID must be 1-64 letters, digits or . _ - "
                                                           "(what feedback's request_id accepts)"},
                                      [] if self.in_serve else [(b"x-request-id", rid.encode())])
                return
            rid = rid or f"{_ids.getrandbits(128):032x}"
            scope.setdefault("state", {})["request_id"] = rid
            status = await self._handle(scope, receive, send, path, headers, rid)
        except asyncio.CancelledError:  # the service's timeout cancelled it, and answers 504
            status = 504
            raise
        finally:  # counted whatever ended it: a replica in trouble must not go quiet in /metrics
            self.requests.labels(route, str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - t0)

    async def _handle(self, scope, receive, send, path, headers, rid) -> int:
        tag = [] if self.in_serve else [(b"x-request-id", rid.encode())]  # Serve sets it on every response
        if path in _OURS and scope["method"] not in (_OURS[path], "HEAD"):
            return await _reply(send, 405, {"error": f"{scope['method']} is not allowed on {path}"},
                                [*tag, (b"allow", _OURS[path].encode())])
        if path == "/healthz":
            return await _reply(send, 200, {"status": "ok"}, tag)
        if path == "/docs.json":
            return await _reply(send, 200, self._document(scope.get("root_path", "")), tag)
        if path in _v2.HEALTH:
            if scope["method"] not in ("GET", "HEAD"):
                return await _reply(send, 405, {"error": f"{scope['method']} is not allowed on {path}"},
                                    [*tag, (b"allow", b"GET")])
            ready = path.endswith("/live") or self._live() is not None
            return await _reply(send, 200 if ready else 503, {"live" if path.endswith("/live") else "ready": ready},
                                tag)
        if not (path in OPEN or path.startswith(OPEN_PREFIXES)):
            auth = headers.get("authorization", "")
            try:
                presented = auth[7:].strip() if auth[:7].lower() == "bearer " else None
                # a read of the catalog (a reload of the table, a slow server) off the event loop: the replica's
                # other requests, its health checks among them, go on meanwhile
                row = (self.verifier.record(presented) if self.verifier.answers_now(presented)
                       else await asyncio.to_thread(self.verifier.record, presented))
            except Exception as e:  # the catalog is away for a moment: no key can be checked, so none passes
                if not isinstance(e, BackendError):  # the failed read itself, not each request refused after it
                    log.exception("reading the API keys failed")
                return await _reply(send, 503, {"error": "API keys cannot be checked right now; retry"},
                                    [*tag, (b"retry-after", b"1")])
            if row is None:
                return await _reply(send, 401, {"error": UNAUTHORIZED},
                                    [*tag, (b"www-authenticate", b"Bearer")])
            allowed = endpoints_of(row)
            if allowed is not None and self.endpoint not in allowed:
                return await _reply(send, 403, {"error": f"this API key is not valid for the endpoint "
                                                         f"{self.endpoint!r}"}, tag)
            if is_admin(path) and row.role != "admin":
                return await _reply(send, 403, {"error": f"{path} needs an admin key"}, tag)
        if path == "/metrics":
            return await _reply(send, 200, generate_latest(self.registry), tag,
                                content_type=CONTENT_TYPE_LATEST.encode())
        ctype = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if path in self.routes and ctype != "application/json":  # BentoML would try a form, or answer 500
            return await _reply(send, 415, {"error": f"send the body as Content-Type: application/json, not "
                                                     f"{ctype[:60] or 'an empty type'}"}, tag)
        if not (path in self.routes or path.startswith("/v2/models/")):
            # no body to read (docs, health, an unknown path): a trickled one must not hold a slot for 30 s
            return await self._passed(scope, receive, send, tag, None)
        limit = self.settings.feedback_max_body_bytes if path == "/feedback" else self.settings.serve_max_body_bytes
        declared = headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            return await _reply(send, 413, {"error": f"request body larger than {limit} bytes"}, tag)
        body, more = b"", True
        while more:  # read the whole (bounded) body first, so an oversized chunked body is refused too
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return 499
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > limit:
                return await _reply(send, 413, {"error": f"request body larger than {limit} bytes"}, tag)
        if path.startswith("/v2/models/"):
            return await self._v2(scope["method"], path, body, send, tag, rid)
        if path == "/feedback" and scope["method"] == "POST":
            from aimass.serving.services import live

            handler = live(getattr(self.service, "inner", self.service))
            if handler is not None:
                return await _feedback(handler, body, send, tag, rid)
        if path == "/recommend" and scope["method"] == "POST":
            handler = self._live()
            if handler is not None and hasattr(handler, "recommend_body"):
                return await _recommend(handler, self.service.apis["recommend"].input_spec, body, send, tag, rid)
        return await self._passed(scope, receive, send, tag, body)

    async def _passed(self, scope, receive, send, tag: list, body: bytes | None) -> int:
        """The request handed to BentoML's app (the body already read, or None: left to the app), its answer
        tagged and any error rewritten to the one error shape."""
        replayed = body is None

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        status, held, chunks = 500, None, []

        async def tagged_send(msg):
            nonlocal status, held
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", []), *tag]}
                if status >= 400:  # held back to rewrite the body below
                    held = msg
                    return
            elif held is not None and msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))
                if msg.get("more_body"):
                    return
                body = _error_body(b"".join(chunks), status)
                hs = [(k, v) for k, v in held["headers"] if k.lower() not in (b"content-length", b"content-type")]
                await send({**held, "headers": [*hs, (b"content-type", b"application/json"),
                                                (b"content-length", str(len(body)).encode())]})
                msg = {"type": "http.response.body", "body": body}
            await send(msg)

        await self.app(scope, replay, tagged_send)
        return status

    def _live(self):
        from aimass.serving.services import live

        return live(getattr(self.service, "inner", self.service))

    async def _v2(self, method: str, path: str, body: bytes, send, tag: list, rid: str) -> int:
        """The Open Inference Protocol's model routes (aimass.serving._v2), answered here: BentoML routes take
        no path parameters, and the model's name in the path is the endpoint's."""
        import anyio
        from bentoml.exceptions import BentoMLException

        from aimass.errors import InvalidInputError, NotFoundError

        handler = self._live()
        if handler is None:
            return await _reply(send, 503, {"error": "the service is starting"}, tag)
        if not hasattr(handler, "infer_v2"):
            return await _reply(send, 404, {"error": "the v2 inference protocol serves single-model endpoints "
                                                     "(use /recommend here)"}, tag)
        try:
            what = _v2.route(path, handler.endpoint)
        except NotFoundError as e:
            return await _reply(send, 404, {"error": str(e)}, tag)
        if what is None:
            return await _reply(send, 404, {"error": f"no route {path[:100]}"}, tag)
        allowed = "POST" if what == "infer" else "GET"
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            return await _reply(send, 405, {"error": f"{method} is not allowed on {path[:100]}"},
                                [*tag, (b"allow", allowed.encode())])
        if what == "ready":
            return await _reply(send, 200, {"name": handler.endpoint, "ready": True}, tag)
        if what == "metadata":
            return await _reply(send, 200, _v2.metadata(handler.endpoint, handler.engine.info.version), tag)
        try:
            parsed = _v2.parse(body)
            answer = await anyio.to_thread.run_sync(handler.infer_v2, parsed, rid)
        except InvalidInputError as e:
            return await _reply(send, 400, {"error": str(e)}, tag)
        except NotFoundError as e:
            return await _reply(send, 404, {"error": str(e)}, tag)
        except BentoMLException as e:  # the recommend path's own 4xx (its errors, mapped by services._errors)
            status = int(e.error_code)
            return await _reply(send, status, {"error": str(e) if status < 500 else _UNEXPECTED}, tag)
        except Exception:
            log.exception("v2 inference failed")
            return await _reply(send, 500, {"error": _UNEXPECTED}, tag)
        return await _reply(send, 200, answer, tag)

    def _document(self, prefix: str) -> bytes:
        if prefix not in self.docs:
            from aimass.events import Rules
            from aimass.serving._openapi import document

            self.docs[prefix] = json.dumps(document(self.service, prefix, unauthorized=UNAUTHORIZED,
                                                    event_types=Rules.of(self.settings).types,
                                                    is_admin=is_admin)).encode()
        return self.docs[prefix]


class _EngineStats:
    """Read at each scrape, over every version this replica serves:
    - aimass_answer_cache_total{result=hit|miss}: /recommend answers taken from the cache (serving/_cache.py);
    - aimass_answer_cache_warmed: answers computed into it when a version was loaded (Engine.warm);
    - aimass_model_passes_total and aimass_model_pass_rows_total: the model's batched passes and the requests
      they answered (serving/_batch.py); rows / passes is the mean batch size;
    - aimass_shadow_dropped_total: requests not copied to the shadow arm (its queue full);
    - aimass_feedback_commits_total and aimass_feedback_committed_events_total: this replica's group commits of
      feedback and the events they held; events / commits is the mean group."""

    def __init__(self, handler):
        self.handler = handler

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        served = self.handler()
        engines = list(getattr(getattr(served, "arms", None), "engines", {}).values())
        gone = getattr(getattr(served, "arms", None), "released", {})  # engines a split change dropped
        caches = [e.cache for e in engines if getattr(e, "cache", None) is not None]
        family = CounterMetricFamily("aimass_answer_cache", "Answers of /recommend from the replica's cache, "
                                     "by result", labels=["result"])
        family.add_metric(["hit"], sum(c.hits for c in caches) + gone.get("hits", 0))
        family.add_metric(["miss"], sum(c.misses for c in caches) + gone.get("misses", 0))
        yield family
        yield GaugeMetricFamily("aimass_answer_cache_warmed", "Answers computed into the cache when a version "
                                "was loaded (AIMASS_SERVE_CACHE_WARM_USERS)",
                                value=sum(getattr(e, "warmed", 0) for e in engines))
        batchers = [e.batcher for e in engines if getattr(e, "batcher", None) is not None]
        yield CounterMetricFamily("aimass_model_passes", "Batched passes of the model",
                                  value=sum(b.batches for b in batchers) + gone.get("batches", 0))
        yield CounterMetricFamily("aimass_model_pass_rows", "Requests answered by batched passes of the model",
                                  value=sum(b.rows for b in batchers) + gone.get("rows", 0))
        yield CounterMetricFamily("aimass_shadow_dropped", "Requests not copied to the shadow: its queue was full",
                                  value=getattr(getattr(served, "arms", None), "shadow_dropped", 0))
        log = getattr(served, "event_log", None)
        yield CounterMetricFamily("aimass_feedback_commits", "Group commits of feedback events",
                                  value=log.commits if log is not None else 0)
        yield CounterMetricFamily("aimass_feedback_committed_events", "Feedback events stored by group commits",
                                  value=log.committed if log is not None else 0)


def _in_serve() -> bool:
    import sys

    if "ray" not in sys.modules:  # a bare `bentoml serve`: do not pay for importing Ray
        return False
    try:
        from ray import serve

        serve.get_replica_context()
        return True
    except Exception:
        return False


def _error_body(body: bytes, status: int) -> bytes:
    """The one error shape, `{"error": str, "detail"?: [{loc, msg, type}]}`, from whatever answered: BentoML
    wraps its validation errors in a one-element list (a stray tuple in _bentoml_impl/server/app.py) with a
    summary that names no field; Starlette answers 404/405 in plain text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        text = body.decode("utf-8", "replace").strip()
        return json.dumps({"error": text or HTTPStatus(status).phrase}).encode()
    out = {"error": data["error"]}
    detail = data.get("detail")
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        # A whole-body parameter's errors start with "root" (and the body form's tag): not in the client's body.
        out["detail"] = [{"loc": [x if isinstance(x, int) else str(x) for x in _body_loc(d.get("loc", []))],
                          "msg": str(d.get("msg", "")), "type": str(d.get("type", ""))} for d in detail]
        out["error"] = "invalid request: " + "; ".join(
            f"{'.'.join(map(str, p['loc'])) or 'body'}: {p['msg']}" for p in out["detail"][:5])
    elif detail:
        out["error"] += f": {detail}"
    return json.dumps(out).encode()


def _body_loc(loc: list) -> list:
    loc = list(loc)
    if loc[:1] == ["root"]:
        loc = loc[1:]
    return loc[1:] if loc[:1] in (["event"], ["batch"]) else loc


async def _feedback(handler, body: bytes, send, tag: list, rid: str) -> int:
    """POST /feedback without BentoML's request machinery (most of the route's CPU at a few hundred requests a
    second): the body is validated against the service signature's own type, the service's `store` does the
    rest, and errors take the one error shape with the statuses the document declares."""
    from pydantic import ValidationError

    from aimass.errors import AimassError, InvalidInputError
    from aimass.serving._schema import FEEDBACK_BODY
    from aimass.serving.services import Unavailable

    try:
        parsed = FEEDBACK_BODY.validate_json(body or b"null")
    except ValidationError as e:
        return await _invalid(send, e, tag)
    try:
        ack = await handler.store(parsed, rid)
    except InvalidInputError as e:
        return await _reply(send, 400, {"error": str(e)}, tag)
    except Unavailable as e:
        return await _reply(send, 503, {"error": str(e)}, tag)
    except AimassError as e:
        return await _reply(send, 409, {"error": str(e)}, tag)
    except Exception:
        log.exception("/feedback failed")
        return await _reply(send, 500, {"error": _UNEXPECTED}, tag)
    return await _reply(send, 200, ack, tag)  # FeedbackAck's fields (the route's declared answer)


async def _recommend(handler, spec, body: bytes, send, tag: list, rid: str) -> int:
    """POST /recommend without BentoML's request machinery: the body is validated by the route's own input
    model (built by BentoML from the signature), the service answers (`recommend_body`), and errors take the
    statuses and bodies BentoML's route gives them."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    try:
        parsed = spec.model_validate_json(body or b"{}")
        req = {name: getattr(parsed, name) for name in spec.model_fields}
        data = await handler.recommend_body(req, rid)
    except ValidationError as e:
        return await _invalid(send, e, tag)
    except BentoMLException as e:
        status = int(e.error_code)
        if status < 500:
            return await _reply(send, status, {"error": str(e)}, tag)
        log.exception("/recommend failed")
        return await _reply(send, status, {"error": _UNEXPECTED}, tag)
    except Exception:
        log.exception("/recommend failed")
        return await _reply(send, 500, {"error": _UNEXPECTED}, tag)
    return await _reply(send, 200, data, tag)


async def _invalid(send, e, tag: list) -> int:
    """A 400 for a body its route's own type refused, in the one error shape (as BentoML's routes answer it)."""
    detail = [{"loc": list(d["loc"]), "msg": d["msg"], "type": d["type"]} for d in e.errors()]
    return await _reply(send, 400, _error_body(json.dumps({"error": "", "detail": detail}).encode(), 400), tag)


async def _reply(send, status: int, body, extra: list, content_type: bytes = b"application/json") -> int:
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
    return status
