"""What a refused registry operation must leave unchanged: every model, its versions, aliases and tags."""
from __future__ import annotations

from aimass import models
from aimass.settings import Settings


def snapshot(s: Settings) -> list:
    return [(m["name"], m["versions"], sorted(m["aliases"].items()),
             [sorted(v.tags.items()) for v in models.versions(m["name"], settings=s)])
            for m in models.list(settings=s)]
