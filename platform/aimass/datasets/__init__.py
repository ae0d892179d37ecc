"""Datasets: register files in any supported format as versions in the DVC data registry, list them, and load
a version back in the canonical layout.

    >>> import aimass
    >>> v = aimass.datasets.register("music", "plays.csv", format="csv")
    >>> ds = aimass.datasets.load("music@v1")
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from pydantic import BaseModel, Field
from sqlmodel import col, select

from aimass.catalog import DatasetLineage, DatasetLineagePublic, DatasetVersion, DatasetVersionPublic, session
from aimass.datasets import _exposure
from aimass.datasets._canonical import Canonical, normalise
from aimass.datasets._columns import parse as parse_columns
from aimass.datasets._demo import DemoConfig, generate_demo
from aimass.datasets._formats import formats, read
from aimass.datasets._registry import DataRegistry, git, read_folder, tag_for
from aimass.errors import BackendError, ConflictError, InvalidInputError, NotFoundError
from aimass.settings import Settings, default_settings

__all__ = ["EXPOSURE_KEY", "Exposure", "exposure", "write_exposure", "Dataset", "DatasetLineagePublic", "DemoConfig",
           "FoldedEvents", "ancestry", "derive", "folded_through", "formats", "generate_demo", "get", "lineage",
           "list", "load", "parse_columns", "pull", "register", "registry_status", "versions"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_REF = re.compile(r"^(?P<name>[^@]+)(?:@(?:v(?P<v>\d+)|(?P<n>\d+)|(?P<latest>latest)))?$")
_list = list


@dataclasses.dataclass
class Dataset:
    """A loaded dataset version: canonical interactions (time order) and the optional items table."""

    info: DatasetVersionPublic
    interactions: pd.DataFrame
    items: pd.DataFrame | None

    @property
    def ref(self) -> str:
        return self.info.ref


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidInputError(
            f"invalid dataset name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (no path separators, spaces or shell characters)"
        )
    # git refuses a tag NAME/vN whose NAME ends in .lock; DVC keeps dataset NAME's pointer as NAME.dvc
    if name.endswith((".lock", ".dvc")):
        raise InvalidInputError(f"invalid dataset name {name!r}: it may not end in '.lock' or '.dvc' (git's tags "
                                "and DVC's pointer files could not hold it)")
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    m = _REF.fullmatch(ref or "")
    if not m:
        raise InvalidInputError(f"invalid dataset reference {ref!r}: use NAME, NAME@vN or NAME@latest")
    v = m["v"] or m["n"]
    return check_name(m["name"]), int(v) if v else None


def register(
    name: str,
    path: str | Path,
    format: str,
    *,
    items: str | Path | None = None,
    columns: dict[str, str] | None = None,
    settings: Settings | None = None,
) -> DatasetVersionPublic:
    """Register the files at `path` as the next version of `name`; identical content returns the existing
    version. Bad input raises before anything is written. `columns` maps a csv or Parquet file's own column
    names onto user_id, item_id, timestamp, event, value, split ({"userId": "user_id", "movieId": "item_id",
    "rating": "value"}; "-" leaves a column out), in the interactions and the items file alike."""
    s = settings or default_settings()
    check_name(name)
    data = read(path, format, items, columns)
    return _store(s, name, data, format=format, source=str(path),
                  row_source=str(Path(path).expanduser().resolve()))


def _store(s: Settings, name: str, data: Canonical, *, format: str, source: str, row_source: str,
           lineage: dict | None = None) -> DatasetVersionPublic:
    """Commit `data` as the next version of `name` (git+DVC, then the catalog, the lineage row in the same
    transaction) or return the version that already holds this content; a failure undoes both."""
    digest = data.content_hash()
    stats = data.stats()
    s.locks.mkdir(parents=True, exist_ok=True)
    with FileLock(s.locks / "datasets.lock", timeout=600), session(s) as db:
        rows = db.exec(select(DatasetVersion).where(DatasetVersion.name == name)
                       .order_by(col(DatasetVersion.version).desc())).all()
        for row in rows:
            if row.content_hash == digest:
                return DatasetVersionPublic.model_validate(row)
        if rows and rows[0].columns != data.columns():
            raise ConflictError(
                f"dataset {name!r} has schema {_describe(rows[0].columns)} but {source} has "
                f"{_describe(data.columns())}; register it under another name"
            )
        version = rows[0].version + 1 if rows else 1
        meta = dict(name=name, version=version, content_hash=digest, format=format, source=source,
                    timestamp_kind=data.timestamp_kind, columns=data.columns(), **stats)
        link = None
        if lineage is not None:  # in the version's own meta too: the registry alone tells where it came from
            link = DatasetLineage(name=name, version=version, **lineage)
            meta["lineage"] = DatasetLineagePublic.model_validate(
                {**link.model_dump(), "created_at": link.created_at}).model_dump(mode="json")
        registry = DataRegistry(s)
        registry.ensure()
        tag = registry.commit_version(name, version, data, meta)
        row = DatasetVersion(name=name, version=version, content_hash=digest, format=format, source=row_source,
                             has_items_table=data.items is not None, timestamp_kind=data.timestamp_kind,
                             columns=data.columns(), git_tag=tag, **stats)
        try:
            db.add(row)
            if link is not None:
                db.add(link)
            db.commit()
        except BaseException as e:  # Ctrl-C too: a tag without its row would block the name's next version
            with contextlib.suppress(Exception):  # a connection already gone: the error to report is e
                db.rollback()
            stored = _stored(s, name, version, digest)
            if stored is not False:  # committed after all (a lost connection's answer), or cannot tell: keep it
                if not isinstance(e, Exception):  # Ctrl-C: the version stands, and the interrupt goes on
                    raise
                if stored is not None:
                    return stored
                raise BackendError(f"registering {name} v{version}: the catalog's commit failed ({e}) and whether "
                                   f"it holds the version could not be read back; its tag {tag} is kept") from e
            left = registry.rollback()
            if left and isinstance(e, Exception):
                raise BackendError(f"registering {name} v{version} failed and was undone{left}: {e}") from e
            raise
        db.refresh(row)
        return DatasetVersionPublic.model_validate(row)


def _stored(s: Settings, name: str, version: int, digest: str) -> DatasetVersionPublic | bool | None:
    """The catalog's row for this version, read in a session of its own: False when there is none, None when
    the catalog cannot be read."""
    try:
        with session(s) as db:
            row = db.exec(select(DatasetVersion).where(DatasetVersion.name == name, DatasetVersion.version == version,
                                                       DatasetVersion.content_hash == digest)).first()
            return DatasetVersionPublic.model_validate(row) if row is not None else False
    except Exception:
        return None


class FoldedEvents(BaseModel):
    """Where the rows a derived version adds came from: `endpoint`'s events with seq in (after_seq, through_seq]
    (`events` of them; the rows are the positive ones)."""

    endpoint: str
    after_seq: int = Field(ge=0)
    through_seq: int = Field(ge=1)
    through_time: datetime | None = None
    events: int = Field(ge=0)


def derive(parent: str, rows: pd.DataFrame, *, lineage: FoldedEvents, settings: Settings | None = None
           ) -> DatasetVersionPublic:
    """The next version of `parent`'s dataset: `parent`'s interactions plus `rows` (its columns: user_id,
    item_id, timestamp and whichever of event / value it has), its items table unchanged, and `lineage` recorded
    in the catalog and in the version's meta. A parent whose timestamps are an order ('order') gets `rows`
    appended after its last position, in the order given. Users and items it has never seen are kept. Identical
    content returns the existing version, as `register` does; a failure leaves nothing behind."""
    s = settings or default_settings()
    lineage = FoldedEvents.model_validate(lineage)
    if lineage.through_seq <= lineage.after_seq:
        raise InvalidInputError(f"lineage through_seq {lineage.through_seq} must follow after_seq "
                                f"{lineage.after_seq}")
    base = load(parent, settings=s)
    if "split" in base.interactions.columns:
        # its train / validation / test roles are fixed by its source; new rows would have none
        raise InvalidInputError(f"{base.ref} has its own evaluation split (a split column): new interactions "
                                "can only be added to datasets split by time")
    if rows.empty:
        raise InvalidInputError(f"no interactions to add to {base.ref}")
    want = [*base.interactions.columns]
    missing, extra = [c for c in want if c not in rows.columns], [c for c in rows.columns if c not in want]
    if missing or extra:
        raise InvalidInputError(f"rows to add to {base.ref} must have its columns {', '.join(want)}"
                                + (f"; missing {', '.join(missing)}" if missing else "")
                                + (f"; unexpected {', '.join(extra)}" if extra else ""))
    add = rows[want].reset_index(drop=True)
    if base.info.timestamp_kind == "order":
        start = int(base.interactions["timestamp"].max()) + 1 if len(base.interactions) else 0
        add["timestamp"] = np.arange(start, start + len(add), dtype=np.int64)
    source = (f"{base.ref} + {len(add)} interactions from {lineage.events} events of endpoint "
              f"{lineage.endpoint!r} (seq {lineage.after_seq + 1}..{lineage.through_seq})")
    data = normalise(pd.concat([base.interactions, add], ignore_index=True), base.items,
                     base.info.timestamp_kind, source)
    # what the version adds: rows equal to one already held (a repeated play in the same second) are kept once
    added = len(data.interactions) - len(base.interactions)
    return _store(s, base.info.name, data, format="derived", source=source, row_source=source,
                  lineage={**lineage.model_dump(), "parent_version": base.info.version, "positive": added})


def lineage(ref: str, *, settings: Settings | None = None) -> DatasetLineagePublic | None:
    """What version `ref` was derived from and which events it folded in; None for a registered version."""
    s = settings or default_settings()
    info = get(ref, settings=s)
    with session(s) as db:
        row = db.exec(select(DatasetLineage).where(DatasetLineage.name == info.name,
                                                   DatasetLineage.version == info.version)).first()
    return DatasetLineagePublic.model_validate(row) if row is not None else None


def ancestry(ref: str, *, settings: Settings | None = None) -> _list[DatasetLineagePublic]:
    """The lineage of `ref`, its parent's, and so on up to a registered version: newest first (empty for a
    registered version)."""
    s = settings or default_settings()
    out: _list[DatasetLineagePublic] = []
    link = lineage(ref, settings=s)
    while link is not None:
        out.append(link)
        link = lineage(link.parent, settings=s)
    return out


def folded_through(ref: str, endpoint: str, *, settings: Settings | None = None) -> int:
    """The last log position of `endpoint`'s events that `ref` or an ancestor folded in (0: none). Event
    positions are global, so only a fold of the same endpoint counts."""
    return next((link.through_seq for link in ancestry(ref, settings=settings) if link.endpoint == endpoint), 0)


def _describe(columns: dict) -> str:
    return "; ".join(f"{t}({', '.join(c)})" for t, c in columns.items())


def list(*, settings: Settings | None = None) -> _list[DatasetVersionPublic]:  # noqa: A001
    """The latest version of every dataset."""
    s = settings or default_settings()
    with session(s) as db:
        rows = db.exec(select(DatasetVersion).order_by(DatasetVersion.name, DatasetVersion.version)).all()
    latest = {r.name: r for r in rows}
    return [DatasetVersionPublic.model_validate(r) for r in latest.values()]


def versions(name: str, *, settings: Settings | None = None) -> _list[DatasetVersionPublic]:
    s = settings or default_settings()
    check_name(name)
    with session(s) as db:
        rows = db.exec(select(DatasetVersion).where(DatasetVersion.name == name)
                       .order_by(DatasetVersion.version)).all()
    if not rows:
        raise NotFoundError(f"no dataset named {name!r}")
    return [DatasetVersionPublic.model_validate(r) for r in rows]


def get(ref: str, *, settings: Settings | None = None) -> DatasetVersionPublic:
    """`name` (latest), `name@vN` or `name@latest`."""
    name, version = parse_ref(ref)
    all_versions = versions(name, settings=settings)
    if version is None:
        return all_versions[-1]
    for v in all_versions:
        if v.version == version:
            return v
    raise NotFoundError(f"dataset {name!r} has no version {version} (latest is v{all_versions[-1].version})")


def pull(ref: str, out: str | Path | None = None, *, settings: Settings | None = None) -> Path:
    """Fetch a version's canonical files (from the local cache, else the DVC remote) into a folder."""
    s = settings or default_settings()
    info = get(ref, settings=s)
    dest = Path(out).expanduser().resolve() if out else s.home / "datasets" / info.name / f"v{info.version}"
    return DataRegistry(s).materialise(info.name, tag_for(info.name, info.version), dest)


