"""The one layout every later stage reads: interactions in time order plus an optional items table.

interactions: user_id int64, item_id int64, timestamp int64, and optionally event (string), value (float64),
split (string: train / val_input / val / test, for sources that fix their own evaluation roles).
items: item_id int64 unique, text (string), and any further string/number columns (title, artist, ...).
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd

from aimass.errors import InvalidInputError

REQUIRED = ("user_id", "item_id", "timestamp")
OPTIONAL = {"event": "string", "value": "float64", "split": "string"}
SPLITS = ("train", "val_input", "val", "test")


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
    interactions: pd.DataFrame, items: pd.DataFrame | None, timestamp_kind: str, what: str
) -> Canonical:
    """Coerce and validate a reader's output; every message names the source (`what`) and the problem."""
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
                df[col] = num.astype("float64")
            else:
                if s.isna().any():
                    raise InvalidInputError(f"{what}: column {col} has empty values")
                df[col] = s.astype(str).astype("string")
    if "split" in df.columns:
        bad = sorted(set(df["split"].unique()) - set(SPLITS))
        if bad:
            raise InvalidInputError(f"{what}: unknown split value(s) {bad}; allowed {list(SPLITS)}")
    # Time order, stable, so the source order breaks ties between equal timestamps.
    df = df.sort_values("timestamp", kind="stable").reset_index(drop=True)
    if items is not None:
        items = _normalise_items(items, what)
    return Canonical(df, items, timestamp_kind)


def _integers(s: pd.Series, col: str, what: str) -> pd.Series:
    if s.isna().any():
        raise InvalidInputError(f"{what}: column {col} has empty values")
    if s.dtype.kind in "iu":
        return s.astype("int64")
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() | (num % 1 != 0)
    if bad.any():
        example = s[bad].iloc[0]
        raise InvalidInputError(f"{what}: column {col} must hold integers, found {example!r}")
    return num.astype("int64")


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
        if col != "item_id" and out[col].dtype.kind not in "iuf":
            out[col] = out[col].fillna("").astype(str).astype("string")
    if "text" not in out.columns:
        text_cols = [c for c in out.columns if c != "item_id" and out[c].dtype == "string"]
        out["text"] = out[text_cols].agg(" | ".join, axis=1) if text_cols else ""
        out["text"] = out["text"].astype("string")
    return out.sort_values("item_id", kind="stable").reset_index(drop=True)
