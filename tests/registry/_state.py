"""What a refused registry operation must leave unchanged: every model, its versions, aliases and tags."""
from __future__ import annotations

from aimass import models
from aimass.settings import Settings


def snapshot(s: Settings) -> list:
    return [(m["name"], m["versions"], sorted(m["aliases"].items()),
             # the gate's last decision on a version is a record of what was asked, not state it changed
             [sorted((k, x) for k, x in v.tags.items() if k != "aimass.gate")
              for v in models.versions(m["name"], settings=s)])
            for m in models.list(settings=s)]
