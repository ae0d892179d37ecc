"""The OpenAPI document of a served Bento, written from the same pydantic types that validate its requests
(BentoML's own document drops `null` from optional fields, omits the statuses our gate answers and names no
server, so a client generated from it calls the wrong URL and mis-reads errors).

What it states is what the service does: the prefix it is mounted under (`servers`, relative, so it holds
behind any host), every status each route answers, one error body for all of them, and the bodies a route
refuses (a /recommend needs a `user_id` or a `history`)."""
from __future__ import annotations

import typing
from typing import Any

from pydantic.json_schema import models_json_schema

from aimass.serving._schema import Error

REF = "#/components/schemas/{model}"
_ERROR = {"$ref": REF.format(model="Error")}
# What makes a body name something that may not exist (an item, a filter column): those routes answer 404.
_NAMES_THINGS = {"item_id", "items", "history", "filters"}
# A body that names neither of these refuses with 400: say so, so that `{}` is not a valid request.
_WHO = ("user_id", "history")


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(route: str, props: set[str], unauthorized: str, admin: bool, timeout: float) -> dict:
    out = {"400": _json(_ERROR, "Invalid request: not JSON, a wrong type, a missing or unknown field or a "
                                "value out of range, or an X-Request-ID header that is not 1-64 letters, digits "
                                "or . _ -; the error names it"),
           "401": _json(_ERROR, unauthorized)}
    out["403"] = _json(_ERROR, (f"{route} needs an admin key, or the" if admin else "The") +
                       " API key is scoped to other endpoints than this one")
    if props & _NAMES_THINGS:
        out["404"] = _json(_ERROR, "An item id or filter column that the served model does not know")
    out["413"] = _json(_ERROR, "Request body larger than the limit (AIMASS_SERVE_MAX_BODY_BYTES; "
                               "AIMASS_FEEDBACK_MAX_BODY_BYTES for /feedback)")
    out["415"] = _json(_ERROR, "A body that is not application/json")
    out["429"] = _json(_ERROR, "Too many requests in progress on this replica at once; retry")
    out["503"] = _json(_ERROR, "API keys cannot be checked right now (the catalog could not be read); retry")
    out["504"] = _json(_ERROR, f"No answer started within the service's timeout ({timeout:g} s)")
    if route == "/feedback":
        out["409"] = _json(_ERROR, "An event whose timestamp is further ahead of the server's clock than "
                                   "AIMASS_FEEDBACK_MAX_FUTURE_S allows; nothing of the request was stored")
        out["503"] = _json(_ERROR, "The event store could not commit, or API keys cannot be checked right now: "
                                   "nothing of the request was stored; retry with the same event_ids (they are "
                                   "idempotent)")
    return out


def _request(api, defs: dict) -> tuple[dict, set[str]]:
    schema = api.input_spec.model_json_schema(ref_template=REF)
    defs.update(schema.pop("$defs", {}))
    schema["title"] = f"{api.name}_request"
    schema.pop("root_input", None)  # BentoML's marker of a whole-body parameter, not JSON Schema
    props = set(schema.get("properties", {}))
    if set(_WHO) <= props:
        schema["anyOf"] = [{"required": [f], "properties": {f: {"not": {"type": "null"}}}} for f in _WHO]
        schema["description"] = "Give a user_id or a history (or both: the history is used)."
    return schema, props


def document(service: Any, prefix: str, *, unauthorized: str, is_admin: typing.Callable[[str], bool],
             event_types: list[str] | None = None) -> dict:
    """The document of `service` (a BentoML service class) mounted at `prefix` ('' at the root); `event_types`
    are the feedback types this deployment's rules know (configuration, so the document reads them)."""
    defs: dict[str, Any] = {}
    returns = {api.name: typing.get_type_hints(api.func)["return"] for api in service.apis.values()}
    _, top = models_json_schema([(m, "serialization") for m in {*returns.values(), Error}], ref_template=REF)
    defs.update(top.get("$defs", {}))
    paths: dict[str, dict] = {}
    for api in service.apis.values():
        body, props = _request(api, defs)
        admin = is_admin(api.route)
        paths[api.route] = {"post": {
            "operationId": api.name,
            "summary": (api.doc or "").strip().split("\n")[0],
            "description": " ".join((api.doc or "").split()),
            # A route without parameters takes no body too; the others refuse a missing one.
            "requestBody": {"required": bool(props) or getattr(api.input_spec, "__root_input__", False),
                            "content": {"application/json": {"schema": body}}},
            "responses": {"200": _json({"$ref": REF.format(model=returns[api.name].__name__)}, "The answer"),
                          **_errors(api.route, props, unauthorized, admin, service.config["traffic"]["timeout"])},
            "security": [{"apiKey": []}],
        }}
    if event_types and "FeedbackEvent" in defs:
        defs["FeedbackEvent"]["properties"]["type"]["enum"] = list(event_types)
    status = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
    paths["/healthz"] = {"get": {"operationId": "healthz", "summary": "Liveness, without a key",
                                 "responses": {"200": _json(status, "The service answers")}}}
    text = {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    paths["/metrics"] = {"get": {
        "operationId": "metrics", "summary": "Prometheus metrics (admin key)", "security": [{"apiKey": []}],
        "responses": {"200": text, "401": _json(_ERROR, unauthorized),
                      "403": _json(_ERROR, "/metrics needs an admin key, or the API key is scoped to other "
                                           "endpoints than this one")}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": service.name, "version": "1",
                 "description": " ".join((service.inner.__doc__ or "").split())},
        "servers": [{"url": prefix or "/", "description": "Where this service is mounted, relative to the host"}],
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "an aimass API key (aimass keys create); /admin/* and /metrics need an admin key"}}},
    }
