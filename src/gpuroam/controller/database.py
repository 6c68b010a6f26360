"""Opening the store's database: SQLite (the default, a file) or PostgreSQL, and what to say when it fails.

Every failure is a `StoreError` that names the URL (password masked) and how to fix it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, create_engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

SUPPORTED = "sqlite:///PATH/state.db or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
READ_ONLY = "gpuroam_read_only"  # execution option: a SQLite read takes no write lock


class StoreError(RuntimeError):
    """A store that cannot be used, said with its URL (password masked) and how to fix it."""


def engine_for(parsed: URL, shown: str) -> Engine:
    return _sqlite_engine(parsed, shown) if parsed.get_backend_name() == "sqlite" else _postgresql_engine(parsed)


def _mask(url: str) -> str:
    """Hide user and password of a URL too malformed for SQLAlchemy to parse (and so to mask)."""
    return re.sub(r"^([^/@]*//)?.*@", r"\1***@", url)


def parse_url(url: str | URL) -> URL:
    """The URL, with plain postgresql:// and postgres:// meaning the psycopg 3 driver we ship."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"cannot parse the store URL {_mask(str(url))!r}; write it as {SUPPORTED}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        shown = parsed.render_as_string(hide_password=True)
        raise StoreError(f"unsupported store URL scheme {parsed.drivername!r} in {shown!r}; use {SUPPORTED}")
    return parsed


def _sqlite_engine(url: URL, shown: str) -> Engine:
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise StoreError(
            f"the store URL {shown!r} names no file, and an in-memory store loses everything on restart; "
            "use sqlite:///PATH/state.db (four slashes for an absolute path)"
        )
    path = Path(url.database).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create the directory of the SQLite store {shown!r}: {error}") from error
    engine = create_engine(url.set(database=str(path)))
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """WAL: readers never block the writer. synchronous=NORMAL in WAL mode loses nothing
    committed when the process dies (only an OS crash may drop the last commits). sqlite3's own
    BEGIN handling is off so that _sqlite_begin decides how each transaction starts."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    """Writes take the write lock up front (BEGIN IMMEDIATE), so a read-then-write transaction
    waits its turn (busy_timeout) instead of failing with "database is locked" when it upgrades."""
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def _postgresql_engine(url: URL) -> Engine:
    """Pre-ping so a restarted server costs a reconnect, not an error; fail in 10 s, not minutes."""
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": 10}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def cannot_open(url: URL, shown: str, error: SQLAlchemyError) -> str:
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    if url.password:
        reason = reason.replace(str(url.password), "***")
    if url.get_backend_name() == "sqlite":
        return f"cannot open the SQLite store {shown!r}: {reason}; check that the path is a writable file"
    return (
        f"cannot use PostgreSQL at {shown!r}: {reason}. Check that the server is running and reachable "
        "from here, that the user and password are right, and that the database exists "
        "(createdb NAME); or leave --store out to use SQLite in the state directory"
    )


def store_failed(url: URL, error: SQLAlchemyError) -> str:
    """What a failed read or write of a running store means for the person at the terminal, and what to do.
    Nothing already stored is lost, replicas keep serving, and the reconciler resumes once the store works."""
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    if url.password:
        reason = reason.replace(str(url.password), "***")
    where = url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)
    lowered = reason.lower()
    if "readonly" in lowered or "read-only" in lowered:
        problem = f"the state database {where} is read-only: make it (and its directory) writable again"
    elif "full" in lowered or "no space" in lowered:
        problem = f"the disk holding the state database {where} is full: free some space"
    elif "malformed" in lowered or "not a database" in lowered:
        problem = (
            f"the state database {where} is corrupt: stop `gpuroam serve`, move the file aside, start it again "
            "and `gpuroam up` each service's spec"
        )
    else:
        problem = f"the state database {where} failed ({reason})"
    return f"{problem}. Replicas keep serving; the control plane carries on once the store works ({reason})"


def file_identity(engine: Engine) -> tuple[str, tuple[int, int]] | None:
    """A SQLite store's file and its (device, inode); None for PostgreSQL, or when the file is gone."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database:
        return None
    try:
        stat = Path(database).stat()
    except OSError:
        return None
    return database, (stat.st_dev, stat.st_ino)
