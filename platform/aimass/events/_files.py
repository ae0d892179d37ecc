"""Files of events (CSV, JSON lines or Parquet, by extension) read as validated rows, a chunk at a time: a file
larger than memory is ingested all the same. The first bad row is named by its place in the file; nothing of a
file with a bad row is stored (ingest checks the whole file before it writes)."""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from aimass.catalog import ISO_DATE_TIME
from aimass.errors import InvalidInputError
from aimass.events._rules import Rules
from aimass.settings import Settings

COLUMNS = ["event_id", "user_id", "item_id", "type", "timestamp", "value", "request_id"]
CHUNK_ROWS = 200_000  # rows validated and written at a time: bounds memory, large enough to keep ingest fast
_MISSING = ["", "NA", "N/A", "NaN", "nan", "null", "None"]
_WHOLE = re.compile(r"\d{1,19}(?:\.0*)?", re.ASCII)


def read_events(path: str | Path, rules: Rules, settings: Settings) -> pd.DataFrame:
    """The whole file as validated rows (columns COLUMNS, timestamps UTC)."""
    return pd.concat(list(chunks(path, rules, settings)), ignore_index=True)


def chunks(path: str | Path, rules: Rules, settings: Settings, rows: int | None = None) -> Iterator[pd.DataFrame]:
    """The file's validated rows, `rows` (CHUNK_ROWS) at a time; at least one frame, empty for a file without
    rows. A JSON array (not lines) is parsed whole."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidInputError(f"no events file at {p}")
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix == ".gz" else p.suffix.lower()
    if suffix not in (".csv", ".csv.gz", ".jsonl", ".ndjson", ".json", ".jsonl.gz", ".parquet", ".pq"):
        raise InvalidInputError(f"{p}: unknown events file type {suffix or '(none)'}; use .csv, .jsonl or .parquet")
    raw = _raw(p, suffix, rows or CHUNK_ROWS)
    offset = 0
    while True:
        try:
            f = next(raw)
        except StopIteration:
            return
        except InvalidInputError:
            raise
        except Exception as e:
            raise InvalidInputError(f"{p} cannot be read as {suffix}: {str(e).splitlines()[0][:200]}") from None
        yield _validated(f, p, offset, rules, settings)
        offset += len(f)


def _raw(p: Path, suffix: str, rows: int) -> Iterator[pd.DataFrame]:
    if suffix in (".csv", ".csv.gz"):
        # every field as text, checked row by row below: ids as written ("NA" or "null" is an id, and
        # 9007199254740993 is not a float), and no chunk's own type inference (a chunk whose values are all
        # True/False read as booleans, which pass as numbers, where the whole file was refused)
        yield from pd.read_csv(p, dtype=str, keep_default_na=False, chunksize=rows,
                               na_values={"value": _MISSING, "timestamp": [""], "request_id": [""]})
    elif suffix == ".json":
        yield _json_frame(_json_array(p))
    elif suffix in (".jsonl", ".ndjson", ".jsonl.gz"):
        yield from _json_lines(p, rows)
    else:
        import pyarrow.parquet as pq

        with pq.ParquetFile(p) as pf:
            empty = True
            for batch in pf.iter_batches(batch_size=rows):
                empty = False
                yield batch.to_pandas()
            if empty:
                yield pf.schema_arrow.empty_table().to_pandas()


def _open(p: Path):
    import gzip

    return gzip.open(p, "rb") if p.suffix.lower() == ".gz" else open(p, "rb")


def _json_frame(rows: list[dict], later: bool = False) -> pd.DataFrame:
    """Rows as the values were written: pandas' own reader turns a null id into the text "None" and reads every
    number of a column through a float once one has a decimal point. A `later` chunk of a file has every column:
    a key none of its rows has is theirs to miss (named row by row), the file's columns were checked on its first."""
    f = pd.DataFrame(rows, dtype=object)
    if later:
        for c in COLUMNS:
            if c not in f.columns:
                f[c] = None
    return f


