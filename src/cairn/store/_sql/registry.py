"""The SQLAlchemy model registry store for SQLite and PostgreSQL.

The registry lives in the tracking database (its tables come with schema revision 0002) and
normally shares the tracking store's engine: :meth:`SqlRegistryStore.from_tracking_store`.

Version numbers come from ``registered_models.last_version``, incremented by an ``UPDATE`` in the
transaction that inserts the version. On SQLite the write transaction holds the database write
lock from its first statement (``BEGIN IMMEDIATE``); on PostgreSQL the ``UPDATE`` takes the row
lock of the model, so a concurrent registration into the same name waits, then reads the
incremented counter. A model created on first use is inserted with ``ON CONFLICT DO NOTHING``, so
two processes creating one name at once both end up using the single row. A stage transition locks
the model's row first (``SELECT ... FOR UPDATE``), so transitions with ``archive_existing_versions``
run one after the other and leave a single version in the stage (without the lock, each one's
snapshot missed the others' promotions and all of them stayed in Production).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite

from cairn.errors import InvalidArgument, NotFound, StoreError
from cairn.registry import validation as checks
from cairn.registry.entities import ModelVersion, ModelVersionStatus, RegisteredModel, Stage
from cairn.store._sql import migrate, search
from cairn.store._sql.engine import Database, is_missing_table
from cairn.store._sql.schema import (
    model_version_tags,
    model_versions,
    registered_model_aliases,
    registered_model_tags,
    registered_models,
)
from cairn.store._sql.util import now_ms
from cairn.store.registry_base import RegistryStore
from cairn.tracking import validation

if TYPE_CHECKING:
    from cairn.store._sql.store import SqlTrackingStore

#: (model_id, version) pairs per ``IN`` list: two bound parameters each, well below the limits.
_CHUNK = 2000
_STAGE_ORDER = {stage.value: index for index, stage in enumerate(Stage)}
_MAX_RUN_ID_LENGTH = 32
_VERSION_COLUMNS = (registered_models.c.name, *model_versions.c)
_VERSION_SOURCE = model_versions.join(registered_models, model_versions.c.model_id == registered_models.c.model_id)

_Key = tuple[int, int]


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _lookup_name(name: object) -> str:
    """A name to look up: any non-empty string (a name that cannot exist is simply not found)."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"registered model name must be a non-empty string, got {name!r}")
    return validation.storable_text(name, f"registered model name {name!r}")


def _tag_rows(tags: Mapping[str, Any] | None) -> list[dict[str, str]]:
    return [
        {"key": validation.validate_key(key, "tag"), "value": validation.tag_value(value, key)}
        for key, value in (tags or {}).items()
    ]


def _version_entity(row: Any) -> ModelVersion:
    return ModelVersion(
        name=row.name,
        version=str(row.version),
        creation_timestamp=row.creation_time,
        last_updated_timestamp=row.last_updated_time,
        source=row.source,
        run_id=row.run_id,
        description=row.description,
        user_id=row.user_id,
        current_stage=row.current_stage,
        status=row.status,
        status_message=row.status_message,
        run_link=row.run_link,
    )


def _check_schema(db: Database, db_uri: str) -> None:
    """Create the schema of an empty database; refuse one at another revision (as the tracking store does)."""
    try:
        with db.engine.connect() as connection, connection.begin():
            found = list(connection.execute(sa.text(f"SELECT version_num FROM {migrate.VERSION_TABLE}")).scalars())
    except exc.DBAPIError as error:
        if not is_missing_table(error):
            raise db.map_error(error) from error
        found = []
    if not found:
        migrate.upgrade_schema(db_uri)  # takes the migration lock; a no-op if another process won the race
        return
    if len(found) > 1:
        raise StoreError(f"database {db.description} has several schema revisions: {found}")
    if found[0] != migrate.HEAD_REVISION:
        raise migrate._out_of_date(db, found[0])


