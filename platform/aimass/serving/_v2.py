"""The Open Inference Protocol v2 (KServe's and Triton's REST face) beside the typed REST API, so that their
clients call an aimass endpoint unchanged. The HTTP gate answers these routes itself:

    GET  /v2/health/live, /v2/health/ready        no key (like /healthz)
    GET  /v2/models/{endpoint}[/ready]            a consumer key
    POST /v2/models/{endpoint}/infer              a consumer key

The model's name in the URL is the endpoint's. An inference takes a batch of users and answers what /recommend
would answer each of them (their traffic arm, their history with its feedback, the served-answer log):

    inputs   user_id  INT64 [n]     (1 <= n <= MAX_BATCH)
             k        INT64 [1]     optional, default 10
    outputs  items    INT64 [n, k]  raw item ids, best first; a row with fewer than k items is padded with -1
             scores   FP32  [n, k]  padded with 0
             arm      BYTES [n]     the traffic arm (NAME/VERSION) that answered each user
             request_id BYTES [n]   what feedback names to join each list (POST /feedback)

JSON tensors only (the binary-data extension is refused with 400). These routes are not in /docs.json: the
protocol's own specification describes them, and one of its rules (a tensor's shape matches its data) is not a
JSON Schema."""
from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aimass.errors import InvalidInputError, NotFoundError

MAX_BATCH = 256
HEALTH = {"/v2/health/live", "/v2/health/ready"}
INPUTS = {"user_id": ("INT64", [-1]), "k": ("INT64", [1])}
OUTPUTS = {"items": ("INT64", [-1, -1]), "scores": ("FP32", [-1, -1]), "arm": ("BYTES", [-1]),
           "request_id": ("BYTES", [-1])}


class Tensor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    shape: list[int] = Field(max_length=4)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(max_length=MAX_BATCH)


class Wanted(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=128)
    parameters: dict[str, Any] | None = None
    inputs: list[Tensor] = Field(min_length=1, max_length=len(INPUTS))
    outputs: list[Wanted] | None = Field(None, max_length=len(OUTPUTS))


class Parsed(BaseModel):
    id: str | None
    users: list[int]
    k: int
    outputs: list[str]


def route(path: str, endpoint: str) -> str | None:
    """'metadata', 'ready' or 'infer' for a /v2/models/... path naming this endpoint; NotFoundError for
    another model; None for a path that is not the protocol's."""
    parts = path.split("/")
    if len(parts) < 4 or parts[:3] != ["", "v2", "models"] or not parts[3]:
        return None
    what = {4: "metadata", 5: parts[4] if len(parts) == 5 else None}.get(len(parts))
    if what not in ("metadata", "ready", "infer"):
        return None
    if parts[3] != endpoint:
        raise NotFoundError(f"no model {parts[3][:64]!r} here: this endpoint serves /v2/models/{endpoint}")
    return what


def label(path: str) -> str:
    """The metrics' route label of a path that is none of the service's routes: the protocol's routes by
    their template (a model's name is a label value of its own), anything else 'other'."""
    parts = path.split("/")
    if parts[:3] != ["", "v2", "models"] or len(parts) not in (4, 5) or parts[4:] not in ([], ["ready"], ["infer"]):
        return "other"
    return "/".join(["/v2/models/{name}", *parts[4:]])


def metadata(endpoint: str, version: int) -> dict:
    return {"name": endpoint, "versions": [str(version)], "platform": "aimass",
            "inputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in INPUTS.items()],
            "outputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in OUTPUTS.items()]}


def parse(body: bytes) -> Parsed:
    """The request, checked against the protocol and this model's inputs; InvalidInputError names what is
    wrong."""
    try:
        req = InferRequest.model_validate_json(body or b"null")
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        raise InvalidInputError(f"invalid inference request: {where}: {first['msg']}") from None
    got: dict[str, Tensor] = {}
    for t in req.inputs:
        if t.name not in INPUTS:
            raise InvalidInputError(f"unknown input {t.name!r}; inputs: {', '.join(INPUTS)}")
        if t.name in got:
            raise InvalidInputError(f"input {t.name!r} given twice")
        if (t.parameters or {}).get("binary_data_size") is not None:
            raise InvalidInputError("binary tensor data is not supported: send JSON data (binary_data=False)")
        if t.datatype != INPUTS[t.name][0]:
            raise InvalidInputError(f"input {t.name!r} must be {INPUTS[t.name][0]}, not {t.datatype[:16]}")
        if any(d < 0 for d in t.shape) or math.prod(t.shape) != len(t.data):
            raise InvalidInputError(f"input {t.name!r}: shape {t.shape} does not match its {len(t.data)} values")
        if not all(type(v) is int and 0 <= v <= 2**62 for v in t.data):
            raise InvalidInputError(f"input {t.name!r}: every value must be an integer from 0 to 2**62")
        got[t.name] = t
    if "user_id" not in got:
        raise InvalidInputError("input 'user_id' (INT64, one per user) is required")
    users = got["user_id"].data
    if not 1 <= len(users) <= MAX_BATCH:
        raise InvalidInputError(f"user_id: from 1 to {MAX_BATCH} users per request, got {len(users)}")
    k = got["k"].data if "k" in got else [10]
    if len(k) != 1 or not 1 <= k[0] <= 100:
        raise InvalidInputError("k: one value from 1 to 100")
    wanted = [w.name for w in req.outputs] if req.outputs else list(OUTPUTS)
    unknown = [w for w in wanted if w not in OUTPUTS]
    if unknown:
        raise InvalidInputError(f"unknown output {unknown[0][:64]!r}; outputs: {', '.join(OUTPUTS)}")
    return Parsed(id=req.id, users=users, k=k[0], outputs=wanted)


def response(endpoint: str, p: Parsed, rows: list[tuple[dict, dict]]) -> dict:
    """The protocol's answer from each user's (served fields, answer) pair, in request order."""
    n, k = len(rows), p.k
    items = [row["items"][:k] + [-1] * (k - len(row["items"][:k])) for _, row in rows]
    scores = [[float(s) for s in row["scores"][:k]] + [0.0] * (k - len(row["scores"][:k])) for _, row in rows]
    columns = {"items": ("INT64", [n, k], [i for r in items for i in r]),
               "scores": ("FP32", [n, k], [s for r in scores for s in r]),
               "arm": ("BYTES", [n], [served["arm"] or f"{served['model']}/{served['version']}" for served, _ in rows]),
               "request_id": ("BYTES", [n], [served["request_id"] for served, _ in rows])}
    # a model is its name and version: a split of recs-a/1 and recs-b/1 has one version number but two models
    models = {(served["model"], served["version"]) for served, _ in rows}
    out: dict[str, Any] = {"model_name": endpoint, "outputs": [
        {"name": name, "datatype": columns[name][0], "shape": columns[name][1], "data": columns[name][2]}
        for name in p.outputs]}
    if len(models) == 1:  # a split answers different users from different models: each row's arm says which
        out["model_version"] = str(models.pop()[1])
    if p.id is not None:
        out["id"] = p.id
    return out
