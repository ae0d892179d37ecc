"""API keys: created once (the full key is shown only then), stored as a salted hash in the catalog,
revoked by id. A key reads `aimass_<key id>_<secret>`; the id is public (listed, logged), the secret
never leaves the creator."""
from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlmodel import select

from aimass.catalog import ApiKey, ApiKeyPublic, session
from aimass.errors import BackendError, InvalidInputError, NotFoundError
from aimass.settings import Settings, masked_keys

ROLES = ("consumer", "admin")
_KEY = re.compile(r"^aimass_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
_ID = re.compile(r"^[0-9a-f]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@ -]{0,63}$")


def _hash(key_id: str, secret: str) -> str:
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()


def create(name: str, role: str, settings: Settings, endpoints: list[str] | None = None,
           expires_in_s: float | None = None) -> tuple[str, ApiKeyPublic]:
    """A new key: returns (the full key, to show once; its public row). `endpoints` (checked names) scopes it,
    `expires_in_s` (checked) ends it that long after its creation."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(f"invalid key name {name!r}: use 1-64 letters, digits, spaces, '.', '_', "
                                "'@' or '-'")
    if role not in ROLES:
        raise InvalidInputError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if endpoints is not None and role == "admin":
        raise InvalidInputError("an admin key acts on every endpoint (the console's actions, each endpoint's admin "
                                "routes): scope consumer keys only")
    if endpoints is not None and not endpoints:
        raise InvalidInputError("a key scoped to no endpoint could call none: name at least one")
    key_id, secret, now = secrets.token_hex(6), secrets.token_urlsafe(32), datetime.now(UTC)
    row = ApiKey(key_id=key_id, name=name, role=role, secret_hash=_hash(key_id, secret), created_at=now,
                 endpoints=",".join(dict.fromkeys(endpoints)) if endpoints else None,
                 expires_at=now + timedelta(seconds=expires_in_s) if expires_in_s else None)
    with session(settings) as db:
        db.add(row)
        db.commit()
        db.refresh(row)
        return f"aimass_{key_id}_{secret}", ApiKeyPublic.model_validate(row)


def _utc(t: datetime) -> datetime:
    """`t` as an aware UTC time: SQLite gives stored times back without their zone (they were stored in UTC)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def expired(row: ApiKey | ApiKeyPublic) -> bool:
    return row.expires_at is not None and _utc(row.expires_at) <= datetime.now(UTC)


def endpoints_of(row: ApiKey | ApiKeyPublic) -> list[str] | None:
    """The endpoints a key may call; None: every one."""
    return row.endpoints.split(",") if row.endpoints else None


def list_keys(settings: Settings, include_revoked: bool = False) -> list[ApiKeyPublic]:
    """The keys that work now (neither revoked nor expired), or every one with `include_revoked`."""
    with session(settings) as db:
        q = select(ApiKey).order_by(ApiKey.id)
        if not include_revoked:
            q = q.where(ApiKey.revoked_at == None)  # noqa: E711  (SQL IS NULL)
        return [ApiKeyPublic.model_validate(r) for r in db.exec(q) if include_revoked or not expired(r)]


def key_id_of(key: str) -> str:
    """The public id of a full key (surrounding whitespace aside: a pasted key brings a newline), or `key`
    itself (an id, or anything else) with any full key in it masked: what may be logged or shown."""
    m = _KEY.fullmatch((key or "").strip())
    return m["id"] if m else masked_keys(key or "")


def revoke(key_id: str, settings: Settings) -> ApiKeyPublic:
    """Revoke by public id (or by the full key); serving processes stop accepting it within a second."""
    key_id = key_id_of(key_id)
    with session(settings) as db:
        row = db.exec(select(ApiKey).where(ApiKey.key_id == key_id)).first()
        if row is None:
            shown = repr(key_id) if _ID.fullmatch(key_id or "") else "given (an id is 12 hex digits)"
            raise NotFoundError(f"no API key with the id {shown}")
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
            db.add(row)
            db.commit()
            db.refresh(row)
        return ApiKeyPublic.model_validate(row)


MISS_LOOKUPS_PER_S = 20  # ids not in the loaded table that are looked up one by one (a key created since)


def _not_looked_up() -> BackendError:
    """An unknown id whose lookup is not due: not known to be invalid (a key created since may be among them), so
    it is "retry" (503 with Retry-After), not 401, which clients do not retry. A new one each time: a raised
    exception keeps its traceback, which one shared object would grow by every refused request."""
    return BackendError("an unknown key id could not be looked up just now (too many a second): retry")


class Verifier:
    """Checks a presented key against the catalog. The whole key table (a few rows) is read at most once per
    `ttl` seconds, so a request costs no database read and a revocation takes effect within `ttl`. An id the
    table lacks is looked up alone (a key created since works at once), but at most MISS_LOOKUPS_PER_S times a
    second: well-formed keys with random ids, which anyone can send, cost the catalog no more than that; the
    others raise BackendError (answered 503, retry), since a key created since may be among them."""

    def __init__(self, settings: Settings, ttl: float = 1.0):
        self._settings, self._ttl = settings, ttl
        self._rows: dict[str, ApiKey] = {}
        self._loaded = self._missed = self._failed = -math.inf
        self._lock = threading.Lock()

    def answers_now(self, presented: str | None) -> bool:
        """Whether checking `presented` now needs no read of the catalog (the table in memory holds its id,
        or it is malformed, or a read just failed, or an unknown id's lookup is not due): a caller on an event
        loop checks the others off it. An unknown id is a lookup, which anyone can make happen by sending one."""
        now = time.monotonic()
        if now - self._failed < self._ttl:
            return True
        if now - self._loaded >= self._ttl:
            return False
        m = _KEY.fullmatch((presented or "").strip())
        return m is None or m["id"] in self._rows or now - self._missed < 1 / MISS_LOOKUPS_PER_S

    def role(self, presented: str | None) -> str | None:
        """The role of a valid, unrevoked key; None otherwise (absent, malformed, unknown, revoked)."""
        row = self.record(presented)
        return row.role if row is not None else None

    def record(self, presented: str | None, include_ended: bool = False) -> ApiKey | None:
        """The catalog row of a valid key, neither revoked nor expired unless `include_ended`; None otherwise."""
        m = _KEY.fullmatch((presented or "").strip())  # as the HTTP gate takes it: a pasted key's newline
        if not m:
            return None
        row = self._row(m["id"])
        if row is None or (not include_ended and (row.revoked_at is not None or expired(row))):
            return None
        if not hmac.compare_digest(row.secret_hash, _hash(m["id"], m["secret"])):
            return None
        return row

    def _row(self, key_id: str) -> ApiKey | None:
        if time.monotonic() - self._loaded >= self._ttl:
            with self._lock:  # one reader refreshes; the others wait for it rather than query too
                if time.monotonic() - self._failed < self._ttl:  # the catalog is away: one try per ttl, not a request
                    raise BackendError("the API keys cannot be read from the catalog (its last read failed)")
                if time.monotonic() - self._loaded >= self._ttl:
                    try:
                        with session(self._settings) as db:
                            rows = db.exec(select(ApiKey)).all()
                            for r in rows:
                                db.expunge(r)
                    except Exception:
                        self._failed = time.monotonic()
                        raise
                    self._rows, self._loaded = {r.key_id: r for r in rows}, time.monotonic()
        row = self._rows.get(key_id)
        if row is None:
            if time.monotonic() - self._missed < 1 / MISS_LOOKUPS_PER_S:
                raise _not_looked_up()
            with self._lock:
                if time.monotonic() - self._missed < 1 / MISS_LOOKUPS_PER_S:
                    raise _not_looked_up()
                self._missed = time.monotonic()
                with session(self._settings) as db:
                    row = db.exec(select(ApiKey).where(ApiKey.key_id == key_id)).first()
                    if row is not None:
                        db.expunge(row)
                        self._rows = {**self._rows, key_id: row}
        return row
