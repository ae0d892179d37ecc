"""One JSON file per retrain attempt, `home/retraining/<endpoint>/<started>.json`: what an operator reads to
know why a model changed (or did not), and what the triggers read to know when the last attempt was."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from aimass.settings import Settings

log = logging.getLogger(__name__)


def folder(settings: Settings, endpoint: str) -> Path:
    from aimass.serving import check_endpoint  # the endpoint becomes a path: only serving's names pass

    return settings.home / "retraining" / check_endpoint(endpoint)


def write(settings: Settings, result) -> Path:
    """Write atomically, so a reader never sees half a record."""
    d = folder(settings, result.endpoint)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{result.started_at.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    result.record = str(path)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(result.model_dump(mode="json"), indent=2))
    os.replace(tmp, path)
    return path


def read(settings: Settings, endpoint: str, limit: int | None = None) -> list[dict]:
    """The endpoint's records, newest first (names sort by start time)."""
    d = folder(settings, endpoint)
    out = []
    for p in sorted(d.glob("*.json"), reverse=True) if d.exists() else []:
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):  # one damaged file must not hide the others
            log.warning("skipping unreadable retrain record %s", p)
            continue
        if limit is not None and len(out) >= limit:
            break
    return out
