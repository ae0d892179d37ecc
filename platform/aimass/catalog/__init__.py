"""The platform catalog: one SQL database (SQLite embedded, Postgres by URL) holding what the platform
acknowledges. Field declarations live once, in SQLModel Base/Table/Public classes, and serve both the
tables and the API's wire models."""
from aimass.catalog._db import engine_for, session
from aimass.catalog.models import (
    ApiKey,
    ApiKeyPublic,
    DatasetLineage,
    DatasetLineagePublic,
    DatasetVersion,
    DatasetVersionPublic,
    FeedbackEvent,
    FeedbackEventBase,
    FeedbackEventPublic,
    ServedAnswer,
    ServedAnswerBase,
)

__all__ = ["ApiKey", "ApiKeyPublic", "DatasetLineage", "DatasetLineagePublic", "DatasetVersion",
           "DatasetVersionPublic", "FeedbackEvent", "FeedbackEventBase", "FeedbackEventPublic", "ServedAnswer",
           "ServedAnswerBase", "engine_for", "session"]
