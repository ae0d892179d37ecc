"""Operator actions (the console's): each needs an admin API key and is recorded in the catalog with who asked,
what, when and how it ended, whether it succeeded or not.

    >>> aimass.admin.act(key, "rollback", "recs")                        # the split before the current one
    >>> aimass.admin.act(key, "set_traffic", "recs", arms="recs/3=90 recs/4=10")
    >>> aimass.admin.act(key, "promote", "recs/4")                        # champion, through the gate
    >>> aimass.admin.act(key, "retrain", "recs")
    >>> aimass.admin.act(key, "revoke_key", "0123456789ab")
    >>> aimass.admin.history()                                             # newest first
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlmodel import select

from aimass.catalog import AdminAction, AdminActionPublic, ApiKeyPublic, session
from aimass.errors import AimassError, InvalidInputError
from aimass.settings import Settings, default_settings, redacted

log = logging.getLogger(__name__)


def authorize(key: str, *, settings: Settings | None = None) -> ApiKeyPublic:
    """The admin key's record; InvalidInputError for anything else (a consumer key, a revoked or unknown one)."""
    from aimass import serving

    s = settings or default_settings()
    who = serving.key_info(key, include_ended=True, settings=s)
    if who is not None and who.revoked_at is not None:  # told apart: a new key is what helps, not another role
        raise InvalidInputError(f"this key ({who.key_id}) was revoked: ask an admin for a new one "
                                "(aimass keys create NAME --admin)")
    if who is not None and serving.key_expired(who):
        raise InvalidInputError(f"this key ({who.key_id}) expired at {who.expires_at:%Y-%m-%d %H:%M} UTC: ask an "
                                "admin for a new one (aimass keys create NAME --admin)")
    if who is None or who.role != "admin":
        raise InvalidInputError("an admin API key is required (aimass keys create NAME --admin)")
    return who


def _rollback(target: str, detail: str, actor: str, s: Settings) -> str:
    from aimass import serving

    return _split_text(serving.rollback(target, actor=actor, settings=s))


def _set_traffic(target: str, detail: str, actor: str, s: Settings) -> str:
    from aimass import serving

    arms = detail.split()
    if not arms:
        raise InvalidInputError("arms are required, as REF=WEIGHT ...")
    return _split_text(serving.set_traffic(target, arms, reason="console", actor=actor, settings=s))


def _split_text(split) -> str:
    return f"split #{split.id}: " + " ".join(f"{a['ref']}={a['weight']}" for a in split.arms)


def _promote(target: str, detail: str, actor: str, s: Settings) -> str:
    from aimass import registry

    name, version, _ = registry.parse_ref(target)
    if version is None:
        raise InvalidInputError(f"promote needs NAME/VERSION, got {target!r}")
    p = registry.promote(name, version, settings=s)
    return f"{target} is champion" + (" (forced)" if p.forced else "")


def _retrain(target: str, detail: str, actor: str, s: Settings) -> str:
    from aimass import retraining

    # in a process of its own: this one (the console's) is attached to the serving cluster for its pages, and Ray
    # is one cluster a process: the job's own Ray and the pages' connection would each shut the other down
    r = retraining.retrain_in_process(target, reason="console", settings=s)
    return f"{r.status}: {r.challenger or '-'} on {r.dataset or '-'}"


def _revoke_key(target: str, detail: str, actor: str, s: Settings) -> str:
    from aimass import serving

    k = serving.revoke_key(target, settings=s)
    return f"key {k.key_id} ({k.name}) revoked"


ACTIONS: dict[str, Callable[[str, str, str, Settings], str]] = {
    "rollback": _rollback, "set_traffic": _set_traffic, "promote": _promote, "retrain": _retrain,
    "revoke_key": _revoke_key}


def act(key: str, action: str, target: str, detail: str = "", *, wait: bool = True,
        settings: Settings | None = None) -> AdminActionPublic:
    """Run one operator action as the admin key's holder and record it (also when it fails: the record says
    why, and the error is raised). A refused key records nothing and changes nothing. With `wait=False` the
    action runs in a thread of this process and the record is returned at once with outcome 'running'; the
    thread writes the outcome when it ends (`history` shows it). The console starts retrains so: they take
    minutes, and a page must not wait for them."""
    s = settings or default_settings()
    if action not in ACTIONS:
        raise InvalidInputError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    who = authorize(key, settings=s)
    actor = f"console:{who.name} ({who.key_id})"
    from aimass import serving

    # a full key given as the target (revoke_key) is recorded, logged and shown as its id only; one pasted
    # into any other field is masked
    target, detail = serving.key_id_of(target), serving.key_id_of(detail)
    row = AdminAction(actor=actor, action=action, target=target, detail=detail[:500], outcome="running")
    with session(s) as db:
        db.add(row)
        db.commit()
        db.refresh(row)
        started = AdminActionPublic.model_validate(row)
    if not wait:
        threading.Thread(target=_run, args=(started.id, action, target, detail, actor, s), daemon=True,
                         name=f"aimass-admin-{started.id}").start()
        return started
    out, error = _run(started.id, action, target, detail, actor, s)
    if error is not None:
        raise error
    return out


def _run(row_id: int, action: str, target: str, detail: str, actor: str,
         s: Settings) -> tuple[AdminActionPublic, BaseException | None]:
    """The action, and its outcome written to its record whatever happens (an unexpected error too, which is
    then returned for the caller to raise)."""
    error: BaseException | None = None
    try:
        result, ok = ACTIONS[action](target, detail, actor, s), True
    except Exception as e:
        error, ok = e, False
        # recorded, logged and shown on the console: never a credential a library quoted in a URL
        result = redacted(f"failed: {e}" if isinstance(e, AimassError) else f"failed: {type(e).__name__}: {e}")
        log.warning("admin action %s on %s by %s %s", action, target, actor, result)
    # The action has taken effect (or failed) whatever this write does: a catalog that refuses it for a moment is
    # tried again, then the outcome is logged and returned, and only the action's own error is raised (a caller
    # told a done rollback failed would roll back twice).
    for attempt in range(3):
        try:
            with session(s) as db:
                stored = db.get(AdminAction, row_id)
                stored.outcome = result[:1000]
                stored.ok = ok
                db.add(stored)
                db.commit()
                db.refresh(stored)
                return AdminActionPublic.model_validate(stored), error
        except Exception:
            if attempt == 2:
                log.exception("admin action %s (record %s) ended %s, but its record could not be written: it "
                              "still says running", action, row_id, "ok" if ok else "failed")
            else:
                time.sleep(0.5 * (attempt + 1))
    return AdminActionPublic(id=row_id, actor=actor, action=action, target=target, detail=detail[:500],
                             outcome=result[:1000], ok=ok), error


def history(*, limit: int = 100, settings: Settings | None = None) -> list[AdminActionPublic]:
    """The recorded operator actions, newest first."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:  # SQLite reads -1 as all, Postgres fails
        raise InvalidInputError(f"limit must be a whole number of at least 1, got {limit!r}")
    s = settings or default_settings()
    with session(s) as db:
        rows = db.exec(select(AdminAction).order_by(AdminAction.id.desc()).limit(limit)).all()
    return [AdminActionPublic.model_validate(r) for r in rows]