class SqlRegistryStore(RegistryStore):
    """Registered models, versions, tags, aliases and stages in a cairn SQLite or PostgreSQL database.

    Args:
        db_uri: the tracking database (``sqlite:////abs/cairn.db`` or ``postgresql://...``).
        busy_timeout: seconds a SQLite writer waits for another process's lock (default:
            ``CAIRN_SQLITE_BUSY_TIMEOUT``, else 30); ignored with ``database``.
        database: an open :class:`Database` to share (its schema already checked); without it the
            store opens its own engine, creates the schema of an empty database and refuses one
            that needs ``cairn db upgrade``.

    Raises:
        SchemaOutOfDate: the database needs ``cairn db upgrade`` (or a newer cairn).
    """

    def __init__(self, db_uri: str, *, busy_timeout: float | None = None, database: Database | None = None) -> None:
        self.db_uri = db_uri
        self._owns_db = database is None
        if database is None:
            database = Database(db_uri, busy_timeout=busy_timeout)
            try:
                _check_schema(database, db_uri)
            except BaseException:
                database.dispose()
                raise
        self._db = database
        self.dialect = database.dialect
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert

    @classmethod
    def from_tracking_store(cls, store: SqlTrackingStore) -> SqlRegistryStore:
        """A registry store on the tracking store's database and engine (no new connections)."""
        return cls(store.db_uri, database=store._db)

    def __repr__(self) -> str:
        return f"SqlRegistryStore({self._db.description!r})"

    def close(self) -> None:
        if self._owns_db:
            self._db.dispose()

    # -- lookups -----------------------------------------------------------------------------------

    @staticmethod
    def _require_model(conn: sa.Connection, name: str, *, lock: bool = False) -> Any:
        """The model's row; with ``lock``, its row lock is held to the end of the transaction (PostgreSQL).

        Writes whose outcome depends on other versions' rows (archiving the versions in a stage) lock
        the model first, so that concurrent writes to one model run one after the other: under READ
        COMMITTED each then sees what the previous one committed. SQLite's write lock does the same.
        """
        query = sa.select(registered_models).where(registered_models.c.name == name)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise NotFound(f"registered model {name!r} does not exist")
        return row

    @staticmethod
    def _require_version(conn: sa.Connection, model: Any, version: str | int) -> int:
        number = checks.version_number(version)
        query = sa.select(model_versions.c.version).where(
            model_versions.c.model_id == model.model_id, model_versions.c.version == number
        )
        if conn.execute(query).first() is None:
            raise NotFound(f"registered model {model.name!r} has no version {number}")
        return number

    def _versions(
        self, conn: sa.Connection, condition: Any, *, order: Sequence[Any] = (), limit: int | None = None
    ) -> list[ModelVersion]:
        return list(self._keyed_versions(conn, condition, order=order, limit=limit).values())

    def _keyed_versions(
        self, conn: sa.Connection, condition: Any, *, order: Sequence[Any] = (), limit: int | None = None
    ) -> dict[_Key, ModelVersion]:
        """Versions with their tags and aliases, by (model_id, version), in query order."""
        query = sa.select(*_VERSION_COLUMNS).select_from(_VERSION_SOURCE).where(condition)
        rows = conn.execute(query.order_by(*order).limit(limit)).all()
        found = {(row.model_id, row.version): _version_entity(row) for row in rows}
        keys = list(found)
        for chunk in _chunks(keys):
            pairs = sa.tuple_(model_version_tags.c.model_id, model_version_tags.c.version).in_(chunk)
            for row in conn.execute(sa.select(model_version_tags).where(pairs)):
                found[row.model_id, row.version].tags[row.key] = row.value
            pairs = sa.tuple_(registered_model_aliases.c.model_id, registered_model_aliases.c.version).in_(chunk)
            query = sa.select(registered_model_aliases).where(pairs).order_by(registered_model_aliases.c.alias)
            for row in conn.execute(query):
                found[row.model_id, row.version].aliases.append(row.alias)
        return found

    def _versions_by_key(self, conn: sa.Connection, keys: Sequence[_Key]) -> dict[_Key, ModelVersion]:
        found: dict[_Key, ModelVersion] = {}
        for chunk in _chunks(list(keys)):
            found.update(
                self._keyed_versions(conn, sa.tuple_(model_versions.c.model_id, model_versions.c.version).in_(chunk))
            )
        return found

    def _one_version(self, conn: sa.Connection, model_id: int, number: int) -> ModelVersion:
        (version,) = self._versions(
            conn, sa.and_(model_versions.c.model_id == model_id, model_versions.c.version == number)
        )
        return version

    def _models(self, conn: sa.Connection, condition: Any, *, limit: int | None = None) -> list[RegisteredModel]:
        query = sa.select(registered_models).where(condition).order_by(registered_models.c.name).limit(limit)
        found = {
            row.model_id: RegisteredModel(
                name=row.name,
                creation_timestamp=row.creation_time,
                last_updated_timestamp=row.last_updated_time,
                description=row.description,
            )
            for row in conn.execute(query)
        }
        latest: list[_Key] = []
        for chunk in _chunks(list(found)):
            tags = sa.select(registered_model_tags).where(registered_model_tags.c.model_id.in_(chunk))
            for row in conn.execute(tags):
                found[row.model_id].tags[row.key] = row.value
            aliases = (
                sa.select(registered_model_aliases)
                .where(registered_model_aliases.c.model_id.in_(chunk))
                .order_by(registered_model_aliases.c.alias)
            )
            for row in conn.execute(aliases):
                found[row.model_id].aliases[row.alias] = str(row.version)
            per_stage = (
                sa.select(model_versions.c.model_id, sa.func.max(model_versions.c.version))
                .where(model_versions.c.model_id.in_(chunk))
                .group_by(model_versions.c.model_id, model_versions.c.current_stage)
            )
            latest.extend((model_id, number) for model_id, number in conn.execute(per_stage))
        for (model_id, _), version in sorted(
            self._versions_by_key(conn, latest).items(), key=lambda item: _STAGE_ORDER[item[1].current_stage]
        ):
            found[model_id].latest_versions.append(version)
        return list(found.values())

    def _touch(self, conn: sa.Connection, model_id: int, now: int) -> None:
        conn.execute(
            registered_models.update().where(registered_models.c.model_id == model_id).values(last_updated_time=now)
        )

    def _upsert(self, conn: sa.Connection, table: sa.Table, keys: Sequence[str], rows: list[dict[str, Any]]) -> None:
        insert = self._insert(table)
        update = {column: insert.excluded[column] for column in rows[0] if column not in keys}
        conn.execute(insert.on_conflict_do_update(index_elements=list(keys), set_=update), rows)

    # -- registered models -------------------------------------------------------------------------

    def create_registered_model(
        self, name: str, tags: dict[str, str] | None = None, description: str | None = None
    ) -> RegisteredModel:
        name = checks.model_name(name)
        description = checks.optional_text(description, "registered model description")
        tag_rows = _tag_rows(tags)
        conflict = f"registered model {name!r} already exists"
        with self._db.transaction(write=True, conflict=conflict) as conn:
            now = now_ms()
            result = conn.execute(
                registered_models.insert().values(
                    name=name, description=description, creation_time=now, last_updated_time=now, last_version=0
                )
            )
            model_id = result.inserted_primary_key[0]  # type: ignore[index]
            if tag_rows:
                conn.execute(registered_model_tags.insert(), [{"model_id": model_id, **row} for row in tag_rows])
        return RegisteredModel(
            name=name,
            creation_timestamp=now,
            last_updated_timestamp=now,
            description=description,
            tags={row["key"]: row["value"] for row in tag_rows},
        )

    def get_registered_model(self, name: str) -> RegisteredModel:
        name = _lookup_name(name)
        with self._db.transaction() as conn:
            found = self._models(conn, registered_models.c.name == name)
        if not found:
            raise NotFound(f"registered model {name!r} does not exist")
        return found[0]

    def search_registered_models(
        self,
        name_like: str | None = None,
        max_results: int = 1000,
        *,
        name: str | None = None,
        case_sensitive: bool = True,
    ) -> list[RegisteredModel]:
        search.check_max_results(max_results)
        conditions: list[Any] = []
        if name is not None:
            conditions.append(registered_models.c.name == name)
        if name_like is not None:
            conditions.append(
                search.like(registered_models.c.name, name_like, case_sensitive=case_sensitive, dialect=self.dialect)
            )
        with self._db.transaction() as conn:
            return self._models(conn, sa.and_(sa.true(), *conditions), limit=max_results)

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel:
        name = _lookup_name(name)
        new_name = checks.model_name(new_name)
        conflict = f"cannot rename registered model {name!r}: {new_name!r} already exists"
        with self._db.transaction(write=True, conflict=conflict) as conn:
            model = self._require_model(conn, name)
            conn.execute(
                registered_models.update()
                .where(registered_models.c.model_id == model.model_id)
                .values(name=new_name, last_updated_time=now_ms())
            )
            return self._models(conn, registered_models.c.model_id == model.model_id)[0]

    def update_registered_model(self, name: str, description: str) -> RegisteredModel:
        name = _lookup_name(name)
        checks.optional_text(description, "registered model description")
        with self._db.transaction(write=True) as conn:
            model = self._require_model(conn, name)
            conn.execute(
                registered_models.update()
                .where(registered_models.c.model_id == model.model_id)
                .values(description=description, last_updated_time=now_ms())
            )
            return self._models(conn, registered_models.c.model_id == model.model_id)[0]

    def delete_registered_model(self, name: str) -> None:
        name = _lookup_name(name)
        with self._db.transaction(write=True) as conn:
            deleted = conn.execute(registered_models.delete().where(registered_models.c.name == name))
            if deleted.rowcount == 0:
                raise NotFound(f"registered model {name!r} does not exist")

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        (row,) = _tag_rows({key: value})
        with self._db.transaction(write=True) as conn:
            model = self._require_model(conn, _lookup_name(name))
            self._upsert(conn, registered_model_tags, ("model_id", "key"), [{"model_id": model.model_id, **row}])
            self._touch(conn, model.model_id, now_ms())

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        with self._db.transaction(write=True) as conn:
            model = self._require_model(conn, _lookup_name(name))
            conn.execute(
                registered_model_tags.delete().where(
                    registered_model_tags.c.model_id == model.model_id, registered_model_tags.c.key == key
                )
            )

    # -- versions ----------------------------------------------------------------------------------

    def create_model_version(
        self,
        name: str,
        source: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        description: str | None = None,
        user_id: str | None = None,
        run_link: str | None = None,
    ) -> ModelVersion:
        name = checks.model_name(name)
        if not isinstance(source, str) or not source.strip():
            raise InvalidArgument(f"model version source must be a non-empty URI or path, got {source!r}")
        if run_id is not None and (not isinstance(run_id, str) or not 0 < len(run_id) <= _MAX_RUN_ID_LENGTH):
            raise InvalidArgument(f"run_id must be a run id of at most {_MAX_RUN_ID_LENGTH} characters, got {run_id!r}")
        for text, what in ((source, "source"), (description, "description"), (run_link, "run link")):
            checks.optional_text(text, f"model version {what}")
        tag_rows = _tag_rows(tags)
        with self._db.transaction(write=True) as conn:
            now = now_ms()
            conn.execute(
                self._insert(registered_models)
                .values(name=name, creation_time=now, last_updated_time=now, last_version=0)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            conn.execute(
                registered_models.update()
                .where(registered_models.c.name == name)
                .values(last_version=registered_models.c.last_version + 1, last_updated_time=now)
            )
            model_id, number = conn.execute(
                sa.select(registered_models.c.model_id, registered_models.c.last_version).where(
                    registered_models.c.name == name
                )
            ).one()
            values = {
                "source": source,
                "run_id": run_id,
                "run_link": run_link,
                "description": description,
                "user_id": user_id,
                "current_stage": Stage.NONE.value,
                "status": ModelVersionStatus.READY.value,
                "status_message": None,
                "creation_time": now,
                "last_updated_time": now,
            }
            conn.execute(model_versions.insert().values(model_id=model_id, version=number, **values))
            if tag_rows:
                conn.execute(
                    model_version_tags.insert(), [{"model_id": model_id, "version": number, **r} for r in tag_rows]
                )
        return ModelVersion(
            name=name,
            version=str(number),
            creation_timestamp=now,
            last_updated_timestamp=now,
            source=source,
            run_id=run_id,
            description=description,
            user_id=user_id,
            run_link=run_link,
            tags={row["key"]: row["value"] for row in tag_rows},
        )

    def import_model_version(self, version: ModelVersion) -> ModelVersion:
        name = checks.model_name(version.name)
        number = checks.version_number(version.version)
        stage = Stage.parse(version.current_stage).value
        try:
            status = ModelVersionStatus(version.status).value
        except ValueError:
            choices = ", ".join(s.value for s in ModelVersionStatus)
            message = f"unknown model version status {version.status!r}; expected one of {choices}"
            raise InvalidArgument(message) from None
        if not isinstance(version.source, str) or not version.source.strip():
            raise InvalidArgument(f"model version source must be a non-empty URI or path, got {version.source!r}")
        tag_rows = _tag_rows(version.tags)
        conflict = f"registered model {name!r} already has a version {number}"
        with self._db.transaction(write=True, conflict=conflict) as conn:
            now = now_ms()
            conn.execute(
                self._insert(registered_models)
                .values(name=name, creation_time=now, last_updated_time=now, last_version=0)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            counter = registered_models.c.last_version
            conn.execute(
                registered_models.update()
                .where(registered_models.c.name == name)
                .values(last_version=sa.case((counter < number, number), else_=counter))
            )
            model_id = conn.execute(
                sa.select(registered_models.c.model_id).where(registered_models.c.name == name)
            ).scalar_one()
            conn.execute(
                model_versions.insert().values(
                    model_id=model_id,
                    version=number,
                    source=version.source,
                    run_id=version.run_id,
                    run_link=version.run_link,
                    description=version.description,
                    user_id=version.user_id,
                    current_stage=stage,
                    status=status,
                    status_message=version.status_message,
                    creation_time=int(version.creation_timestamp),
                    last_updated_time=int(version.last_updated_timestamp),
                )
            )
            if tag_rows:
                conn.execute(
                    model_version_tags.insert(), [{"model_id": model_id, "version": number, **r} for r in tag_rows]
                )
            return self._one_version(conn, model_id, number)

    def get_model_version(self, name: str, version: str | int) -> ModelVersion:
        name = _lookup_name(name)
        number = checks.version_number(version)
        with self._db.transaction() as conn:
            model = self._require_model(conn, name)
            found = self._versions(
                conn, sa.and_(model_versions.c.model_id == model.model_id, model_versions.c.version == number)
            )
        if not found:
            raise NotFound(f"registered model {name!r} has no version {number}")
        return found[0]

    def search_model_versions(
        self,
        name: str | None = None,
        run_id: str | Sequence[str] | None = None,
        max_results: int = 10_000,
        *,
        name_like: str | None = None,
        case_sensitive: bool = True,
    ) -> list[ModelVersion]:
        search.check_max_results(max_results)
        conditions: list[Any] = []
        if name is not None:
            conditions.append(registered_models.c.name == name)
        if name_like is not None:
            conditions.append(
                search.like(registered_models.c.name, name_like, case_sensitive=case_sensitive, dialect=self.dialect)
            )
        if isinstance(run_id, str):
            conditions.append(model_versions.c.run_id == run_id)
        elif run_id is not None:
            ids = list(dict.fromkeys(run_id))
            if not ids:
                return []
            conditions.append(model_versions.c.run_id.in_(ids))
        order = [registered_models.c.name, model_versions.c.version.desc()]
        with self._db.transaction() as conn:
            return self._versions(conn, sa.and_(sa.true(), *conditions), order=order, limit=max_results)

    def update_model_version(self, name: str, version: str | int, description: str) -> ModelVersion:
        checks.optional_text(description, "model version description")
        with self._db.transaction(write=True) as conn:
            model = self._require_model(conn, _lookup_name(name))
            number = self._require_version(conn, model, version)
            now = now_ms()
            conn.execute(
                model_versions.update()
                .where(model_versions.c.model_id == model.model_id, model_versions.c.version == number)
                .values(description=description, last_updated_time=now)
            )
            return self._one_version(conn, model.model_id, number)

    def delete_model_version(self, name: str, version: str | int) -> None:
        with self._db.transaction(write=True) as conn:
            model = self._require_model(conn, _lookup_name(name))
            number = self._require_version(conn, model, version)
            conn.execute(  # tags and aliases go by ON DELETE CASCADE
                model_versions.delete().where(
                    model_versions.c.model_id == model.model_id, model_versions.c.version == number
                )
            )
            self._touch(conn, model.model_id, now_ms())

    def set_model_version_tag(self, name: str, version: str | int, key: str, value: str) -> None:
        (row,) = _tag_rows({key: value})
        with self._db.transaction(write=True) as conn:
            model = self._require_model(conn, _lookup_name(name))
            number = self._require_version(conn, model, version)
            self._upsert(
                conn,
                model_version_tags,
                ("model_id", "version", "key"),
                [{"model_id": model.model_id, "version": number, **row}],
            )

    def delete_model_version_tag(self, name: str, version: str | int, key: str) -> None:
        with self._db.transaction(write=True) as conn:
            model = self._require_model(conn, _lookup_name(name))
            number = self._require_version(conn, model, version)
            conn.execute(
                model_version_tags.delete().where(
                    model_version_tags.c.model_id == model.model_id,
                    model_version_tags.c.version == number,
                    model_version_tags.c.key == key,
                )
            )

    # -- stages ------------------------------------------------------------------------------------

    def transition_model_version_stage(
        self, name: str, version: str | int, stage: Stage | str, archive_existing_versions: bool = False
    ) -> ModelVersion:
        target = Stage.parse(stage)
        if archive_existing_versions and target not in (Stage.STAGING, Stage.PRODUCTION):
            raise InvalidArgument(
                f"archive_existing_versions only applies to transitions to Staging or Production, not {target.value}"
            )
        with self._db.transaction(write=True) as conn:
            model = self._require_model(conn, _lookup_name(name), lock=True)
            number = self._require_version(conn, model, version)
            now = now_ms()
            conn.execute(
                model_versions.update()
                .where(model_versions.c.model_id == model.model_id, model_versions.c.version == number)
                .values(current_stage=target.value, last_updated_time=now)
            )
            if archive_existing_versions:
                conn.execute(
                    model_versions.update()
                    .where(
                        model_versions.c.model_id == model.model_id,
                        model_versions.c.version != number,
                        model_versions.c.current_stage == target.value,
                    )
                    .values(current_stage=Stage.ARCHIVED.value, last_updated_time=now)
                )
            self._touch(conn, model.model_id, now)
            return self._one_version(conn, model.model_id, number)

    def get_latest_versions(self, name: str, stages: Sequence[Stage | str] | None = None) -> list[ModelVersion]:
        if isinstance(stages, (str, Stage)):
            stages = [stages]
        wanted = list(dict.fromkeys(Stage.parse(stage) for stage in stages)) if stages else list(Stage)
        with self._db.transaction() as conn:
            model = self._require_model(conn, _lookup_name(name))
            per_stage = (
                sa.select(model_versions.c.current_stage, sa.func.max(model_versions.c.version))
                .where(model_versions.c.model_id == model.model_id)
                .group_by(model_versions.c.current_stage)
            )
            highest = {stage: number for stage, number in conn.execute(per_stage)}
            keys = [(model.model_id, highest[stage.value]) for stage in wanted if stage.value in highest]
            found = self._versions_by_key(conn, keys)
        return [found[key] for key in keys]

    # -- aliases -----------------------------------------------------------------------------------

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        alias = checks.alias_name(alias)
        with self._db.transaction(write=True) as conn:
            model = self._require_model(conn, _lookup_name(name))
            number = self._require_version(conn, model, version)
            row = {"model_id": model.model_id, "alias": alias, "version": number}
            self._upsert(conn, registered_model_aliases, ("model_id", "alias"), [row])
            self._touch(conn, model.model_id, now_ms())

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        with self._db.transaction(write=True) as conn:
            model = self._require_model(conn, _lookup_name(name))
            conn.execute(
                registered_model_aliases.delete().where(
                    registered_model_aliases.c.model_id == model.model_id, registered_model_aliases.c.alias == alias
                )
            )

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        with self._db.transaction() as conn:
            model = self._require_model(conn, _lookup_name(name))
            number = conn.execute(
                sa.select(registered_model_aliases.c.version).where(
                    registered_model_aliases.c.model_id == model.model_id, registered_model_aliases.c.alias == alias
                )
            ).scalar()
            if number is None:
                raise NotFound(f"registered model {name!r} has no alias {alias!r}")
            return self._one_version(conn, model.model_id, number)
