"""Exposure records of derived dataset versions: which of the interactions a version added from feedback were
items the serving endpoint had shown that user (exposed) and which were found elsewhere (organic). The gate
leaves exposed test targets out (they favour the model that served them); retraining writes the records. One
Parquet file per version, `home/exposure/<name>/v<N>.parquet`, tied to the version's content hash."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pandas as pd

from aimass.settings import Settings

log = logging.getLogger(__name__)
KEY = ["user_id", "item_id", "timestamp"]  # an interaction of a version, as the record names it
_META = b"aimass.exposure"


@dataclasses.dataclass
class Exposure:
    """The exposure record of a derived dataset version: its folded interactions (`rows`: user_id, item_id,
    timestamp as the version holds them, then seq, request_id, event_time, via, exposed)."""

    dataset: str
    content_hash: str
    endpoint: str
    rows: pd.DataFrame
    path: Path

    @property
    def exposed(self) -> int:
        return int(self.rows["exposed"].sum())

    @property
    def organic(self) -> int:
        return len(self.rows) - self.exposed


def path_of(ref: str, settings: Settings) -> Path:
    from aimass import datasets

    name, version = datasets.parse_ref(ref)  # a checked name: safe as a path
    return settings.home / "exposure" / name / f"v{version}.parquet"


def write(ref: str, endpoint: str, rows: pd.DataFrame, *, settings: Settings, meta: dict | None = None) -> Exposure:
    """Write the exposure record of version `ref` (rows: KEY columns as the version holds them, then at least a
    boolean `exposed`), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aimass import datasets
    from aimass.errors import InvalidInputError

    missing = [c for c in [*KEY, "exposed"] if c not in getattr(rows, "columns", ())]
    if missing:
        raise InvalidInputError(f"an exposure record needs the columns {', '.join([*KEY, 'exposed'])}; "
                                f"missing: {', '.join(missing)}")
    if rows["exposed"].dtype != bool:
        raise InvalidInputError(f"an exposure record's 'exposed' column must be boolean, got {rows['exposed'].dtype}")
    info = datasets.get(ref, settings=settings)
    path = path_of(info.ref, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"dataset": info.ref, "content_hash": info.content_hash, "endpoint": endpoint, **(meta or {})}
    table = pa.Table.from_pandas(rows, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META: json.dumps(header).encode()})
    tmp = path.with_suffix(".parquet.partial")
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # a reader never sees half a record
    return Exposure(info.ref, info.content_hash, endpoint, rows, path)


def read(ref: str, settings: Settings) -> Exposure | None:
    """The exposure record of derived version `ref`; None when there is none (a version derived by hand, or
    before records existed) or when it was written for other content (a version of that number made by another
    home against a shared data registry)."""
    import pyarrow.parquet as pq

    from aimass import datasets

    info = datasets.get(ref, settings=settings)
    path = path_of(info.ref, settings)
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(_META, b"{}"))
    except Exception as e:  # a damaged record: the version's folds are of unknown exposure, not a failed gate
        log.warning("ignoring the unreadable exposure record %s: %s", path, e)
        return None
    if meta.get("content_hash") != info.content_hash:
        return None
    return Exposure(info.ref, info.content_hash, meta.get("endpoint", ""), table.to_pandas(), path)