def _json_array(p: Path) -> list[dict]:
    import orjson

    with _open(p) as fh:
        rows = orjson.loads(fh.read())
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InvalidInputError(f"{p}: expected JSON objects, one per line (or one array of them)")
    return rows


def _json_lines(p: Path, size: int) -> Iterator[pd.DataFrame]:
    import io

    import orjson

    rows: list[dict] = []
    sent = False
    # universal newlines (a line may end in \r alone); bytes that are not UTF-8 reach orjson, which names the line
    with io.TextIOWrapper(_open(p), encoding="utf-8", errors="surrogateescape", newline=None) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            # each line is parsed alone, so orjson's own position always says "line 1": name the file's
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise InvalidInputError(f"{p}: line {n}, column {e.colno}: {e.msg}; fix or remove that line "
                                        "(nothing stored)") from None
            if not isinstance(row, dict):
                raise InvalidInputError(f"{p}: line {n} is not a JSON object; write one event object a line")
            rows.append(row)
            if len(rows) == size:
                yield _json_frame(rows, sent)
                rows, sent = [], True
    if rows or not sent:
        yield _json_frame(rows, sent)


def _whole(x) -> int | None:
    """An id as the exact integer it names, or None: an int, a float that holds one exactly (up to 2**53), or
    decimal digits ("42", "42.0")."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, np.integer)):
        return int(x) if abs(int(x)) <= 2**62 else None  # beyond what ids may be (a uint64 failed a cast)
    if isinstance(x, (float, np.floating)):
        return int(x) if math.isfinite(x) and float(x).is_integer() and abs(x) <= 2**53 else None
    if isinstance(x, str) and _WHOLE.fullmatch(x.strip()):
        n = int(x.strip().split(".")[0])
        return n if abs(n) <= 2**62 else None
    return None


def _text(x) -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def _validated(f: pd.DataFrame, p: Path, offset: int, rules: Rules, settings: Settings) -> pd.DataFrame:
    """A chunk's rows checked and typed; `offset` rows of the file came before it."""
    missing = [c for c in ("event_id", "user_id", "item_id", "type", "timestamp") if c not in f.columns]
    if missing:
        raise InvalidInputError(f"{p}: missing columns {', '.join(missing)} (need event_id, user_id, item_id, "
                                "type, timestamp; optional value, request_id)")
    extra = sorted(set(f.columns) - set(COLUMNS))
    if extra:
        raise InvalidInputError(f"{p}: unknown columns {', '.join(extra)}; allowed: {', '.join(COLUMNS)}")
    for c in ("value", "request_id"):
        if c not in f.columns:
            f[c] = None
    f = f[COLUMNS].reset_index(drop=True)

    def bad(mask: np.ndarray, what: str) -> None:
        if mask.any():
            i, n = int(np.flatnonzero(mask)[0]), int(mask.sum())
            more = f"; {n - 1} more such rows among rows {offset + 1}-{offset + len(f)}" if n > 1 else ""
            raise InvalidInputError(f"{p}: row {offset + i + 1} (event_id {f['event_id'].iloc[i]!r}): "
                                    f"{what}{more}; nothing stored")

    for c in ("event_id", "type", "request_id"):  # a JSON number is its text; a null stays missing
        if f[c].dtype == object:
            f[c] = f[c].map(_text)
    eid = f["event_id"].astype("string")
    bad(~eid.str.fullmatch(r"[A-Za-z0-9._:@/-]{1,128}").fillna(False).to_numpy(dtype=bool),
        "event_id must be 1-128 letters, digits or . _ : @ / -")
    f["event_id"] = eid.astype(object)
    for c in ("user_id", "item_id"):
        col = f[c]
        if pd.api.types.is_unsigned_integer_dtype(col.dtype):
            # a uint64 from 2**63 on has no Int64 form (the cast raises): out of range, so a bad row like any
            col = col.astype("UInt64").where(col <= 2**62)
        v = col.astype("Int64") if pd.api.types.is_integer_dtype(col.dtype) else col.map(_whole).astype("Int64")
        ok = v.notna() & (v.fillna(-1) >= 0) & (v.fillna(-1) <= 2**62)
        bad(~ok.to_numpy(dtype=bool), f"{c} must be a whole number from 0 to 2**62")
        f[c] = v.astype(np.int64)
    t = f["type"].astype("string")
    bad(~t.isin(rules.types).fillna(False).to_numpy(dtype=bool),
        f"unknown event type (known: {', '.join(rules.types)})")
    f["type"] = t.astype(object)
    ts = f["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(ts):  # Parquet keeps real times
        ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts
        ts = (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    num = pd.to_numeric(ts, errors="coerce")  # unix seconds, or else ISO 8601, row by row
    text = ts.map(lambda x: isinstance(x, str)).to_numpy(dtype=bool) if ts.dtype == object else None
    if text is not None and not p.name.lower().endswith((".csv", ".csv.gz")):
        # JSON has numbers: one written as text is refused, as /feedback refuses it (a csv field is all text)
        bad(text & num.notna().to_numpy(), "timestamp must be unix seconds as a number, not in a string")
    if text is not None:
        dated = ts.astype("string").str.match(ISO_DATE_TIME).fillna(False).to_numpy(dtype=bool)
        bad(text & num.isna().to_numpy() & ~dated, "timestamp must be an ISO 8601 date and time (a date alone is "
                                                   "not a time) or unix seconds")
    # beyond pandas' nanosecond range (about 9.2e9 s) to_datetime overflows instead of coercing: malformed too
    parsed = pd.to_datetime(num.where(num.abs() < 9e9), unit="s", utc=True, errors="coerce")
    iso = num.isna() & ts.notna()
    if iso.any():
        parsed[iso] = pd.to_datetime(ts[iso].astype(str), utc=True, errors="coerce", format="ISO8601")
    bad(parsed.isna().to_numpy(), "missing or malformed timestamp (ISO 8601 or unix seconds)")
    bad((parsed < pd.Timestamp(0, tz="UTC")).to_numpy(), "timestamp before 1970-01-01")
    limit = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=settings.feedback_max_future_s)
    bad((parsed > limit).to_numpy(), f"timestamp more than {settings.feedback_max_future_s:g} s in the future")
    f["timestamp"] = parsed
    col = f["value"]
    v = pd.to_numeric(col, errors="coerce")
    bad((v.isna() & col.notna()).to_numpy(), "value must be a number")
    # JSON's true and Parquet's booleans (numpy's or pandas' nullable type): to_numeric made them 1.0 and 0.0 (a
    # "like" with value true passed a threshold as a play of one second would), where /feedback refuses them.
    # Only a 0 or a 1 can be one: the rest of a text column is not looked at row by row
    if pd.api.types.is_bool_dtype(col.dtype):
        flags = col.notna().to_numpy(dtype=bool)
    else:
        flags = np.zeros(len(col), dtype=bool)
        maybe = v.isin([0, 1]).to_numpy(dtype=bool)
        if col.dtype == object and maybe.any():
            flags[maybe] = col[maybe].map(lambda x: isinstance(x, (bool, np.bool_))).to_numpy(dtype=bool)
    bad(flags, "value must be a number, not true or false")
    if pd.api.types.is_bool_dtype(v.dtype):  # a boolean column left only with missing values
        v = pd.Series(np.nan, index=col.index)
    bad(np.isinf(v.to_numpy(dtype=np.float64)), "value must be a finite number")
    f["value"] = v
    rid = f["request_id"].astype("string")
    bad((rid.notna() & ~rid.str.fullmatch(r"[A-Za-z0-9._-]{1,64}").fillna(False)).to_numpy(dtype=bool),
        "request_id must be 1-64 letters, digits or . _ -")
    f["request_id"] = rid.astype(object).where(rid.notna(), None)
    return f

