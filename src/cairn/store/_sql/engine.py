"""Engine creation, per-connection setup and the transaction scope that maps database errors.

SQLite is set up for several processes writing one file: WAL journal, ``synchronous=NORMAL``,
foreign keys on, a busy timeout (``CAIRN_SQLITE_BUSY_TIMEOUT`` seconds, default 30) and
``BEGIN IMMEDIATE`` for write transactions, so a writer takes the write lock up front instead of
failing when it upgrades a read lock (which SQLite cannot wait for). The pysqlite driver's own
transaction handling is switched off for that; SQLAlchemy's ``begin`` event emits the BEGIN.

The connection pool keeps SQLAlchemy's defaults (5 connections, 10 more on demand, a caller waits up to
30 s for one) unless ``CAIRN_DB_POOL_SIZE`` / ``CAIRN_DB_MAX_OVERFLOW`` say otherwise: a ``cairn server``
serving more concurrent requests than that sets them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from cairn.errors import CairnError, InvalidArgument, ResourceAlreadyExists, StoreError, StoreLocked
from cairn.store._sql.schema import holds_foreign_tables

DEFAULT_BUSY_TIMEOUT = 30.0
BUSY_TIMEOUT_ENV = "CAIRN_SQLITE_BUSY_TIMEOUT"
POOL_SIZE_ENV = "CAIRN_DB_POOL_SIZE"
MAX_OVERFLOW_ENV = "CAIRN_DB_MAX_OVERFLOW"

_WRITE_OPTION = "cairn_write"
_PG_UNIQUE_VIOLATION = "23505"
_PG_UNDEFINED_TABLE = "42P01"
_SQLITE_LOCKED_MESSAGES = ("database is locked", "database table is locked", "database is busy")


def normalize_url(db_uri: str) -> URL:
    """Parse ``db_uri``; ``postgresql://`` and ``postgres://`` select the psycopg 3 driver."""
    try:
        url = make_url(db_uri)
    except exc.ArgumentError as error:
        raise InvalidArgument(f"{db_uri!r} is not a database URI ({error})") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise InvalidArgument(f"database {db_uri!r}: cairn stores runs in SQLite or PostgreSQL, not {backend!r}")
    return url


