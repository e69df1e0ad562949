"""Schema versions: the cheap check every store open makes, and the upgrade behind ``cairn db upgrade``.

Migrations are alembic revisions shipped in ``migrations/versions`` and run programmatically (no
``alembic.ini``). A new, empty database is brought to the head revision when a store first opens
it; a database at another revision is refused with :class:`~cairn.errors.SchemaOutOfDate` until
someone runs ``cairn db upgrade`` on purpose, because upgrading a shared team database is a
decision, not a side effect of logging a run.

cairn creates its tables only in an empty database (on PostgreSQL: an empty default schema) or
upgrades its own, recognised by a revision of ``migrations/versions`` in ``alembic_version``. Any
other database is refused with :class:`~cairn.errors.ForeignStore`: an MLflow tracking database
(recognised by the columns of its ``runs`` table, which cairn's has not) with a pointer to
``cairn import-mlflow``, anything else with the names of the tables found.

Initialisation and upgrades run in one write transaction holding a lock (SQLite: the write
lock of ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-level advisory lock), so processes that
open a new database at the same moment create it once.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite

from cairn.errors import ForeignStore, SchemaOutOfDate, StoreError
from cairn.store._sql.engine import Database, is_missing_table
from cairn.store._sql.schema import MLFLOW_RUN_COLUMNS, TABLE_NAMES, experiments
from cairn.store._sql.util import artifact_location_for, now_ms

#: Id of the newest revision in ``migrations/versions``; a test checks they agree.
HEAD_REVISION = "0006"
MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
VERSION_TABLE = "alembic_version"
DEFAULT_EXPERIMENT_ID = 0
DEFAULT_EXPERIMENT_NAME = "Default"

#: Tables of every cairn schema revision: with them, an unknown revision is taken for a newer cairn's.
_CAIRN_CORE_TABLES = frozenset({"experiments", "runs", "metrics", "params", "tags"})
_MAX_NAMED_TABLES = 12

_PG_LOCK_KEY = 0x636169726E  # "cairn"
_log = logging.getLogger(__name__)

_PROBE = sa.text(
    f"SELECT version_num, (SELECT 1 FROM experiments WHERE experiment_id = {DEFAULT_EXPERIMENT_ID}) "
    f"FROM {VERSION_TABLE}"
)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An alembic configuration pointing at the shipped migrations, optionally bound to a connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def ensure_schema(db: Database, default_artifact_root: str) -> None:
    """Make sure the database is usable by this cairn: create it when empty, else check its revision.

    The common case (an up-to-date database) costs one query.

    Raises:
        SchemaOutOfDate: the database is at another revision of cairn's schema.
        ForeignStore: the database holds tables cairn did not create (an MLflow store, an application's).
        StoreError: the database holds cairn tables without a revision, or cannot be read.
    """
    try:
        with db.engine.connect() as connection, connection.begin():
            rows = connection.execute(_PROBE).all()
    except exc.DBAPIError as error:
        if not is_missing_table(error):
            raise db.map_error(error) from error
        rows = []
    if not rows:
        _initialize(db, default_artifact_root)
        return
    if len(rows) > 1:
        raise StoreError(f"database {db.description} has several schema revisions: {[r[0] for r in rows]}")
    version, has_default = rows[0]
    if version != HEAD_REVISION:
        raise _out_of_date(db, version)
    if not has_default:  # created by `cairn db upgrade`, which knows no artifact root
        with db.transaction(write=True) as connection:
            _create_default_experiment(connection, default_artifact_root)


def _initialize(db: Database, default_artifact_root: str) -> None:
    with db.transaction(write=True) as connection:
        _lock(connection)
        version = _revision(connection)
        if version is None:
            _check_empty(db, connection)
            _log.info("creating cairn tables in %s", db.description)
            command.upgrade(alembic_config(connection), "head")
            version = HEAD_REVISION
        elif version != HEAD_REVISION:  # another process got here first, or a foreign alembic table
            raise _out_of_date(db, version, connection)
        _create_default_experiment(connection, default_artifact_root)


def _check_empty(db: Database, connection: sa.Connection) -> None:
    """Refuse to create cairn's tables in a database (schema) that has no cairn revision but holds tables."""
    error = _foreign_contents(db, connection, None)
    if error is not None:
        raise error


def _foreign_contents(db: Database, connection: sa.Connection, version: str | None) -> StoreError | None:
    """Why the database is not (or not only) cairn's, given its revision, which is not one of cairn's.

    ``None`` means cairn may go on: the database is empty (``version is None``), or it looks like the
    schema of a newer cairn (its core tables under an unknown revision).
    """
    inspector = sa.inspect(connection)
    tables = (set(inspector.get_table_names()) | set(inspector.get_view_names())) - {VERSION_TABLE}
    if "runs" in tables and MLFLOW_RUN_COLUMNS & {column["name"] for column in inspector.get_columns("runs")}:
        return _mlflow_store(db, version)
    if version is not None:
        return None if tables >= _CAIRN_CORE_TABLES else _foreign_store(db, tables, version)
    if tables - TABLE_NAMES:
        return _foreign_store(db, tables - TABLE_NAMES, version)
    if tables:
        return StoreError(
            f"database {db.description} has cairn tables ({_names(tables)}) but no schema revision in "
            f"{VERSION_TABLE}; it was not created by cairn, or its version table was dropped"
        )
    return None


def _mlflow_store(db: Database, version: str | None) -> ForeignStore:
    revision = f" (MLflow schema revision {version!r})" if version else ""
    return ForeignStore(
        f"database {db.description} is an MLflow tracking database{revision}, not a cairn store; cairn does not "
        f"write into it. Import it into a cairn store of its own with `cairn import-mlflow --from "
        f"{db.display_uri} --to <cairn store>` (e.g. --to sqlite:///cairn.db), then use that store"
    )


def _foreign_store(db: Database, tables: Set[str], version: str | None) -> ForeignStore:
    revision = f" and an alembic revision {version!r} that is not cairn's" if version else ""
    where = "its default schema" if db.dialect == "postgresql" else "it"
    return ForeignStore(
        f"database {db.description} was not created by cairn: {where} holds tables {_names(tables)}{revision}. "
        f"cairn creates its tables only in an empty database or its own; give it a database of its own "
        f"(e.g. sqlite:///cairn.db{', or a PostgreSQL schema of its own' if db.dialect == 'postgresql' else ''})"
    )


def _names(tables: Set[str]) -> str:
    shown = sorted(tables)[:_MAX_NAMED_TABLES]
    more = len(tables) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _create_default_experiment(connection: sa.Connection, default_artifact_root: str) -> None:
    now = now_ms()
    insert = (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(experiments)
    connection.execute(
        insert.values(
            experiment_id=DEFAULT_EXPERIMENT_ID,
            name=DEFAULT_EXPERIMENT_NAME,
            artifact_location=artifact_location_for(default_artifact_root, DEFAULT_EXPERIMENT_ID),
            lifecycle_stage="active",
            creation_time=now,
            last_update_time=now,
        ).on_conflict_do_nothing()
    )


def _lock(connection: sa.Connection) -> None:
    """Serialise schema changes between processes (SQLite already holds its write lock)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def _revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _known_revisions() -> set[str]:
    return {script.revision for script in _script().walk_revisions()}


def _out_of_date(db: Database, version: str | None, connection: sa.Connection | None = None) -> StoreError:
    """The error for a database at ``version`` (not this cairn's head): out of date, newer, or not cairn's."""
    if version in _known_revisions():
        return SchemaOutOfDate(
            f"the cairn database {db.description} has schema revision {version!r} but this cairn expects "
            f"{HEAD_REVISION!r}: back it up and run `cairn db upgrade` to migrate it"
        )
    if connection is None:
        with db.engine.connect() as own, own.begin():
            foreign = _foreign_contents(db, own, version)
    else:
        foreign = _foreign_contents(db, connection, version)
    if foreign is not None:
        return foreign
    return SchemaOutOfDate(
        f"the cairn database {db.description} has schema revision {version!r}, unknown to this cairn (which "
        f"expects {HEAD_REVISION!r}); it was probably written by a newer cairn: upgrade cairn, then run "
        f"`cairn db upgrade` if that cairn asks for it"
    )


def upgrade_schema(db_uri: str) -> tuple[str | None, str]:
    """Migrate the database to the newest schema; returns the revisions ``(before, after)``.

    ``before`` is ``None`` for a new database. Running it on an up-to-date database changes nothing.

    Raises:
        SchemaOutOfDate: the database is at a revision this cairn does not know (a newer cairn's).
        ForeignStore: the database holds tables cairn did not create (an MLflow store, an application's).
        StoreError: the database cannot be migrated (cairn tables without a revision, SQL failure).
    """
    db = Database(db_uri)
    try:
        with db.transaction(write=True) as connection:
            _lock(connection)
            before = _revision(connection)
            if before is None:
                _check_empty(db, connection)
            elif before not in _known_revisions():
                raise _out_of_date(db, before, connection)
            if before != HEAD_REVISION:
                _log.info("upgrading cairn database %s from %s to %s", db.description, before, HEAD_REVISION)
                command.upgrade(alembic_config(connection), "head")
        return before, HEAD_REVISION
    finally:
        db.dispose()


def current_revision(db_uri: str) -> str | None:
    """The schema revision of the database, ``None`` when it has none (new or not a cairn database)."""
    db = Database(db_uri)
    try:
        with db.transaction() as connection:
            return _revision(connection)
    finally:
        db.dispose()
