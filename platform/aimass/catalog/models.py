from __future__ import annotations

from datetime import UTC, datetime

from pydantic import computed_field, field_validator
from sqlalchemy import JSON, BigInteger, Column, Index, Integer, UniqueConstraint, text
from sqlmodel import Field, SQLModel

# Raw ids and log positions: 64 bits on Postgres (its INTEGER is 32: one user id above 2^31 would fail a whole
# group commit). SQLite's INTEGER is 64 bits already, and only "INTEGER PRIMARY KEY" is the rowid whose
# order the group commit reads seqs by, so it keeps that spelling there.
BIG = BigInteger().with_variant(Integer(), "sqlite")


def _now() -> datetime:
    return datetime.now(UTC)


class DatasetVersionBase(SQLModel):
    name: str = Field(index=True, description="Dataset name")
    version: int = Field(ge=1, description="1, 2, ... in registration order")
    content_hash: str = Field(description="sha256 of the canonical content")
    format: str = Field(description="The source format it was read from")
    source: str = Field(description="Where it was read from")
    n_rows: int = Field(ge=0, description="Interactions")
    n_users: int = Field(ge=0)
    n_items: int = Field(ge=0)
    has_items_table: bool = False
    timestamp_kind: str = Field(description="'unix' seconds, or 'order' when the source has no time")
    columns: dict = Field(
        default_factory=dict, sa_column=Column(JSON), description="{table: {column: dtype}}"
    )
    git_tag: str = Field(description="Tag of this version in the data registry")


class DatasetVersion(DatasetVersionBase, table=True):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("name", "version"), UniqueConstraint("name", "content_hash"))

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=_now)


class DatasetVersionPublic(DatasetVersionBase):
    id: int
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


class ApiKeyBase(SQLModel):
    key_id: str = Field(index=True, unique=True, description="Public part of the key; safe to show and log")
    name: str = Field(description="What the key is for (a consumer, a team)")
    role: str = Field("consumer", description="'consumer' (model routes) or 'admin' (also admin routes)")
    created_at: datetime = Field(default_factory=_now)
    revoked_at: datetime | None = None
    endpoints: str | None = Field(None, description=(
        "The endpoints the key may call, comma-separated; none: every endpoint"))
    expires_at: datetime | None = Field(None, description="When the key stops working; none: never")


class ApiKey(ApiKeyBase, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    # sha256 of the secret part salted with the key id. The secret is 256 random bits, so a fast hash
    # cannot be brute-forced; the key itself is shown once and never stored.
    secret_hash: str


class ApiKeyPublic(ApiKeyBase):
    id: int


# --- the way back: feedback events and served answers (aimass.events) -------------------------------------
_EVENT_ID = r"^[A-Za-z0-9._:@/-]{1,128}$"
_TYPE = r"^[a-z][a-z0-9_]{0,31}$"
# an event's time written as text: a date and a time (a date alone would be read as midnight, a guess), as
# /feedback and `feedback ingest` both require
ISO_DATE_TIME = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}"


class FeedbackEventBase(SQLModel):
    event_id: str = Field(schema_extra={"pattern": _EVENT_ID}, description=(
        "Chosen by the client, unique per endpoint: a repeated id is stored once (idempotent retries)"))
    user_id: int = Field(ge=0, le=2**62, sa_type=BIG,
                         description="Raw user id (a user the model never saw is accepted)")
    item_id: int = Field(ge=0, le=2**62, sa_type=BIG,
                         description="Raw item id (an item the model never saw is accepted)")
    type: str = Field(schema_extra={"pattern": _TYPE}, description="Event type: play, skip, like, click, ...")
    timestamp: datetime = Field(description="When it happened: ISO 8601 (no offset means UTC) or unix seconds")
    value: float | None = Field(None, description="e.g. seconds played or a rating; thresholds apply to it")
    request_id: str | None = Field(None, schema_extra={"pattern": r"^[A-Za-z0-9._-]{1,64}$"}, description=(
        "The request_id of the answer that showed the item: joins the event to the served list"))


class FeedbackEvent(FeedbackEventBase, table=True):
    __tablename__ = "feedback_events"
    __table_args__ = (UniqueConstraint("endpoint", "event_id"),)

    seq: int | None = Field(default=None, primary_key=True, sa_type=BIG,
                            description="Log position: the order of commit")
    endpoint: str = Field(index=True)
    received_at: datetime = Field(default_factory=_now)


class FeedbackEventPublic(FeedbackEventBase):
    seq: int
    endpoint: str
    received_at: datetime


