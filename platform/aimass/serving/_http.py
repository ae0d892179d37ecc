"""The HTTP gate in front of every served Bento (an ASGI middleware, so it runs the same under `bentoml
serve` and inside Ray Serve): API keys, body-size limit, request ids, /healthz and our own Prometheus
/metrics (BentoML's hung inside Serve, ../shared/STACK.md). Keys are never logged or echoed."""
from __future__ import annotations

import json
import re
import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from aimass.serving._keys import Verifier
from aimass.settings import Settings

OPEN = {"/healthz", "/livez", "/readyz", "/docs", "/docs.json", "/schema.json", "/", "/favicon.ico"}
OPEN_PREFIXES = ("/static_content/",)
ADMIN = ("/admin/", "/metrics")
UNAUTHORIZED = ("missing, malformed, unknown or revoked API key: send 'Authorization: Bearer <key>' "
                "(aimass keys create)")
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Gate:
    def __init__(self, app, routes: tuple[str, ...] = ()):
        self.app = app
        self.settings = Settings()  # a serving process's entry point: its AIMASS_* variables
        self.verifier = Verifier(self.settings)
        self.routes = set(routes)
        self.in_serve = _in_serve()
        self.registry = CollectorRegistry()
        self.requests = Counter("aimass_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("aimass_request_duration_seconds", "Time to answer, by route", ["route"],
                                 registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        root, path = scope.get("root_path", ""), scope["path"]
        path = path[len(root):] or "/" if root and path.startswith(root) else path
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        rid = rid if _RID.match(rid) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        route = path if path in self.routes or path in OPEN or path in ADMIN else "other"
        status = await self._handle(scope, receive, send, path, headers, rid)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - t0)

    async def _handle(self, scope, receive, send, path, headers, rid) -> int:
        tag = [] if self.in_serve else [(b"x-request-id", rid.encode())]  # Serve sets it on every response
        if path == "/healthz":
            return await _reply(send, 200, {"status": "ok"}, tag)
        if not (path in OPEN or path.startswith(OPEN_PREFIXES)):
            admin = path == "/metrics" or path.startswith("/admin/")
            auth = headers.get("authorization", "")
            role = self.verifier.role(auth[7:].strip() if auth[:7].lower() == "bearer " else None)
            if role is None:
                return await _reply(send, 401, {"error": UNAUTHORIZED},
                                    [*tag, (b"www-authenticate", b"Bearer")])
            if admin and role != "admin":
                return await _reply(send, 403, {"error": f"{path} needs an admin key"}, tag)
        if path == "/metrics":
            return await _reply(send, 200, generate_latest(self.registry), tag,
                                content_type=CONTENT_TYPE_LATEST.encode())
        limit = self.settings.serve_max_body_bytes
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
        replayed = False

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
                if status >= 400 or path == "/docs.json":  # held back to rewrite the body below
                    held = msg
                    return
            elif held is not None and msg["type"] == "http.response.body":
                chunks.append(msg.get("body", b""))
                if msg.get("more_body"):
                    return
                body = _error_body(b"".join(chunks)) if status >= 400 else _declare_bearer(b"".join(chunks))
                hs = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
                await send({**held, "headers": [*hs, (b"content-length", str(len(body)).encode())]})
                msg = {"type": "http.response.body", "body": body}
            await send(msg)

        await self.app(scope, replay, tagged_send)
        return status


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


def _declare_bearer(body: bytes) -> bytes:
    """BentoML's OpenAPI document knows nothing of our keys: declare the bearer scheme, and require it on every
    operation but the open ones, so generated clients and /docs send the key."""
    try:
        spec = json.loads(body)
    except ValueError:
        return body
    if not isinstance(spec, dict) or not isinstance(spec.get("paths"), dict):
        return body
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http", "scheme": "bearer",
        "description": "an aimass API key (aimass keys create); /admin/* and /metrics need an admin key"}
    for route, ops in spec["paths"].items():
        if route in OPEN or route.startswith(OPEN_PREFIXES) or not isinstance(ops, dict):
            continue
        for op in ops.values():
            if isinstance(op, dict):
                op["security"] = [{"apiKey": []}]
                op.setdefault("responses", {}).setdefault("401", {"description": UNAUTHORIZED})
    return json.dumps(spec).encode()


def _error_body(body: bytes) -> bytes:
    """Every error answers {"error": ..., ...}: BentoML 1.4 wraps its own 4xx messages in a one-element
    list (a stray tuple in _bentoml_impl/server/app.py), unwrapped here."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict) and "error" in data[0]:
        return json.dumps(data[0]).encode()
    return body


async def _reply(send, status: int, body, extra: list, content_type: bytes = b"application/json") -> int:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
    return status
