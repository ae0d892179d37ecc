"""The platform catalog: one SQL database (SQLite embedded, Postgres by URL) holding what the platform
acknowledges. Field declarations live once, in SQLModel Base/Table/Public classes, and serve both the
tables and the API's wire models."""
from aimass.catalog._db import engine_for, session
from aimass.catalog.models import (
    ISO_DATE_TIME,
    AdminAction,
    AdminActionPublic,
    ApiKey,
    ApiKeyPublic,
    DatasetLineage,
    DatasetLineagePublic,
    DatasetVersion,
    DatasetVersionPublic,
    Experiment,
    ExperimentPublic,
    FeedbackEvent,
    FeedbackEventBase,
    FeedbackEventPublic,
    ReplicaReport,
    ScalingEvent,
    ScalingEventBase,
    ServedAnswer,
    ServedAnswerBase,
    TrafficSplit,
    TrafficSplitPublic,
)

__all__ = ["ISO_DATE_TIME", "AdminAction", "AdminActionPublic", "ApiKey", "ApiKeyPublic", "DatasetLineage",
           "DatasetLineagePublic", "DatasetVersion", "DatasetVersionPublic", "Experiment", "ExperimentPublic",
           "FeedbackEvent", "FeedbackEventBase", "FeedbackEventPublic", "ReplicaReport", "ScalingEvent",
           "ScalingEventBase", "ServedAnswer", "ServedAnswerBase", "TrafficSplit", "TrafficSplitPublic", "engine_for",
           "session"]