def load(ref: str, *, settings: Settings | None = None) -> Dataset:
    s = settings or default_settings()
    info = get(ref, settings=s)
    # the version just looked up: "NAME" again could name a newer one that a register committed meanwhile
    data = read_folder(pull(info.ref, settings=s))
    if data.content_hash() != info.content_hash:
        raise ConflictError(f"{info.ref}: stored files do not match the catalog's content hash")
    return Dataset(info, data.interactions, data.items)


def registry_status(*, settings: Settings | None = None) -> dict:
    """The data registry as `aimass doctor` reports it: `path` (the working copy), `origin` (the git URL it is a
    clone of, or None), `exists`, its DVC `remote`, how many `versions` it has tagged, and `uncommitted`
    changes (`git status --porcelain`; non-empty means a write did not finish). Raises whatever git or DVC
    raise on a broken registry."""
    reg = DataRegistry(settings or default_settings())
    out = {"path": reg.path, "origin": reg.origin, "exists": reg.exists(), "remote": None, "versions": 0,
           "uncommitted": ""}
    if out["exists"]:
        out["remote"] = reg.remote_url()
        out["versions"] = len(git(reg.path, "tag", "--list").split())
        out["uncommitted"] = git(reg.path, "status", "--porcelain")
    return out


Exposure = _exposure.Exposure
EXPOSURE_KEY = _exposure.KEY


def exposure(ref: str, *, settings: Settings | None = None) -> Exposure | None:
    """The exposure record of derived version `ref` (which folded interactions the endpoint had shown the user);
    None when it has none, or one written for other content."""
    return _exposure.read(ref, settings or default_settings())


def write_exposure(ref: str, endpoint: str, rows: pd.DataFrame, *, settings: Settings | None = None,
                   meta: dict | None = None) -> Exposure:
    """Record which of `ref`'s folded interactions were exposed (rows: EXPOSURE_KEY columns + `exposed`)."""
    return _exposure.write(ref, endpoint, rows, settings=settings or default_settings(), meta=meta)
