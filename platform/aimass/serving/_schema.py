"""The wire contract of every served model: the request field types used in the services' signatures and
the response models. Limits live here so the OpenAPI document states them and validation enforces them."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

MAX_K = 100
MAX_HISTORY = 1000
MAX_CANDIDATES = 1000
MAX_FILTER_COLUMNS = 8
MAX_FILTER_VALUES = 100

ItemId = Annotated[int, Field(ge=0, le=2**62, description="A raw item id of the model's dataset")]
UserId = Annotated[int, Field(ge=0, le=2**62, description="A raw user id of the model's dataset")]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"How many items to return (1-{MAX_K})")]
History = Annotated[list[ItemId], Field(max_length=MAX_HISTORY, description=(
    "Recent items, oldest first; used instead of the user's stored history. Unknown ids are refused."))]
Candidates = Annotated[list[ItemId], Field(min_length=1, max_length=MAX_CANDIDATES,
                                           description="The items to score and rank")]
Exclude = Annotated[list[ItemId], Field(max_length=MAX_CANDIDATES, description="Items never to return")]
Filters = Annotated[
    dict[Annotated[str, Field(max_length=64)],
         Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=MAX_FILTER_VALUES)]],
    Field(max_length=MAX_FILTER_COLUMNS, description=(
        "Keep only items whose item-table column has one of the values, e.g. {\"genre\": [\"jazz\"]}"))]
MaxPer = Annotated[int, Field(ge=1, le=MAX_K, description="Most items per artist (or genre) in the answer")]


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
