"""The wire contract of every served model: the request field types used in the services' signatures and
the response models. Limits live here so the OpenAPI document states them and validation enforces them.
Scalars mean what the document says: an `integer` is 7 or 7.0, never "7" or true, a `boolean` never "yes"
(pydantic's lax mode would take both)."""
from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
)

from aimass.catalog import ISO_DATE_TIME, FeedbackEventBase


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
MAX_FEEDBACK_BATCH = 1000

ItemId = Annotated[int, Field(ge=0, le=2**62, description="A raw item id of the model's dataset"), Integer]
UserId = Annotated[int, Field(ge=0, le=2**62, description="A raw user id of the model's dataset"), Integer]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"How many items to return (1-{MAX_K})"), Integer]
History = Annotated[list[ItemId], Field(max_length=MAX_HISTORY, description=(
    "Recent items, oldest first; used instead of the user's stored history. Unknown ids are refused (404)."))]
Candidates = Annotated[list[ItemId], Field(min_length=1, max_length=MAX_CANDIDATES,
                                           description="The items to score and rank")]
Exclude = Annotated[list[ItemId], Field(max_length=MAX_CANDIDATES, description="Items never to return")]
ExcludeSeen = Annotated[bool, Strict(), Field(description=(
    "Leave out the items of the user's history (items the user gave negative feedback are left out either way)"))]
Filters = Annotated[
    dict[Annotated[str, Field(max_length=64)],
         Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=MAX_FILTER_VALUES)]],
    Field(max_length=MAX_FILTER_COLUMNS, description=(
        "Keep only items whose item-table column has one of the values, e.g. {\"genre\": [\"jazz\"]}; an "
        "unknown column is refused (404)"))]
MaxPer = Annotated[int, Field(ge=1, le=MAX_K, description=(
    "Most items per artist (or genre) in the answer; it applies where the items table has an artist (or a genre "
    "or genres) column")), Integer]


class Served(BaseModel):
    """What every answer carries: which model answered, on which data it was trained, and a request id."""

    model: str = Field(description="Registered model name")
    version: int = Field(description="Registered model version")
    dataset: str | None = Field(description="Dataset version the model was trained on (name@vN)")
    request_id: str = Field(description="Echoes the X-Request-ID header, or a new id")
    arm: str | None = Field(None, description="The traffic arm that answered (NAME/VERSION); a user keeps one "
                                              "arm for the life of an experiment")
    experiment_id: str | None = Field(None, description=(
        "The assignment id of the traffic split the arm belongs to (the salt of its users' buckets): every split "
        "has one, and an experiment started on the endpoint is known by its split's"))


class Recommendation(Served):
    items: list[int] = Field(description="Raw item ids, best first")
    scores: list[float]
    cold_start: bool = Field(description="True when the user is unknown and has no history: popular items")
    strategy: str = Field(description="'model'; for a cold start 'trending' (today's positive feedback) or "
                                      "'popular' (all-time)")
    history_length: int = Field(description="Length of the history the answer was scored from: the stored "
                                            "history plus the user's feedback since training, or the given one")


class Similar(Served):
    item_id: int
    items: list[int]
    scores: list[float]


class Ranking(Served):
    items: list[int] = Field(description="The candidates, best first")
    scores: list[float]
    cold_start: bool
    history_length: int = Field(description="Length of the history the ranking was scored from")


MAX_QUERY = 1000
MAX_SUGGEST = 20
Query = Annotated[str, Field(min_length=1, max_length=MAX_QUERY, description=(
    f"What to search for, 1-{MAX_QUERY} characters of any script; a word the catalogue lacks is corrected to "
    "its nearest catalogue word (one edit from 5 characters, two from 9), and the answer says so"))]
Prefix = Annotated[str, Field(min_length=1, max_length=100, description="What the user has typed so far")]
SearchMode = Annotated[Literal["bm25", "semantic", "hybrid"], Field(description=(
    "bm25 (words), semantic (MiniLM meaning), hybrid (both, fused by reciprocal rank); default: the model's"))]
SuggestK = Annotated[int, Field(ge=1, le=MAX_SUGGEST, description=f"How many suggestions (1-{MAX_SUGGEST})"),
                     Integer]


