from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


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


class ApiKey(ApiKeyBase, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    # sha256 of the secret part salted with the key id. The secret is 256 random bits, so a fast hash
    # cannot be brute-forced; the key itself is shown once and never stored.
    secret_hash: str


class ApiKeyPublic(ApiKeyBase):
    id: int
