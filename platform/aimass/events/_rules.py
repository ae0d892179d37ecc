"""Which event types count as positive or negative (Gorse-style rules): a bare type ("like") or a type with a
value threshold ("play>=30"). An event matches a rule when its type is the rule's and, for a threshold, its
value is given and passes it. Positive rules win over negative ones; a known type that matches neither is
neutral (an impression, a short play)."""
from __future__ import annotations

import math
import operator
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aimass.errors import ConflictError, InvalidInputError
from aimass.settings import Settings

if TYPE_CHECKING:
    from aimass.catalog import FeedbackEventBase

_RULE = re.compile(r"^\s*(?P<type>[a-z][a-z0-9_]{0,31})\s*(?:(?P<op>>=|<=|>|<|==)\s*(?P<x>-?\d+(?:\.\d+)?))?\s*$")
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


class Rules:
    def __init__(self, positive: list[str], negative: list[str], neutral: list[str] = ()):
        self.positive = [_parse(r, "positive") for r in positive]
        self.negative = [_parse(r, "negative") for r in negative]
        self.types = sorted({t for t, _, _ in [*self.positive, *self.negative, *map(lambda r: _parse(r, "neutral"),
                                                                                    neutral)]})

    @property
    def positive_types(self) -> set[str]:
        return {t for t, _, _ in self.positive}

    @property
    def negative_types(self) -> set[str]:
        return {t for t, _, _ in self.negative}

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        return cls(settings.feedback_positive, settings.feedback_negative, settings.feedback_neutral)

    def check_type(self, type_: str) -> None:
        if type_ not in self.types:
            raise InvalidInputError(f"unknown event type {type_!r}; known types: {', '.join(self.types)} "
                                    "(AIMASS_FEEDBACK_POSITIVE / _NEGATIVE / _NEUTRAL configure them)")

    def polarity(self, type_: str, value: float | None) -> int:
        """+1 positive, -1 negative, 0 neutral."""
        for rules, sign in ((self.positive, 1), (self.negative, -1)):
            for t, op, x in rules:
                if t == type_ and (op is None or (value is not None and _OPS[op](value, x))):
                    return sign
        return 0

    def polarities(self, types: pd.Series, values: pd.Series) -> np.ndarray:
        """polarity() of every row, vectorised (ingest and retraining read millions)."""
        out = np.zeros(len(types), dtype=np.int8)
        done = np.zeros(len(types), dtype=bool)
        v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        t = types.to_numpy()
        for rules, sign in ((self.positive, 1), (self.negative, -1)):
            for typ, op, x in rules:
                hit = (t == typ) & ~done
                if op is not None:
                    with np.errstate(invalid="ignore"):
                        hit &= ~np.isnan(v) & _OPS[op](v, x)
                out[hit] = sign
                done |= hit
        return out

    def positive_clause(self, type_col, value_col):
        """polarity() > 0 as a SQL condition on a table's type and value columns (positive rules win, so an
        event is positive exactly when it matches one)."""
        return _matches(self.positive, type_col, value_col)

    def type_clause(self, type_: str, type_col, value_col):
        """The events of `type_` that its rules count, as a SQL condition: those matching one of its positive
        rules when it has any ("play>=30": plays of 30 or more, not every play), else its negative ones, else
        every event of the type (a neutral type)."""
        for rules in (self.positive, self.negative):
            mine = [r for r in rules if r[0] == type_]
            if mine:
                return _matches(mine, type_col, value_col)
        return type_col == type_

    def polarity_case(self, type_col, value_col):
        """polarity() as a SQL expression: counts by polarity in the database, not over a frame of the log."""
        from sqlalchemy import case

        return case((self.positive_clause(type_col, value_col), 1),
                    (_matches(self.negative, type_col, value_col), -1), else_=0)


def _matches(rules: list[tuple[str, str | None, float | None]], type_col, value_col):
    from sqlalchemy import and_, false, or_

    return or_(false(), *(type_col == t if op is None else
                          and_(type_col == t, value_col.is_not(None), _OPS[op](value_col, x))
                          for t, op, x in rules))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check(events: list[FeedbackEventBase], rules: Rules, settings: Settings, now: datetime | None = None) -> None:
    """What the field types cannot say: a known type (InvalidInputError), a timestamp from 1970 on and not too
    far ahead of this server's clock (ConflictError: the event is well-formed, the clock disagrees). Names the
    event. Here, not in the package, so that EventLog's own writes can call it."""
    now = now or datetime.now(UTC)
    limit = now + timedelta(seconds=settings.feedback_max_future_s)
    for i, e in enumerate(events):
        where = f"event {i} ({e.event_id!r})" if len(events) > 1 else f"event {e.event_id!r}"
        if e.type not in rules.types:
            raise InvalidInputError(f"{where}: unknown event type {e.type!r}; known types: "
                                    f"{', '.join(rules.types)} (AIMASS_FEEDBACK_POSITIVE/_NEGATIVE/_NEUTRAL)")
        if e.value is not None and not math.isfinite(e.value):  # /feedback's JSON cannot say it; the SDK can
            raise InvalidInputError(f"{where}: value must be a finite number, got {e.value}")
        ts = e.timestamp if e.timestamp.tzinfo else e.timestamp.replace(tzinfo=UTC)
        if ts < EPOCH:  # well-formed, but no behaviour log starts before it (and year 825 breaks SQLite's reader)
            raise ConflictError(f"{where}: timestamp {ts.isoformat()} is before 1970-01-01")
        if ts > limit:
            raise ConflictError(f"{where}: timestamp {ts.isoformat()} is more than "
                                f"{settings.feedback_max_future_s:g} s in the future")


def _parse(rule: str, kind: str) -> tuple[str, str | None, float | None]:
    m = _RULE.match(rule)
    if not m:
        raise InvalidInputError(f"invalid {kind} feedback rule {rule!r}: use a type ('like') or a type with a "
                                "threshold ('play>=30')")
    return m["type"], m["op"], float(m["x"]) if m["x"] is not None else None