class SearchResults(Served):
    query: str = Field(description="The query as sent")
    items: list[int] = Field(description="Raw item ids, best first")
    titles: list[str] = Field(description="Each item's title (or name, or text)")
    scores: list[float]
    mode: str = Field(description="The mode that answered: bm25, semantic or hybrid")
    corrected: str | None = Field(description="The corrected query when a word was corrected (\"did you mean\")")
    personalised: bool = Field(description="True when the user's history reordered the results")
    history_length: int = Field(description="Length of the user's history used for personalisation (0: none)")


class Suggestion(BaseModel):
    text: str = Field(description="The completion: an item title or a past query")
    item_id: int | None = Field(description="The item it names; None for a past query")
    score: float


class Suggestions(Served):
    prefix: str
    suggestions: list[Suggestion] = Field(description="Best first: titles by popularity (and, for a known user, "
                                          "by their history), then past queries")
    personalised: bool = Field(False, description="Whether a history of the user's took part in ranking the "
                               "titles (as for /search); a history that goes with none of them changes nothing")
    history_length: int = Field(0, description="Events of the user's history used (0: none, or unknown user)")


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


def _strict_number(v: object) -> object:
    if isinstance(v, str | bool):
        raise ValueError("must be a JSON number, not a string or a boolean")
    if isinstance(v, float) and not math.isfinite(v):  # Python's JSON reads NaN and Infinity; JSON has neither
        raise ValueError("must be a finite number")
    return v


_ISO = re.compile(ISO_DATE_TIME)


MAX_UNIX_S = 10**10  # year 2286: a larger number is a mistake (milliseconds?), not a time


def _timestamp(v: object) -> object:
    # pydantic alone would also take a bare date or a number in a string, and read a large number as
    # milliseconds; the document promises none of that.
    if isinstance(v, bool) or v is None or (isinstance(v, str) and not _ISO.match(v)):
        raise ValueError("must be an ISO 8601 date and time or a number of unix seconds")
    if isinstance(v, int | float):
        if not 0 <= v <= MAX_UNIX_S:
            raise ValueError(f"unix seconds must be between 0 and {MAX_UNIX_S}")
        return datetime.fromtimestamp(v, UTC)
    return v


class FeedbackEvent(FeedbackEventBase):
    """One event as a client sends it: the catalog's fields, validated strictly."""

    model_config = ConfigDict(extra="forbid")

    timestamp: Annotated[datetime, WithJsonSchema({
        "anyOf": [{"type": "string", "format": "date-time"},
                  {"type": "number", "minimum": 0, "maximum": MAX_UNIX_S}],
        "description": "When it happened: ISO 8601 date and time (no offset means UTC) or unix seconds; from "
                       "1970-01-01 and at most AIMASS_FEEDBACK_MAX_FUTURE_S (a day) ahead of the server's clock, "
                       "else 409"})]

    _numbers = field_validator("user_id", "item_id", "value", mode="before")(_strict_number)
    _time = field_validator("timestamp", mode="before")(_timestamp)


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackEvent] = Field(min_length=1, max_length=MAX_FEEDBACK_BATCH, description=(
        f"1-{MAX_FEEDBACK_BATCH} events, stored in one transaction: all or none"))


def _form(v: Any) -> str:
    return "batch" if isinstance(v, dict) and "events" in v else "event"


# One event or a batch; the body's shape picks which, so a validation error speaks of that one only.
FeedbackBody = Annotated[Annotated[FeedbackEvent, Tag("event")] | Annotated[FeedbackBatch, Tag("batch")],
                         Discriminator(_form)]


FEEDBACK_BODY = TypeAdapter(FeedbackBody)  # validates a raw /feedback body exactly as the signature declares


class EventAck(BaseModel):
    event_id: str
    seq: int = Field(description="Position in the endpoint's log (the first copy's, for a repeat)")
    duplicate: bool = Field(description="True when this event_id was already stored: stored once, not twice")
    known_user: bool | None = Field(description="Whether the served model knows the user (None: not checked)")
    known_item: bool | None = Field(description=(
        "Whether the served model knows the item; an unknown item is stored (the next retraining adds it to "
        "the catalogue) but cannot change this model's answers"))


class FeedbackAck(BaseModel):
    """Sent only after every event of the request is committed to stable storage."""

    stored: int = Field(description="Events newly stored")
    duplicates: int = Field(description="Events whose event_id was already stored")
    duplicate: bool = Field(description="True when every event of the request was a repeat")
    events: list[EventAck]
    request_id: str
