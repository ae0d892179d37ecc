"""API keys' verifier (aimass.serving._keys.Verifier): what a presented key costs the catalog, and how soon a
new or revoked key counts."""
from __future__ import annotations

import secrets
import time

from sqlalchemy import event

from aimass import serving
from aimass.catalog import engine_for
from aimass.serving._keys import Verifier


def test_random_key_ids_cost_no_query_and_changes_count_within_the_ttl(settings):
    key, _ = serving.create_key("app", settings=settings)
    verifier = Verifier(settings, ttl=0.5)
    queries = []
    event.listen(engine_for(settings.catalog), "before_cursor_execute", lambda *a: queries.append(1))
    assert verifier.role(key) == "consumer"
    # anyone can send well-formed keys with ids never issued: each is a lookup in memory, never a query
    for _ in range(200):
        assert verifier.role(f"aimass_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}") is None
    assert len(queries) == 1 and verifier.role(key) == "consumer"  # the issued key is still known
    fresh, _ = serving.create_key("later", settings=settings)
    serving.revoke_key(key, settings=settings)
    time.sleep(0.6)
    assert verifier.role(fresh) == "consumer" and verifier.role(key) is None  # both within the ttl
