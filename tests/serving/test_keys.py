"""API keys' verifier (aimass.serving._keys.Verifier): what a presented key costs the catalog, and how soon a
new or revoked key counts."""
from __future__ import annotations

import secrets
import time

import pytest
from sqlalchemy import event

from aimass import serving
from aimass.catalog import engine_for
from aimass.errors import BackendError, InvalidInputError
from aimass.serving._keys import MISS_LOOKUPS_PER_S, Verifier, key_id_of


def test_random_key_ids_cost_few_queries_and_changes_count_in_time(settings):
    key, _ = serving.create_key("app", settings=settings)
    verifier = Verifier(settings, ttl=0.5)
    queries = []
    event.listen(engine_for(settings.catalog), "before_cursor_execute", lambda *a: queries.append(1))
    assert verifier.role(key) == "consumer"
    # anyone can send well-formed keys with ids never issued: at most MISS_LOOKUPS_PER_S of them a second
    # reach the catalog, the rest are a lookup in memory
    t0 = time.monotonic()
    looked_up = deferred = 0
    for _ in range(200):
        try:
            assert verifier.role(f"aimass_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}") is None
            looked_up += 1
        except BackendError:  # not due for a lookup: "retry" (503), not "invalid" (401)
            deferred += 1
    spent = time.monotonic() - t0
    assert len(queries) <= 2 + spent * MISS_LOOKUPS_PER_S < 100, (len(queries), spent)
    assert looked_up >= 1 and deferred >= 100, (looked_up, deferred)
    assert verifier.role(key) == "consumer"  # the issued key is still known
    # a key created during such a flood: told to retry while its lookup is not due, never refused as invalid
    steady = Verifier(settings, ttl=60)
    assert steady.role(key) == "consumer"  # the table read, without the key below
    fresh, _ = serving.create_key("later", settings=settings)
    assert steady.role(f"aimass_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}") is None  # a lookup spent
    with pytest.raises(BackendError, match="retry"):
        steady.role(fresh)
    time.sleep(1 / MISS_LOOKUPS_PER_S)
    assert steady.role(fresh) == "consumer"  # a key created since the table was read works once looked up
    serving.revoke_key(key, settings=settings)
    time.sleep(0.6)
    assert verifier.role(key) is None  # a revocation counts within the ttl


def test_a_key_name_with_a_newline_is_refused_and_a_pasted_keys_newline_is_not_part_of_it(settings):
    with pytest.raises(InvalidInputError, match="invalid key name"):
        serving.create_key("app\n", settings=settings)
    assert serving.list_keys(settings=settings) == []
    key, row = serving.create_key("app", settings=settings)
    verifier = Verifier(settings)
    # surrounding whitespace is no part of a key, as the HTTP gate reads it (a pasted key brings a newline):
    # the same key everywhere, and its id, never its secret, where it is named
    assert verifier.role(key) == verifier.role(key + "\n") == verifier.role(f" {key} ") == "consumer"
    assert key_id_of(key) == key_id_of(key + "\n") == row.key_id
    assert verifier.role(key[:-1] + "\n") is None and verifier.role(key + "x") is None


def test_a_catalog_that_is_away_is_read_once_per_ttl_not_once_per_request(settings, monkeypatch):
    """While the catalog cannot be read, every request is refused (503 over HTTP), but only one a ttl tries it:
    each try can block for the server's connect timeout."""
    from aimass.serving import _keys

    tries = []

    def away(_settings):  # a catalog server that does not answer
        tries.append(1)
        raise ConnectionError("connection to the catalog timed out")

    monkeypatch.setattr(_keys, "session", away)
    verifier = Verifier(settings, ttl=0.5)
    key = f"aimass_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    with pytest.raises(ConnectionError):
        verifier.role(key)
    assert tries == [1] and verifier.answers_now(key)  # answered from the failed read until the ttl passes
    for _ in range(50):
        with pytest.raises(BackendError, match="cannot be read"):
            verifier.role(key)
    assert tries == [1]
    time.sleep(0.6)
    assert not verifier.answers_now(key)
    with pytest.raises(ConnectionError):
        verifier.role(key)
    assert tries == [1, 1]


def test_an_unknown_id_is_looked_up_off_the_event_loop(settings):
    """A random, well-formed key id is a catalog read (its lookup): over HTTP it must not run on the replica's
    event loop, which the other requests and health checks share. A known id, a malformed key and an id whose
    lookup is not due answer from memory."""
    key, _ = serving.create_key("app", settings=settings)
    verifier = Verifier(settings, ttl=30)
    assert not verifier.answers_now(key)  # nothing read yet
    assert verifier.role(key) == "consumer"
    assert verifier.answers_now(key) and verifier.answers_now("not a key") and verifier.answers_now(None)
    stranger = f"aimass_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    assert not verifier.answers_now(stranger)  # its lookup is due: off the loop
    assert verifier.role(stranger) is None
    assert verifier.answers_now(f"aimass_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}")  # not due again yet
