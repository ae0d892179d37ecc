"""The one layout every later stage reads: interactions in time order plus an optional items table.

interactions: user_id int64, item_id int64, timestamp int64, and optionally event (string), value (float64),
split (string: train / val_input / val / test, for sources that fix their own evaluation roles).
items: item_id int64 unique, text (string), and any further string/number columns (title, artist, ...).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging

import numpy as np
import pandas as pd

from aimass.errors import InvalidInputError

REQUIRED = ("user_id", "item_id", "timestamp")
OPTIONAL = {"event": "string", "value": "float64", "split": "string"}
SPLITS = ("train", "val_input", "val", "test")
ID_MAX = 2**62  # the largest user or item id serving, feedback and the catalog accept
# (unit, per second, the largest unix time it reads, exclusive): seconds past 1e11 would be after the year 5000
UNITS = (("milliseconds", 10**3, 1e14), ("microseconds", 10**6, 1e17), ("nanoseconds", 10**9, float("inf")))

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Canonical:
    interactions: pd.DataFrame
    items: pd.DataFrame | None
    timestamp_kind: str  # "unix" or "order"

    def columns(self) -> dict[str, dict[str, str]]:
        out = {"interactions": {c: str(t) for c, t in self.interactions.dtypes.items()}}
        if self.items is not None:
            out["items"] = {c: str(t) for c, t in self.items.dtypes.items()}
        return out

    def content_hash(self) -> str:
        h = hashlib.sha256()
        tables = [("interactions", self.interactions)]
        if self.items is not None:
            tables.append(("items", self.items))
        for table, df in tables:
            h.update(f"{table}:{len(df)};".encode())
            for col in df.columns:
                h.update(f"{col}:{df[col].dtype};".encode())
                values = df[col]
                if values.dtype.kind in "iuf":
                    h.update(np.ascontiguousarray(values.to_numpy()).tobytes())
                else:  # strings: length-prefixed so ("ab","c") and ("a","bc") differ
                    for v in values.astype(object):
                        b = b"\xff" if v is None or v is pd.NA else str(v).encode()
                        h.update(len(b).to_bytes(8, "little") + b)
        h.update(self.timestamp_kind.encode())
        return h.hexdigest()

    def stats(self) -> dict[str, int]:
        i = self.interactions
        items = set(i["item_id"].unique())
        return {
            "n_rows": len(i),
            "n_users": int(i["user_id"].nunique()),
            "n_items": len(items) if len(i) else (0 if self.items is None else len(self.items)),
        }


def normalise(
    interactions: pd.DataFrame, items: pd.DataFrame | None, timestamp_kind: str, what: str, ties: str = "source"
) -> Canonical:
    """Coerce and validate a reader's output; every message names the source (`what`) and the problem. Rows
    go in time order; a user's rows with equal timestamps keep the source's order (`ties="source"`: positions
    a format numbers itself, rows a fold appends after the parent's) or a seeded order of their (user, item)
    (`ties="hashed"`: files exported in an order of their own, see _tie_order)."""
    missing = [c for c in REQUIRED if c not in interactions.columns]
    if missing:
        raise InvalidInputError(f"{what}: missing column(s) {', '.join(missing)}")
    extra = [c for c in interactions.columns if c not in REQUIRED and c not in OPTIONAL]
    if extra:
        raise InvalidInputError(
            f"{what}: unexpected column(s) {', '.join(extra)}; allowed: {', '.join((*REQUIRED, *OPTIONAL))}"
        )
    if items is None and interactions.empty:
        raise InvalidInputError(f"{what}: no interactions")
    df = pd.DataFrame({c: _integers(interactions[c], c, what) for c in REQUIRED})
    for col, dtype in OPTIONAL.items():
        if col in interactions.columns:
            s = interactions[col]
            if dtype == "float64":
                num = pd.to_numeric(s, errors="coerce")
                if num.isna().any():
                    raise InvalidInputError(f"{what}: column {col} has non-numeric or empty values")
                if not np.isfinite(num.to_numpy(dtype="float64")).all():  # as feedback's value refuses them
                    raise InvalidInputError(f"{what}: column {col} has infinite values")
                df[col] = num.astype("float64")
            else:
                if s.isna().any():
                    raise InvalidInputError(f"{what}: column {col} has empty values")
                df[col] = s.astype(str).astype("string")
    if "split" in df.columns:
        bad = sorted(set(df["split"].unique()) - set(SPLITS))
        if bad:
            raise InvalidInputError(f"{what}: unknown split value(s) {bad}; allowed {list(SPLITS)}")
        _check_roles(df, what)
    # The same event twice (a joined export, a re-posted review): stored once, whatever the timestamps mean. Left
    # in, leave-one-out would hold out a copy of an item still in the history: a repeat the user never made, and a
    # miss for every model (the evaluation counts a target the user had as one, as answers leave such items out).
    # Formats that number the rows themselves (sasrec, ml1m-seq, lastfm) give each row its own position, so lose
    # nothing.
    df = df.drop_duplicates(ignore_index=True)
    df = _tie_order(df) if ties == "hashed" else df
    # Time order, stable, so the order above breaks ties between equal timestamps.
    df = df.sort_values("timestamp", kind="stable").reset_index(drop=True)
    if items is not None:
        items = _normalise_items(items, what)
    return Canonical(df, items, timestamp_kind)


def _tie_order(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with each user's rows of one timestamp in a seeded order of (user, item), the same whatever order the
    file lists them in. Exports list a user's rows by item id (MovieLens-10M and later: user, then movie; a
    review dump: by product) and many users rate several items in one second: the file's order made the held-out
    item the highest id of the last second, an order a model can learn (it did on Last.fm's id order), and a
    date-only export's figures a matter of how it was sorted. Rows of other users or other times keep theirs."""
    tied = df.duplicated(["user_id", "timestamp"], keep=False).to_numpy()
    if not tied.any():
        return df
    key = np.zeros(len(df), dtype=np.uint64)
    u = df["user_id"].to_numpy(dtype=np.int64)[tied].astype(np.uint64)
    i = df["item_id"].to_numpy(dtype=np.int64)[tied].astype(np.uint64)
    with np.errstate(over="ignore"):  # splitmix64: wrapping uint64 arithmetic is the point
        z = u * np.uint64(0x9E3779B97F4A7C15) + i
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        key[tied] = z ^ (z >> np.uint64(31))
    # lexsort is stable: by time, then the key (0 for untied rows, so theirs stays the source's)
    return df.iloc[np.lexsort((key, df["timestamp"].to_numpy()))]


def unix_seconds(ts: pd.Series, what: str) -> pd.Series:
    """A timestamp column as whole unix seconds where it is plainly something else: date-times (Parquet's
    timestamp type), or numbers too large to be seconds (past 1e11, the year 5138), taken as milli-, micro- or
    nanoseconds by their size. Anything else is returned as it is, for normalise to check."""
    ts = _uncategorised(ts)
    if ts.dtype == object and pd.api.types.infer_dtype(ts, skipna=True) in ("date", "datetime"):
        ts = pd.to_datetime(ts, utc=True)  # Parquet's date type, or datetime objects
    elif ts.dtype == object and ts.notna().all() and pd.to_numeric(ts, errors="coerce").isna().any():
        # text that is not all numbers: ISO 8601 date-times as exports write them ("2020-09-13T12:35:00Z"),
        # taken when every one of them is one (else normalise names a value as written)
        parsed = pd.to_datetime(ts, utc=True, errors="coerce", format="ISO8601")
        if parsed.notna().all():
            ts = parsed
    if not pd.api.types.is_datetime64_any_dtype(ts):
        return _rescaled(ts, what)
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    log.info("%s: timestamp column holds date-times; stored as unix seconds (UTC when no zone is given)", what)
    return (ts - pd.Timestamp(0)) // pd.Timedelta(seconds=1)  # whole seconds, floored as for numbers; NaT -> NaN


def _rescaled(ts: pd.Series, what: str) -> pd.Series:
    num = ts if ts.dtype.kind in "iu" else pd.to_numeric(ts, errors="coerce")
    if num.isna().any():
        return ts  # not all numbers: refused by normalise, naming a value as written
    top = num.abs().max()
    if (num % 1 != 0).any():
        if not 1e8 < top < 1e11:  # fractions of an order number, or of milliseconds: ambiguous, refused
            return ts
        log.info("%s: timestamps are unix seconds with fractions; stored as whole seconds (floored)", what)
        return np.floor(num).astype("int64")
    if not 1e11 < top <= ID_MAX:  # beyond ID_MAX normalise refuses it as out of range
        return ts
    unit, scale = next((u, f) for u, f, below in UNITS if top < below)
    log.info("%s: timestamps reach %d, too large for seconds; read as %s and stored as unix seconds", what, top,
             unit)
    return num.astype("int64") // scale


def _check_roles(df: pd.DataFrame, what: str) -> None:
    """The rules evaluation.make_splits (protocol ml1m-seq) holds a split column to, checked here so that a
    version it would refuse is never registered: a user's 'val' or 'test' row is that user's one target."""
    for role in ("val", "test"):
        counts = df.loc[df["split"] == role, "user_id"].value_counts()
        if (counts > 1).any():
            user, n = int(counts.index[counts > 1][0]), int(counts[counts > 1].iloc[0])
            raise InvalidInputError(f"{what}: a user may have at most one split {role!r} row (the {role} target), "
                                    f"but user {user} has {n}")
    if not (df["split"] == "val").any():
        raise InvalidInputError(f"{what}: a split column needs some 'val' rows (validation targets); it has none")


def _integers(s: pd.Series, col: str, what: str) -> pd.Series:
    """`s` as int64. Ids must lie in 0..ID_MAX, the range serving, feedback and the catalog take, so a version
    never holds an id they would refuse; timestamps may be negative (before 1970)."""
    s = _uncategorised(s)
    if s.isna().any():
        raise InvalidInputError(f"{what}: column {col} has empty values")
    num = s if s.dtype.kind in "iu" else pd.to_numeric(s, errors="coerce")
    bad = num.isna() | (num % 1 != 0)
    if bad.any():
        raise InvalidInputError(f"{what}: column {col} must hold integers, found {_shown(s[bad].iloc[0])!r}")
    # checked before the cast: int64 would wrap a large uint64 to a negative number, or a float to garbage
    low = -ID_MAX if col == "timestamp" else 0
    out = (num < low) | (num > ID_MAX)
    if out.any():
        raise InvalidInputError(f"{what}: column {col} must hold integers from {'-2**62' if low else 0} to 2**62, "
                                f"found {_shown(s[out].iloc[0])!r}")
    return num.astype("int64")


def _shown(v: object) -> object:
    return v.item() if isinstance(v, np.generic) else v  # 5, not np.int64(5)


def _uncategorised(s: pd.Series) -> pd.Series:
    """A pandas `category` column (read_parquet restores one) as plain values: filling or casting a
    categorical fails on any value outside its categories."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        return pd.Series(np.asarray(s), index=s.index, name=s.name)
    return s


def _normalise_items(items: pd.DataFrame, what: str) -> pd.DataFrame:
    if "item_id" not in items.columns:
        raise InvalidInputError(f"{what} items: missing column item_id")
    if items.empty:
        raise InvalidInputError(f"{what} items: no rows")
    out = items.copy()
    out["item_id"] = _integers(out["item_id"], "item_id", f"{what} items")
    if out["item_id"].duplicated().any():
        dup = out.loc[out["item_id"].duplicated(), "item_id"].iloc[0]
        raise InvalidInputError(f"{what} items: item_id {dup} appears more than once")
    for col in out.columns:
        out[col] = _uncategorised(out[col])
        if col != "item_id" and out[col].dtype.kind not in "iuf":
            out[col] = out[col].fillna("").astype(str).astype("string")
    if "text" not in out.columns:
        text_cols = [c for c in out.columns if c != "item_id" and out[c].dtype == "string"]
        out["text"] = out[text_cols].agg(" | ".join, axis=1) if text_cols else ""
        out["text"] = out["text"].astype("string")
    return out.sort_values("item_id", kind="stable").reset_index(drop=True)