class ServedAnswerBase(SQLModel):
    """One answer of a served model, as monitoring and the feedback join need it."""

    request_id: str = Field(index=True)
    route: str = Field(description="recommend, rank or similar")
    model: str
    version: int
    user_id: int | None = Field(None, sa_type=BIG)
    history_length: int = Field(0, description="Length of the history the answer was scored from")
    history_tail: list = Field(default_factory=list, sa_column=Column(JSON),
                               description="The last items of that history (raw ids)")
    items: list = Field(default_factory=list, sa_column=Column(JSON), description="The served items, best first")
    scores: list = Field(default_factory=list, sa_column=Column(JSON))
    strategy: str = Field("model", description="model, popular or trending")
    served_at: datetime = Field(default_factory=_now, index=True)
    arm: str | None = Field(None, description="The traffic arm that answered (its model ref, NAME/VERSION)")
    experiment_id: str | None = Field(None, index=True, description="The experiment of the split in force")
    shadow: bool = Field(False, description="A shadow arm's answer: logged for comparison, never returned")
    overlap: float | None = Field(None, description="Shadow only: |shadow items & live items| / k")
    latency_ms: float | None = Field(None, description="Time to compute the answer in the replica")
    query: str | None = Field(None, description="search: the query as sent (printable characters only)")
    mode: str | None = Field(None, description="search: the mode that answered (bm25, semantic, hybrid; "
                             "'+personal' when the user's history reordered it)")
    cached: bool = Field(False, description="Taken from the replica's answer cache: its latency is a lookup's")


class ServedAnswer(ServedAnswerBase, table=True):
    __tablename__ = "served_answers"
    # every reader asks for a window of one endpoint's answers (drift, golden signals, experiments, past queries):
    # the endpoint's index alone made each read scan all the endpoint's answers ever served
    __table_args__ = (Index("ix_served_answers_endpoint_served_at", "endpoint", "served_at"),)

    seq: int | None = Field(default=None, primary_key=True, sa_type=BIG)
    endpoint: str = Field(index=True)


# --- dataset lineage: a version derived from a parent version plus an endpoint's feedback events -----------
class DatasetLineageBase(SQLModel):
    """What a derived dataset version holds beyond its parent: the endpoint's events with seq in
    (after_seq, through_seq], of which the positive ones became interactions."""

    name: str = Field(index=True, description="Dataset name (the parent's: a derived version continues it)")
    version: int = Field(ge=1, description="The derived version")
    parent_version: int = Field(ge=1, description="The version it was derived from")
    endpoint: str = Field(description="The endpoint whose feedback events were folded in")
    after_seq: int = Field(ge=0, sa_type=BIG, description="Events up to this log position were already in an ancestor")
    through_seq: int = Field(ge=0, sa_type=BIG, description="The last log position folded in")
    through_time: datetime | None = Field(None, description="When the event at through_seq was received (UTC)")
    events: int = Field(ge=0, description="Events of the endpoint in (after_seq, through_seq]")
    positive: int = Field(ge=0, description="Positive events among them: the interactions added")


class DatasetLineage(DatasetLineageBase, table=True):
    __tablename__ = "dataset_lineage"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=_now)


