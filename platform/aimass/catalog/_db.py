from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from aimass.settings import Settings, error_line


@functools.cache
def engine_for(url: str) -> Engine:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":  # sqlite+pysqlite:/// too: WAL and the busy timeout all the same
        from pathlib import Path

        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # WAL: readers never block the one writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # an acknowledged row survives a power cut
            cur.close()
    else:
        if url.startswith(("postgresql://", "postgres://")):  # the driver aimass ships (psycopg 3)
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        # a server that stops answering fails a connection in seconds, not at the kernel's TCP timeout (minutes)
        engine = create_engine(url, pool_pre_ping=True,
                               connect_args={"connect_timeout": 10} if url.startswith("postgresql") else {})
        if engine.dialect.name == "postgresql":
            @event.listens_for(engine, "connect")
            def _utc(dbapi_conn, _record):
                # columns without a zone (an older aimass made them) are read as UTC: a session in another zone
                # (a server's default, or ?options=-c TimeZone=... in the URL) would shift every aware time written
                cur = dbapi_conn.cursor()
                cur.execute("SET TIME ZONE 'UTC'")
                cur.close()
                dbapi_conn.commit()  # outside a transaction that a rollback would take the setting back with
    from aimass.catalog import models  # noqa: F401  (registers the tables)

    with _schema_lock(parsed):
        _create_tables(engine)
        _add_new_columns(engine)
    if engine.dialect.name == "postgresql":
        _widen_columns(engine)
    return engine


def _schema_lock(parsed):
    """A SQLite file's schema is made or upgraded by one process at a time: four processes starting together on
    a fresh catalog could each lose the create-or-skip race on a different table or index, more often than the
    retries below allow on a busy machine. (Postgres: the retries, and _add_new_columns' checks.)"""
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(f"{parsed.database}.schema.lock")


def _create_tables(engine: Engine) -> None:
    """The tables a catalog lacks (a new one, or those added since an older aimass). create_all checks, then
    creates: processes starting together on a fresh catalog raced between the two, and the loser failed."""
    from sqlalchemy.exc import DBAPIError

    for attempt in range(5):
        try:
            SQLModel.metadata.create_all(engine)
            return
        except DBAPIError:  # another process created one of them first: the rest, once more
            if attempt == 4:
                raise


def _add_new_columns(engine: Engine) -> None:
    """A catalog written by an older aimass lacks the columns added since: add them (all new columns are
    nullable or have a default), with their indexes, so an upgrade keeps every stored row. Tables are created
    whole by create_all; columns are never dropped or changed here. Safe when two processes upgrade at once."""
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import DBAPIError, IntegrityError

    have = inspect(engine)
    tables = set(have.get_table_names())
    for table in SQLModel.metadata.sorted_tables:
        if table.name not in tables:
            continue
        present = {c["name"] for c in have.get_columns(table.name)}
        added = []
        for col in table.columns:
            if col.name in present:
                continue
            kind = col.type.compile(dialect=engine.dialect)
            default = {"BOOLEAN": " DEFAULT false", "INTEGER": " DEFAULT 0"}.get(kind.upper(), "")
            try:
                with engine.begin() as conn:
                    conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {kind}{default}'))
            except DBAPIError:  # another process added it first
                if col.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
            added.append(col.name)
        have_indexes = {i["name"] for i in have.get_indexes(table.name)}
        for index in table.indexes:  # new columns' indexes, and indexes added since over old columns
            if index.name not in have_indexes or any(c.name in added for c in index.columns):
                try:
                    index.create(engine, checkfirst=True)
                except IntegrityError as e:  # rows an older aimass stored break a unique index added since
                    if index.name in {i["name"] for i in inspect(engine).get_indexes(table.name)}:
                        continue  # ... or, on Postgres, another process made it first (a catalog key clash)
                    from aimass.errors import BackendError

                    cols = ", ".join(c.name for c in index.columns)
                    raise BackendError(f"the catalog cannot be upgraded: rows of {table.name} break the unique "
                                       f"index {index.name} ({cols}{_where(index)}), which this aimass needs; "
                                       "keep one of the rows that share it (end the others) and run again "
                                       f"[{error_line(e)}]") from None
                except DBAPIError:  # another process made it between the check and the create
                    if index.name not in {i["name"] for i in inspect(engine).get_indexes(table.name)}:
                        raise


def _where(index) -> str:
    where = index.dialect_options["sqlite"].get("where")
    return f" where {where}" if where is not None else ""


def _widen_columns(engine: Engine) -> None:
    """Postgres columns an older aimass created 32 bits wide (ids, log positions) become the 64 bits the
    tables now declare, their sequences too; rows are kept. A no-op once done, and when two processes race."""
    from sqlalchemy import BigInteger, inspect, text

    have = inspect(engine)
    tables = set(have.get_table_names())
    for table in SQLModel.metadata.sorted_tables:
        if table.name not in tables:
            continue
        narrow = {c["name"] for c in have.get_columns(table.name) if type(c["type"]).__name__ == "INTEGER"}
        for col in table.columns:
            if col.name not in narrow or not isinstance(col.type.dialect_impl(engine.dialect), BigInteger):
                continue
            with engine.begin() as conn:
                conn.execute(text(f'ALTER TABLE {table.name} ALTER COLUMN "{col.name}" TYPE BIGINT'))
                seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                   {"t": table.name, "c": col.name}).scalar()
                if seq:
                    conn.execute(text(f"ALTER SEQUENCE {seq} AS BIGINT"))


@contextlib.contextmanager
def session(settings: Settings) -> Iterator[Session]:
    with Session(engine_for(settings.catalog)) as s:
        yield s