def busy_timeout_from_env() -> float:
    """The SQLite busy timeout in seconds from ``CAIRN_SQLITE_BUSY_TIMEOUT``, else 30."""
    raw = os.environ.get(BUSY_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_BUSY_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"{BUSY_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise InvalidArgument(f"{BUSY_TIMEOUT_ENV}={raw!r} must not be negative")
    return value


def pool_options_from_env() -> dict[str, int]:
    """``pool_size`` / ``max_overflow`` for ``create_engine`` from ``CAIRN_DB_POOL_SIZE`` (at least 1) and
    ``CAIRN_DB_MAX_OVERFLOW`` (at least 0); an unset variable keeps SQLAlchemy's default."""
    options: dict[str, int] = {}
    for name, option, least in ((POOL_SIZE_ENV, "pool_size", 1), (MAX_OVERFLOW_ENV, "max_overflow", 0)):
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        if not raw.isdecimal() or int(raw) < least:
            raise InvalidArgument(f"{name}={raw!r} must be a whole number of connections, at least {least}")
        options[option] = int(raw)
    return options


def is_missing_table(error: exc.DBAPIError) -> bool:
    """Whether ``error`` says a queried table does not exist."""
    orig = error.orig
    if getattr(orig, "sqlstate", None) == _PG_UNDEFINED_TABLE:
        return True
    return isinstance(orig, sqlite3.OperationalError) and "no such table" in str(orig)


class Database:
    """One engine and its transaction scopes; safe to share between threads.

    Args:
        db_uri: SQLAlchemy URL of a SQLite file or a PostgreSQL database.
        busy_timeout: seconds a SQLite writer waits for another process's lock; ``None`` reads
            ``CAIRN_SQLITE_BUSY_TIMEOUT``.
    """

    def __init__(self, db_uri: str, *, busy_timeout: float | None = None) -> None:
        url = normalize_url(db_uri)
        self.dialect = url.get_backend_name()
        self.sqlite_path: str | None = None
        self.busy_timeout = busy_timeout_from_env() if busy_timeout is None else float(busy_timeout)
        if self.dialect == "sqlite":
            database = url.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                path = Path(database).expanduser().resolve()
                path.parent.mkdir(parents=True, exist_ok=True)
                self.sqlite_path = str(path)
                url = url.set(database=self.sqlite_path)
            self.engine = self._sqlite_engine(url)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True, **pool_options_from_env())
        self.description = self.sqlite_path or url.render_as_string(hide_password=True)
        #: The URI as a user would type it (plain ``postgresql://``, password hidden), for hints in messages.
        self.display_uri = url.set(drivername=self.dialect).render_as_string(hide_password=True)
        _guard_against_fork(self.engine)

    def _sqlite_engine(self, url: URL) -> Engine:
        memory = self.sqlite_path is None
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
        if memory:  # one shared connection, else every connection would see its own empty database
            kwargs["poolclass"] = StaticPool
        else:
            kwargs.update(pool_options_from_env())
        engine = sa.create_engine(url, **kwargs)
        busy_ms = int(self.busy_timeout * 1000)

        @event.listens_for(engine, "connect")
        def _setup(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # no implicit BEGIN by the driver: see _begin
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cursor.execute("PRAGMA foreign_keys = ON")
                cursor.execute("PRAGMA synchronous = NORMAL")
                if not memory and not _holds_foreign_tables(cursor):
                    _enable_wal(cursor, self.busy_timeout)
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            write = connection.get_execution_options().get(_WRITE_OPTION, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    @contextmanager
    def transaction(self, *, write: bool = False, conflict: str | None = None) -> Iterator[Connection]:
        """A connection inside one transaction, committed on success and rolled back on error.

        Args:
            write: the transaction writes; on SQLite it takes the write lock at once
                (``BEGIN IMMEDIATE``), waiting up to the busy timeout.
            conflict: message of the :class:`ResourceAlreadyExists` raised when a unique
                constraint fails.

        Raises:
            StoreLocked: SQLite stayed locked by another process past the busy timeout.
            ResourceAlreadyExists: a unique constraint failed.
            StoreError: any other database failure (the driver's message is kept).
        """
        try:
            with self.engine.connect() as connection:
                if write:
                    connection.execution_options(**{_WRITE_OPTION: True})
                with connection.begin():
                    yield connection
        except exc.DBAPIError as error:
            raise self.map_error(error, conflict=conflict) from error

    def map_error(self, error: exc.DBAPIError, *, conflict: str | None = None) -> CairnError:
        """The cairn error that describes a driver error."""
        orig = error.orig
        text = str(orig).strip()
        if isinstance(orig, sqlite3.Error) and any(m in text for m in _SQLITE_LOCKED_MESSAGES):
            return StoreLocked(
                f"SQLite database {self.description} is locked: another process holds the lock and did not "
                f"release it within the busy timeout of {self.busy_timeout:g} s (set {BUSY_TIMEOUT_ENV} in "
                f"seconds to wait longer, or stop the other process)"
            )
        unique = getattr(orig, "sqlstate", None) == _PG_UNIQUE_VIOLATION or (
            isinstance(orig, sqlite3.IntegrityError) and "UNIQUE constraint failed" in text
        )
        if unique:
            return ResourceAlreadyExists(conflict or f"already exists in {self.description}: {text}")
        return StoreError(f"{self.dialect} database {self.description} failed: {type(orig).__name__}: {text}")

    def dispose(self) -> None:
        self.engine.dispose()


def _holds_foreign_tables(cursor: sqlite3.Cursor) -> bool:
    """Whether the file holds tables cairn did not create: the store refuses it (see migrate), and its
    journal mode, a persistent setting of the file, is left as its owner set it."""
    tables = {
        row[0]
        for row in cursor.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
        )
    }
    runs_columns = {row[1] for row in cursor.execute("PRAGMA table_info(runs)")} if "runs" in tables else set()
    return holds_foreign_tables(tables, runs_columns)


def _enable_wal(cursor: sqlite3.Cursor, timeout: float) -> None:
    """Switch the file to WAL (a persistent setting) unless it already is.

    Changing the journal mode needs an exclusive lock and SQLite reports a conflict at once
    instead of calling the busy handler, so processes opening a new file together retry here.
    """
    deadline = time.monotonic() + timeout
    while cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as error:
            if not any(m in str(error) for m in _SQLITE_LOCKED_MESSAGES) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _guard_against_fork(engine: Engine) -> None:
    """Never hand a pooled connection opened by a parent process to a forked child."""

    @event.listens_for(engine, "connect")
    def _remember_pid(_dbapi_connection: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _check_pid(_dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise exc.DisconnectionError("connection was opened by another process; reconnecting")
