"""The HTTP gate (aimass.serving._http.Gate) in front of a stub app, request by request at the ASGI level: what
it answers itself when something fails, that a route without a body never waits for one, that a bad
X-Request-ID is refused, and that /metrics counts every request however it ended."""
from __future__ import annotations

import asyncio
import json

import pytest

from aimass.serving import services
from aimass.serving._http import Gate


@pytest.fixture
def gate(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path / "home"))

    async def app(scope, receive, send):  # BentoML's app as far as these requests go: 200 and "{}"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    return Gate(app, services.service("itemknn"))


def call(gate, method: str, path: str, headers: dict | None = None, body: bytes | None = b""):
    """One request through the gate; `body` None is one that never arrives (a client trickling nothing)."""
    sent = []

    async def receive():
        if body is None:
            await asyncio.Event().wait()
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(asyncio.wait_for(gate(scope, receive, send), 5))
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), data


def test_a_route_without_a_body_never_waits_for_one(gate):
    """A keyless POST /readyz declaring a body it never sends held a concurrency slot until the timeout."""
    status, _, _ = call(gate, "POST", "/readyz", {"content-length": "65536"}, body=None)
    assert status == 200


def test_keys_that_cannot_be_read_are_a_json_503(gate, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def unreadable(presented):
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(gate.verifier, "record", unreadable)
    status, headers, data = call(gate, "POST", "/recommend", {"authorization": "Bearer aimass_x_y",
                                                               "content-type": "application/json"}, b"{}")
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert json.loads(data)["error"].startswith("API keys cannot be checked right now")


def test_an_unexpected_error_of_v2_inference_is_the_json_500(gate, monkeypatch):
    class Handler:
        endpoint = "recs"

        def infer_v2(self, parsed, rid):
            raise RuntimeError("an arm failed")

    from types import SimpleNamespace

    monkeypatch.setattr(gate.verifier, "record", lambda presented: SimpleNamespace(role="consumer", endpoints=None))
    monkeypatch.setattr(gate, "_live", lambda: Handler())
    body = json.dumps({"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]}]}).encode()
    status, headers, data = call(gate, "POST", "/v2/models/recs/infer", {"authorization": "Bearer k",
                                                                         "content-type": "application/json"}, body)
    assert status == 500 and headers[b"content-type"] == b"application/json"
    assert "unexpected error" in json.loads(data)["error"] and "an arm failed" not in data.decode()


def test_a_bad_request_id_is_refused_and_every_request_is_counted(gate):
    def counted(route: str, status: str) -> float:
        return gate.requests.labels(route, status)._value.get()

    status, headers, data = call(gate, "GET", "/healthz", {"x-request-id": "two words"})
    assert status == 400 and "X-Request-ID" in json.loads(data)["error"]
    assert headers[b"x-request-id"] != b"two words"  # outside Serve the gate names its own
    assert call(gate, "GET", "/healthz", {"x-request-id": "x" * 65})[0] == 400  # longer than feedback accepts
    assert call(gate, "GET", "/healthz", {"x-request-id": "trace-1\n"})[0] == 400  # "$" alone would pass it
    ok_status, ok_headers, _ = call(gate, "GET", "/healthz", {"x-request-id": "trace-1.a_b"})
    assert ok_status == 200 and ok_headers[b"x-request-id"] == b"trace-1.a_b"
    assert counted("/healthz", "400") == 3 and counted("/healthz", "200") == 1


def test_a_scoped_key_works_on_its_endpoints_only_and_an_expired_key_on_none(tmp_path, monkeypatch):
    """One leaked key wrote feedback into every endpoint (and so their histories, trends and retraining data)
    until it was revoked: a key may name its endpoints and end by itself."""
    import time

    from aimass import serving
    from aimass.errors import InvalidInputError
    from aimass.settings import Settings

    s = Settings(home=tmp_path / "home")
    monkeypatch.setenv("AIMASS_HOME", str(s.home))
    monkeypatch.setenv("AIMASS_SERVE_ENDPOINT", "recs")
    mine, _ = serving.create_key("shop", endpoints=["search", "recs"], settings=s)
    theirs, row = serving.create_key("other", endpoints=["search"], settings=s)
    brief, trial = serving.create_key("trial", expires_in_s=5, settings=s)
    anywhere, _ = serving.create_key("all", settings=s)
    assert row.endpoints == "search" and row.expires_at is None
    bad = [({"endpoints": []}, "no endpoint"), ({"endpoints": "recs"}, "a list"), ({"endpoints": ["Recs"]},
           "invalid endpoint"), ({"expires_in_s": 0}, "positive"), ({"expires_in_s": float("nan")}, "positive"),
           ({"role": "admin", "endpoints": ["recs"]}, "admin key acts on every endpoint")]
    for kwargs, why in bad:
        with pytest.raises(InvalidInputError, match=why):
            serving.create_key("bad", **{"role": "consumer", **kwargs}, settings=s)
    assert [k.name for k in serving.list_keys(settings=s)] == ["shop", "other", "trial", "all"]  # none stored

    gate = Gate(_ok, services.service("itemknn"))  # BentoML's app as far as these requests go

    def status(key: str) -> int:
        return call(gate, "POST", "/recommend", {"authorization": f"Bearer {key}",
                                                 "content-type": "application/json"}, b"{}")[0]

    assert [status(k) for k in (mine, anywhere, brief)] == [200, 200, 200]
    code, _, body = call(gate, "POST", "/recommend", {"authorization": f"Bearer {theirs}"}, b"{}")
    assert code == 403 and "not valid for the endpoint 'recs'" in json.loads(body)["error"]
    from datetime import UTC, datetime

    time.sleep(max(0.0, (trial.expires_at - datetime.now(UTC)).total_seconds()) + 0.1)
    assert status(brief) == 401 and status(mine) == 200
    assert serving.key_info(brief, settings=s) is None and serving.key_info(mine, settings=s).name == "shop"
    # and the OpenAPI document says so on every keyed route
    from aimass.serving import _openapi
    from aimass.serving._http import is_admin

    doc = _openapi.document(services.service("itemknn"), "/recs", unauthorized="-", is_admin=is_admin)
    keyed = [op["responses"] for ops in doc["paths"].values() for op in ops.values() if "401" in op["responses"]]
    assert keyed and all("scoped to other endpoints" in r["403"]["description"] for r in keyed)


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.parametrize("model,endpoint", [("recs/1", "recs"), ("Recs@champion", "recs"),
                                            ("My_Model.v2/3", "my-model-v2"), ("A" * 64 + "/1", "a" * 40)])
def test_a_bare_serve_logs_under_an_endpoint_name_that_monitoring_and_keys_take(model, endpoint):
    """`bentoml serve` names no endpoint: its feedback goes to one named after the model. `my_model.v2` was
    refused by `aimass monitor` and by key scopes, so that feedback could not be read or keyed."""
    from aimass.serving import check_endpoint
    from aimass.serving._http import endpoint_of
    from aimass.settings import Settings

    assert endpoint_of(Settings(serve_model=model)) == endpoint == check_endpoint(endpoint)
    assert endpoint_of(Settings(serve_model=model, serve_endpoint="live")) == "live"
