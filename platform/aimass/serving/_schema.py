"""The wire contract of every served model: the request field types used in the services' signatures and
the response models. Limits live here so the OpenAPI document states them and validation enforces them.
Scalars mean what the document says: an `integer` is 7 or 7.0, never "7" or true, a `boolean` never "yes"
(pydantic's lax mode would take both)."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field, Strict


def _number(v: object) -> object:
    if isinstance(v, str | bool):
        raise ValueError("must be an integer (a JSON number), not a string or a boolean")
    return v


# After the Field: before it, pydantic documents ge/le as unknown keywords instead of minimum/maximum.
Integer = BeforeValidator(_number)

MAX_K = 100
MAX_HISTORY = 1000
MAX_CANDIDATES = 1000
MAX_FILTER_COLUMNS = 8
MAX_FILTER_VALUES = 100

ItemId = Annotated[int, Field(ge=0, le=2**62, description="A raw item id of the model's dataset"), Integer]
UserId = Annotated[int, Field(ge=0, le=2**62, description="A raw user id of the model's dataset"), Integer]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"How many items to return (1-{MAX_K})"), Integer]
History = Annotated[list[ItemId], Field(max_length=MAX_HISTORY, description=(
    "Recent items, oldest first; used instead of the user's stored history. Unknown ids are refused (404)."))]
Candidates = Annotated[list[ItemId], Field(min_length=1, max_length=MAX_CANDIDATES,
                                           description="The items to score and rank")]
Exclude = Annotated[list[ItemId], Field(max_length=MAX_CANDIDATES, description="Items never to return")]
ExcludeSeen = Annotated[bool, Strict(), Field(description="Leave out the items of the user's history")]
Filters = Annotated[
    dict[Annotated[str, Field(max_length=64)],
         Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=MAX_FILTER_VALUES)]],
    Field(max_length=MAX_FILTER_COLUMNS, description=(
        "Keep only items whose item-table column has one of the values, e.g. {\"genre\": [\"jazz\"]}; an "
        "unknown column is refused (404)"))]
MaxPer = Annotated[int, Field(ge=1, le=MAX_K, description="Most items per artist (or genre) in the answer"), Integer]


class Served(BaseModel):
    """What every answer carries: which model answered, on which data it was trained, and a request id."""

    model: str = Field(description="Registered model name")
    version: int = Field(description="Registered model version")
    dataset: str | None = Field(description="Dataset version the model was trained on (name@vN)")
    request_id: str = Field(description="Echoes the X-Request-ID header, or a new id")


class Recommendation(Served):
    items: list[int] = Field(description="Raw item ids, best first")
    scores: list[float]
    cold_start: bool = Field(description="True when the user is unknown and has no history: popular items")
    strategy: str = Field(description="'model', or 'popular' for a cold start")


class Similar(Served):
    item_id: int
    items: list[int]
    scores: list[float]


class Ranking(Served):
    items: list[int] = Field(description="The candidates, best first")
    scores: list[float]
    cold_start: bool


class Stage(BaseModel):
    stage: str
    model: str
    version: int
    dataset: str | None


class PipelineRecommendation(Recommendation):
    stages: list[Stage] = Field(description="The models of each stage: retrieval, then ranking")


class ModelCard(Served):
    family: str | None
    n_items: int
    stages: list[Stage] = Field(default_factory=list)


class Problem(BaseModel):
    loc: list[str | int] = Field(description="Where in the body: field names and list positions")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. int_type, greater_than_equal")


class Error(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: str = Field(description="What is wrong, in words")
    detail: list[Problem] | None = Field(None, description="Each validation problem (400 only)")