class DatasetLineagePublic(DatasetLineageBase):
    created_at: datetime

    @computed_field
    @property
    def dataset(self) -> str:
        return f"{self.name}@v{self.version}"

    @computed_field
    @property
    def parent(self) -> str:
        return f"{self.name}@v{self.parent_version}"

    @field_validator("through_time", "created_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:  # SQLite hands datetimes back without their offset
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v


# --- traffic: splits across model versions, experiments, scaling (aimass.serving.traffic, aimass.experiments) --
class TrafficSplitBase(SQLModel):
    """A split of one endpoint's traffic: arms (model refs NAME/VERSION with integer weights summing to 100),
    an optional shadow ref, and the experiment whose id salts the sticky assignment."""

    endpoint: str = Field(index=True)
    arms: list = Field(sa_column=Column(JSON), description='[{"ref": "NAME/VERSION", "weight": 0-100}, ...]')
    shadow: str | None = Field(None, description="A ref that gets a copy of the traffic, answers never returned")
    experiment_id: str = Field(description="Salts the sticky assignment hash: a new experiment reshuffles users")
    faults: dict = Field(default_factory=dict, sa_column=Column(JSON),
                         description="Fault injection for drills: {ref: {'delay_ms': float}}")
    state: str = Field("pending", index=True, description="pending, active, failed, superseded or retired "
                       "(the endpoint deleted, or served by a multi-stage application since)")
    error: str | None = None
    reason: str = Field("", description="Why: set, deploy, rollback, experiment, canary, promote, ...")
    actor: str = Field("cli", description="Who changed it (a user name, 'scheduler', ...)")
    created_at: datetime = Field(default_factory=_now)
    decided_at: datetime | None = None


class TrafficSplit(TrafficSplitBase, table=True):
    __tablename__ = "traffic_splits"
    # One change per endpoint at a time: the database itself refuses a second pending split of an endpoint.
    __table_args__ = (Index("one_pending_split", "endpoint", unique=True, sqlite_where=text("state = 'pending'"),
                            postgresql_where=text("state = 'pending'")),)

    id: int | None = Field(default=None, primary_key=True)


class TrafficSplitPublic(TrafficSplitBase):
    id: int


class ReplicaReport(SQLModel, table=True):
    """A serving replica's answer to a split: prepared (every arm loaded), active (answering with it), or failed
    (with why)."""

    __tablename__ = "replica_reports"
    __table_args__ = (UniqueConstraint("split_id", "replica"),)

    id: int | None = Field(default=None, primary_key=True)
    split_id: int = Field(index=True)
    endpoint: str = Field(index=True)
    replica: str
    state: str = Field(description="prepared, active or failed")
    error: str | None = None
    at: datetime = Field(default_factory=_now)


class ExperimentBase(SQLModel):
    endpoint: str = Field(index=True)
    experiment_id: str = Field(index=True, unique=True)
    arms: list = Field(sa_column=Column(JSON), description="The split's arms, the first is the control")
    metric: str = Field(description="A rate over served answers: '<event type>_rate', e.g. play_rate")
    alpha: float = Field(0.05, gt=0, lt=1)
    mde: float = Field(0.02, gt=0, lt=1, description="Smallest rate difference worth detecting, absolute")
    min_samples: int = Field(100, ge=1, description="Users per arm before any call (the unit of analysis: "
                             "assignment is per user)")
    guardrails: dict = Field(default_factory=dict, sa_column=Column(JSON),
                             description="{'max_p99_ratio': 1.5, 'max_error_rate': 0.01}")
    auto: bool = Field(False, description="Canary: promote on a win, roll back on a broken guardrail")
    state: str = Field("running", index=True, description="running or stopped")
    decision: str | None = Field(None, description="promoted ARM, rolled back: why, stopped; while running, "
                                 "'stopping: ...' names a stop under way (what, by whom, since when)")
    min_p: dict = Field(default_factory=dict, sa_column=Column(JSON),
                        description="Per treatment arm: running minimum of the always-valid p-value over looks")
    winners: dict | None = Field(default_factory=dict, sa_column=Column(JSON),
                                 description="Per treatment arm: the better arm (it or the control) at the look "
                                             "that first found the difference significant; later looks keep it")
    started_at: datetime = Field(default_factory=_now)
    stopped_at: datetime | None = Field(None, description="When it stopped; while a stop is under way, when "
                                        "that stop began")


class Experiment(ExperimentBase, table=True):
    __tablename__ = "experiments"
    # One running experiment per endpoint: the database refuses a second one, whoever starts it.
    __table_args__ = (Index("one_running_experiment", "endpoint", unique=True,
                            sqlite_where=text("state = 'running'"), postgresql_where=text("state = 'running'")),)

    id: int | None = Field(default=None, primary_key=True)


class ExperimentPublic(ExperimentBase):
    id: int


class ScalingEventBase(SQLModel):
    """A change of a deployment's replica count seen by the serving cluster's watcher."""

    endpoint: str = Field(index=True)
    deployment: str
    at: datetime = Field(default_factory=_now, index=True)
    replicas_from: int
    replicas_to: int
    trigger: str = Field("", description="Serve's status trigger, e.g. AUTOSCALING, UPSCALE_COMPLETED")
    ongoing_per_replica: float | None = Field(None, description="Ongoing requests per replica when seen")


class ScalingEvent(ScalingEventBase, table=True):
    __tablename__ = "scaling_events"

    id: int | None = Field(default=None, primary_key=True)


class AdminActionBase(SQLModel):
    """An operator action (the console's Admin page): who asked (an admin key's name and id), what, on what,
    when, and how it ended, failures included."""

    actor: str = Field(description="console:NAME (KEY_ID) of the admin key that asked")
    action: str = Field(index=True, description="rollback, set_traffic, promote, retrain or revoke_key")
    target: str = Field(description="The endpoint, model version or key id acted on")
    detail: str = Field("", description="The action's input, e.g. the arms of a split")
    at: datetime = Field(default_factory=_now, index=True)
    outcome: str = Field("running", description="What it did, or 'failed: why'")
    ok: bool | None = Field(None, description="None while it runs")


class AdminAction(AdminActionBase, table=True):
    __tablename__ = "admin_actions"

    id: int | None = Field(default=None, primary_key=True)


class AdminActionPublic(AdminActionBase):
    id: int
