"""Operator actions (aimass.admin): an admin key is required, each action is recorded with its outcome, and an
action started without waiting (what the console does for retrains) records its outcome when it ends."""
from __future__ import annotations

import time

import pytest

from aimass import admin, serving
from aimass.errors import InvalidInputError, NotFoundError


def _settled(s, action_id: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (row,) = [a for a in admin.history(settings=s) if a.id == action_id]
        if row.outcome != "running":
            return row
        time.sleep(0.05)
    raise AssertionError(f"action {action_id} still running after {timeout} s")


def test_an_action_started_without_waiting_records_its_outcome_when_it_ends(settings):
    key, ops = serving.create_key("ops", role="admin", settings=settings)
    _, victim = serving.create_key("victim", settings=settings)
    started = admin.act(key, "revoke_key", victim.key_id, wait=False, settings=settings)
    assert started.outcome == "running" and started.actor == f"console:ops ({ops.key_id})"
    done = _settled(settings, started.id)
    assert done.ok and done.outcome == f"key {victim.key_id} (victim) revoked"
    assert victim.key_id not in [k.key_id for k in serving.list_keys(settings=settings)]
    # a failure in the background raises nowhere: its record says why
    failed = _settled(settings, admin.act(key, "revoke_key", "0" * 12, wait=False, settings=settings).id)
    assert failed.ok is False and failed.outcome.startswith("failed: ")
    with pytest.raises(NotFoundError):  # waiting, the same failure is raised, and recorded as well
        admin.act(key, "revoke_key", "0" * 12, settings=settings)
    assert [a.ok for a in admin.history(settings=settings)] == [False, False, True]
    # revoked by the full key: the record, which the console shows, names only its public id
    full, other = serving.create_key("other", settings=settings)
    done = admin.act(key, "revoke_key", full, settings=settings)
    secret = full.removeprefix(f"aimass_{other.key_id}_")  # url-safe base64: it may hold "_" itself
    assert done.target == other.key_id and secret not in done.target + done.outcome
    assert secret not in str([a.model_dump() for a in admin.history(settings=settings)])
    # pasted with its newline (or with spaces): the same key, never its secret in the record, the log or a reply
    full, pasted = serving.create_key("pasted", settings=settings)
    assert admin.authorize(key + "\n", settings=settings).key_id == ops.key_id  # as the HTTP gate takes it
    done = admin.act(key, "revoke_key", f" {full}\n", detail=f"leaked {full}", settings=settings)
    secret = full.removeprefix(f"aimass_{pasted.key_id}_")
    assert done.ok and done.target == pasted.key_id and secret not in done.detail + done.outcome
    assert pasted.key_id not in [k.key_id for k in serving.list_keys(settings=settings)]


def test_the_console_may_start_a_retrain(settings):
    key, _ = serving.create_key("ops", role="admin", settings=settings)
    # the console's reason is a known one: what stops this retrain is the missing endpoint, and the record says so
    with pytest.raises(NotFoundError, match="nowhere"):
        admin.act(key, "retrain", "nowhere", settings=settings)
    (row,) = admin.history(settings=settings)
    assert row.ok is False and "reason" not in row.outcome and "nowhere" in row.outcome


def test_without_an_admin_key_nothing_runs_and_nothing_is_recorded(settings):
    consumer, _ = serving.create_key("app", settings=settings)
    _, victim = serving.create_key("victim", settings=settings)
    for key in (consumer, "aimass_0_wrong"):
        with pytest.raises(InvalidInputError, match="an admin API key is required"):
            admin.act(key, "revoke_key", victim.key_id, wait=False, settings=settings)
    assert admin.history(settings=settings) == [] and len(serving.list_keys(settings=settings)) == 2


@pytest.mark.parametrize("n", [0, -1, True])
def test_an_action_history_size_out_of_range_is_refused(settings, n):
    with pytest.raises(InvalidInputError, match="limit"):
        admin.history(limit=n, settings=settings)


def test_an_action_done_whose_record_cannot_be_written_is_returned_not_raised(settings, monkeypatch):
    """The catalog refusing the outcome's write (a full disk, a dropped connection) after the action took effect:
    the caller learns what happened, not a database error that would have it do the action again."""
    from aimass.catalog import session as real

    key, _ = serving.create_key("ops", role="admin", settings=settings)
    _, victim = serving.create_key("victim", settings=settings)
    calls = []

    def failing_after_the_first(s):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full")
        return real(s)

    monkeypatch.setattr(admin, "session", failing_after_the_first)
    done = admin.act(key, "revoke_key", victim.key_id, settings=settings)
    assert done.ok and done.outcome == f"key {victim.key_id} (victim) revoked" and len(calls) == 4
    assert victim.key_id not in [k.key_id for k in serving.list_keys(settings=settings)]


def test_a_revoked_key_is_told_apart_from_an_unknown_or_consumer_one(settings):
    """The console's operator pasting a key revoked since needs a new key, not the admin role: the refusal says
    which; a wrong secret for that key's id is still just no admin key."""
    key, ops = serving.create_key("ops", role="admin", settings=settings)
    serving.revoke_key(ops.key_id, settings=settings)
    with pytest.raises(InvalidInputError, match=f"this key \\({ops.key_id}\\) was revoked"):
        admin.authorize(key, settings=settings)
    forged = f"aimass_{ops.key_id}_{'A' * 43}"
    for other in (forged, serving.create_key("reader", settings=settings)[0]):
        with pytest.raises(InvalidInputError, match="an admin API key is required"):
            admin.authorize(other, settings=settings)
    assert serving.key_info(key, settings=settings) is None  # what the HTTP gate and the rest still get


def test_an_expired_key_is_told_so_and_left_out_of_the_keys_that_work(settings):
    """An expired admin key was refused as lacking the admin role, and listed among the working keys."""
    import time
    from datetime import UTC, datetime

    key, ops = serving.create_key("ops-trial", role="admin", expires_in_s=1, settings=settings)
    kept, _ = serving.create_key("ops", role="admin", settings=settings)
    time.sleep(max(0.0, (ops.expires_at - datetime.now(UTC)).total_seconds()) + 0.1)
    with pytest.raises(InvalidInputError, match=f"this key \\({ops.key_id}\\) expired at "):
        admin.authorize(key, settings=settings)
    assert admin.authorize(kept, settings=settings).name == "ops"
    assert [k.name for k in serving.list_keys(settings=settings)] == ["ops"]
    assert [k.name for k in serving.list_keys(include_revoked=True, settings=settings)] == ["ops-trial", "ops"]
