"""Datasets: register files in any supported format as versions in the DVC data registry, list them, and load
a version back in the canonical layout.

    >>> import aimass
    >>> v = aimass.datasets.register("music", "plays.csv", format="csv")
    >>> ds = aimass.datasets.load("music@v1")
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd
from filelock import FileLock
from sqlmodel import col, select

from aimass.catalog import DatasetVersion, DatasetVersionPublic, session
from aimass.datasets._demo import DemoConfig, generate_demo
from aimass.datasets._formats import formats, read
from aimass.datasets._registry import DataRegistry, git, read_folder, tag_for
from aimass.errors import ConflictError, InvalidInputError, NotFoundError
from aimass.settings import Settings, default_settings

__all__ = ["Dataset", "DemoConfig", "formats", "generate_demo", "get", "list", "load", "pull", "register",
           "registry_status", "versions"]

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
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise InvalidInputError(
            f"invalid dataset name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (no path separators, spaces or shell characters)"
        )
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    m = _REF.match(ref or "")
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
    settings: Settings | None = None,
) -> DatasetVersionPublic:
    """Register the files at `path` as the next version of `name`; identical content returns the existing
    version. Bad input raises before anything is written."""
    s = settings or default_settings()
    check_name(name)
    data = read(path, format, items)
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
                f"dataset {name!r} has schema {_describe(rows[0].columns)} but {path} has "
                f"{_describe(data.columns())}; register it under another name"
            )
        version = rows[0].version + 1 if rows else 1
        meta = dict(name=name, version=version, content_hash=digest, format=format, source=str(path),
                    timestamp_kind=data.timestamp_kind, columns=data.columns(), **stats)
        registry = DataRegistry(s)
        registry.ensure()
        head = registry.head()
        tag = registry.commit_version(name, version, data, meta)
        row = DatasetVersion(name=name, version=version, content_hash=digest, format=format,
                             source=str(Path(path).expanduser().resolve()), has_items_table=data.items is not
                             None, timestamp_kind=data.timestamp_kind, columns=data.columns(), git_tag=tag,
                             **stats)
        try:
            db.add(row)
            db.commit()
            db.refresh(row)
        except Exception:
            db.rollback()
            registry.rollback(head, tag)
            raise
        return DatasetVersionPublic.model_validate(row)


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
    data = read_folder(pull(ref, settings=s))
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
