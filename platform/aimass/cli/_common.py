from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

import typer

from aimass import console
from aimass.settings import Settings


class _State:
    settings: Settings
    verbose: bool = False


state = _State()

JSON = typer.Option(False, "--json", help="Machine-readable output.")


def emit(data: Any, as_json: bool, table: Iterable[str] | None = None) -> None:
    """Print `data` as JSON, or the human lines in `table` (default: key: value lines), on the real stdout."""
    if as_json:
        console.result(json.dumps(_finite(_plain(data)), indent=2, default=str, allow_nan=False))
        return
    if table is None:
        plain = _plain(data)
        width = max((len(str(k)) for k in plain), default=0)
        table = [f"{k:>{width}}: {_value(v)}" for k, v in plain.items()]
    lines = list(table)
    if lines:
        console.result("\n".join(lines))


def _value(v: Any) -> str:
    """A key: value line's value as a person reads it: a mapping as "key value, ...", a list comma-separated,
    None as "-", a float to at most 4 decimals."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {_value(x)}" for k, x in v.items()) or "-"
    if isinstance(v, list | tuple):
        return ", ".join(_value(x) for x in v) or "-"
    if v is None:
        return "-"
    return str(round(v, 4)) if isinstance(v, float) and math.isfinite(v) else str(v)


def _plain(data: Any) -> Any:
    if hasattr(data, "model_dump"):
        d = data.model_dump(mode="json")
        if hasattr(data, "ref"):
            d = {"ref": data.ref, **d}
        return d
    if isinstance(data, list):
        return [_plain(x) for x in data]
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    return data


def _finite(data: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers (a diverged run's loss), and strict parsers refuse
    the NaN Python's json writes by default."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, list | tuple):
        return [_finite(x) for x in data]
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    return data


def rows(items: list[dict], cols: list[str]) -> list[str]:
    """A table: a header of the upper-cased names, a line an item; floats to at most 4 decimals (a metric's 17
    digits are noise; 0.2 minutes stays 0.2), a missing value as "-" (Python's None is not a reader's word), no
    padding after the last column."""
    shown = [{c: _value(r.get(c, "")) for c in cols} for r in items]
    widths = [max(len(c), *(len(r[c]) for r in shown)) if shown else len(c) for c in cols]
    out = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=False)).rstrip()]
    out += ["  ".join(r[c].ljust(w) for c, w in zip(cols, widths, strict=False)).rstrip() for r in shown]
    return out


def demo_config(**sizes):
    """The demo generator's config, or bad input naming the first field out of range."""
    from pydantic import ValidationError

    from aimass.datasets import DemoConfig
    from aimass.errors import InvalidInputError

    try:
        return DemoConfig(**sizes)
    except ValidationError as e:
        raise InvalidInputError(f"invalid demo size: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}") from None


def parse_pairs(pairs: list[str] | None, flag: str) -> dict:
    """Repeated ``key=value`` options as a dict, each value read as JSON when it is JSON, else as text."""
    from aimass.errors import InvalidInputError

    out = {}
    for p in pairs or []:
        key, sep, raw = p.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"{flag} wants key=value, got {p!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def seconds(text: str, what: str = "window") -> float:
    """'90s', '30m', '1h', '1.5h', '2d', '1w' or plain seconds."""
    from aimass.errors import InvalidInputError

    m = _DURATION.match(text or "")
    if not m or float(m[1]) <= 0:
        raise InvalidInputError(f"invalid {what} {text!r}: use a positive duration such as 90s, 30m, 1h, 2d or 1w")
    return float(m[1]) * DURATION_UNITS[m[2] or "s"]


def retrain_outcome(r) -> str:
    """The gate's verdict and what came of it, from the retrain's status: a passing gate alone does not say
    whether the challenger went out (a canary that could not start leaves it the challenger)."""
    if r.status == "canary":
        return "passed, canary"
    if r.status == "promoted":
        return "passed, promoted"
    if r.gate_passed:
        return "passed, not promoted: it stays the challenger, the champion is kept (why: below)"
    return "refused, champion kept"
