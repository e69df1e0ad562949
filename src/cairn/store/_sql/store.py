"""The SQLAlchemy tracking store for SQLite and PostgreSQL."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cairn.errors import (
    ExperimentNotFound,
    InvalidArgument,
    NotFound,
    ParamConflict,
    ResourceAlreadyExists,
    RunNotActive,
    RunNotFound,
)
from cairn.store._sql import leases as leases_sql
from cairn.store._sql import points as points_sql
from cairn.store._sql import schema, search
from cairn.store._sql.engine import Database
from cairn.store._sql.migrate import DEFAULT_EXPERIMENT_ID, ensure_schema
from cairn.store._sql.schema import experiment_tags, experiments, latest_metrics, metrics, params, runs, tags
from cairn.store._sql.util import artifact_location_for, now_ms
from cairn.store.base import MetricPoint, RunLease, StoredMetricPoint, TrackingStore
from cairn.tracking import system_tags, validation
from cairn.tracking.entities import (
    Experiment,
    LifecycleStage,
    Metric,
    PagedList,
    Param,
    Run,
    RunData,
    RunInfo,
    RunStatus,
    RunTag,
    ViewType,
)

_ACTIVE = LifecycleStage.ACTIVE.value
_DELETED = LifecycleStage.DELETED.value
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_INT32 = 2**31 - 1
#: Ids per ``IN (...)`` list; stays below SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 5000
#: How long an idempotency key is remembered (ms); later keyed writes prune older keys.
IDEMPOTENCY_KEY_TTL_MS = 24 * 3600 * 1000
_MAX_IDEMPOTENCY_KEY = 256
_MAX_FINGERPRINT = 128
_RUN_COLUMNS = (
    runs.c.run_uuid,
    runs.c.name,
    runs.c.experiment_id,
    runs.c.user_id,
    runs.c.status,
    runs.c.start_time,
    runs.c.end_time,
    runs.c.lifecycle_stage,
    runs.c.artifact_uri,
)


class KeyedMetrics(NamedTuple):
    """The metrics of one log-batch request, with its idempotency key (None: unkeyed) and fingerprint."""

    run_id: str
    metrics: Sequence[Metric]
    idempotency_key: str | None = None
    fingerprint: str = ""


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _experiment_pk(experiment_id: str | int) -> int:
    """The integer key of an experiment id, or ExperimentNotFound for ids no experiment can have."""
    text = str(experiment_id).strip()
    if not text.isdecimal() or int(text) > _MAX_INT32:
        raise ExperimentNotFound(f"no experiment with id {experiment_id!r}")
    return int(text)


def _run_info(row: Any) -> RunInfo:
    return RunInfo(
        run_id=row.run_uuid,
        experiment_id=str(row.experiment_id),
        run_name=row.name,
        user_id=row.user_id,
        status=RunStatus(row.status),
        start_time=row.start_time,
        end_time=row.end_time,
        artifact_uri=row.artifact_uri,
        lifecycle_stage=LifecycleStage(row.lifecycle_stage),
    )


class SqlTrackingStore(TrackingStore):
    """Tracking store on SQLite (one file, several processes) or PostgreSQL.

    Opening checks the schema revision with one query; an empty database is created at the newest
    revision, with the ``Default`` experiment ``"0"`` at ``<default_artifact_root>/0``.

    Args:
        db_uri: ``sqlite:////abs/path/cairn.db`` (the folder is created) or
            ``postgresql://user@host:5432/db`` (served by psycopg 3).
        default_artifact_root: where experiments keep artifacts unless given a location.
        busy_timeout: seconds a SQLite writer waits for another process's lock (default:
            ``CAIRN_SQLITE_BUSY_TIMEOUT``, else 30).

    Raises:
        SchemaOutOfDate: the database needs ``cairn db upgrade`` (or a newer cairn).
        StoreLocked: SQLite stayed locked past the busy timeout.
    """

    def __init__(self, db_uri: str, default_artifact_root: str, *, busy_timeout: float | None = None) -> None:
        self.db_uri = db_uri
        self.default_artifact_root = default_artifact_root
        self._db = Database(db_uri, busy_timeout=busy_timeout)
        self.dialect = self._db.dialect
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        try:
            ensure_schema(self._db, default_artifact_root)
        except BaseException:
            self._db.dispose()
            raise
        self._latest_upsert = points_sql.latest_upsert(self._insert)

    def __repr__(self) -> str:
        return f"SqlTrackingStore({self._db.description!r})"

    def close(self) -> None:
        self._db.dispose()

    # -- experiments -------------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        name = self._experiment_name(name)
        if artifact_location:
            validation.storable_text(artifact_location, f"artifact location {artifact_location!r}")
        tag_rows = self._experiment_tag_rows(tags or {})
        conflict = f"an experiment named {name!r} already exists (perhaps deleted: restore it or pick another name)"
        with self._db.transaction(write=True, conflict=conflict) as conn:
            now = now_ms()
            result = conn.execute(
                experiments.insert().values(
                    name=name,
                    artifact_location=artifact_location or "",
                    lifecycle_stage=_ACTIVE,
                    creation_time=now,
                    last_update_time=now,
                )
            )
            pk = result.inserted_primary_key[0]  # type: ignore[index]
            if not artifact_location:
                location = artifact_location_for(self.default_artifact_root, pk)
                conn.execute(
                    experiments.update().where(experiments.c.experiment_id == pk).values(artifact_location=location)
                )
            if tag_rows:
                conn.execute(experiment_tags.insert(), [{"experiment_id": pk, **row} for row in tag_rows])
        return str(pk)

    @staticmethod
    def _experiment_name(name: object) -> str:
        return validation.experiment_name(name)

    @staticmethod
    def _experiment_tag_rows(tag_map: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {"key": validation.validate_key(key, "tag"), "value": validation.tag_value(value, key)}
            for key, value in tag_map.items()
        ]

    def get_experiment(self, experiment_id: str) -> Experiment:
        pk = _experiment_pk(experiment_id)
        with self._db.transaction() as conn:
            found = self._experiments(conn, experiments.c.experiment_id == pk)
        if not found:
            raise ExperimentNotFound(f"no experiment with id {experiment_id!r}")
        return found[0]

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        if not validation.is_storable_text(name):
            return None  # no experiment can have this name (and PostgreSQL would refuse the query)
        with self._db.transaction() as conn:
            found = self._experiments(conn, experiments.c.name == name)
        return found[0] if found else None

    def search_experiments(
        self,
        view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        name_like: str | None = None,
    ) -> list[Experiment]:
        search.check_max_results(max_results)
        condition: Any = experiments.c.lifecycle_stage.in_([stage.value for stage in view_type.stages()])
        if name_like is not None:
            name_match = search.like(experiments.c.name, name_like, case_sensitive=True, dialect=self.dialect)
            condition = sa.and_(condition, name_match)
        with self._db.transaction() as conn:
            return self._experiments(conn, condition, limit=max_results)

    def _experiments(self, conn: sa.Connection, condition: Any, limit: int | None = None) -> list[Experiment]:
        query = sa.select(experiments).where(condition).order_by(experiments.c.experiment_id).limit(limit)
        found = {
            row.experiment_id: Experiment(
                experiment_id=str(row.experiment_id),
                name=row.name,
                artifact_location=row.artifact_location,
                lifecycle_stage=LifecycleStage(row.lifecycle_stage),
                tags={},
                creation_time=row.creation_time,
                last_update_time=row.last_update_time,
            )
            for row in conn.execute(query)
        }
        for chunk in _chunks(list(found)):
            tag_query = sa.select(experiment_tags).where(experiment_tags.c.experiment_id.in_(chunk))
            for row in conn.execute(tag_query):
                found[row.experiment_id].tags[row.key] = row.value
        return list(found.values())

    def _require_experiment(self, conn: sa.Connection, experiment_id: str) -> Any:
        pk = _experiment_pk(experiment_id)
        row = conn.execute(sa.select(experiments).where(experiments.c.experiment_id == pk)).first()
        if row is None:
            raise ExperimentNotFound(f"no experiment with id {experiment_id!r}")
        return row

    def delete_experiment(self, experiment_id: str) -> None:
        if _experiment_pk(experiment_id) == DEFAULT_EXPERIMENT_ID:
            raise InvalidArgument("the default experiment '0' cannot be deleted")
        with self._db.transaction(write=True) as conn:
            row = self._require_experiment(conn, experiment_id)
            if row.lifecycle_stage == _DELETED:
                return
            now = now_ms()
            pk = row.experiment_id
            conn.execute(
                experiments.update()
                .where(experiments.c.experiment_id == pk)
                .values(lifecycle_stage=_DELETED, last_update_time=now)
            )
            conn.execute(
                runs.update()
                .where(runs.c.experiment_id == pk, runs.c.lifecycle_stage == _ACTIVE)
                .values(lifecycle_stage=_DELETED, deleted_time=now)
            )

    def restore_experiment(self, experiment_id: str) -> None:
        """Restore the experiment and the runs deleted with it (runs deleted before it stay deleted)."""
        with self._db.transaction(write=True) as conn:
            row = self._require_experiment(conn, experiment_id)
            if row.lifecycle_stage == _ACTIVE:
                return
            pk, deleted_at = row.experiment_id, row.last_update_time or 0
            conn.execute(
                experiments.update()
                .where(experiments.c.experiment_id == pk)
                .values(lifecycle_stage=_ACTIVE, last_update_time=now_ms())
            )
            conn.execute(
                runs.update()
                .where(runs.c.experiment_id == pk, runs.c.lifecycle_stage == _DELETED)
                .where(runs.c.deleted_time >= deleted_at)
                .values(lifecycle_stage=_ACTIVE, deleted_time=None)
            )

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        new_name = self._experiment_name(new_name)
        conflict = f"cannot rename experiment {experiment_id!r}: an experiment named {new_name!r} already exists"
        with self._db.transaction(write=True, conflict=conflict) as conn:
            row = self._require_experiment(conn, experiment_id)
            values: dict[str, Any] = {"name": new_name}
            if row.lifecycle_stage == _ACTIVE:  # a deleted one keeps its deletion time for restore
                values["last_update_time"] = now_ms()
            conn.execute(experiments.update().where(experiments.c.experiment_id == row.experiment_id).values(values))

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        (row,) = self._experiment_tag_rows({key: value})
        with self._db.transaction(write=True) as conn:
            pk = self._require_experiment(conn, experiment_id).experiment_id
            self._upsert(conn, experiment_tags, ("experiment_id", "key"), [{"experiment_id": pk, **row}])

    # -- runs ----------------------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str,
        *,
        user_id: str,
        start_time: int,
        run_name: str,
        tags: Sequence[RunTag] = (),
        run_id: str | None = None,
    ) -> Run:
        if run_id is None:
            run_id = uuid.uuid4().hex
        elif not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise InvalidArgument(f"run id must be 32 lowercase hex characters, got {run_id!r}")
        tag_map = {tag.key: tag.value for tag in self._tags(tags)}
        run_name = run_name or tag_map.get(system_tags.RUN_NAME, "")
        self._check_run_name(run_name)
        if run_name:
            tag_map[system_tags.RUN_NAME] = run_name
        with self._db.transaction(write=True, conflict=f"a run with id {run_id} already exists") as conn:
            experiment = self._require_experiment(conn, experiment_id)
            if experiment.lifecycle_stage != _ACTIVE:
                raise RunNotActive(f"experiment {experiment_id!r} is deleted; restore it before creating runs in it")
            values = {
                "run_uuid": run_id,
                "name": run_name,
                "experiment_id": experiment.experiment_id,
                "user_id": user_id or "",
                "status": RunStatus.RUNNING.value,
                "start_time": int(start_time),
                "end_time": None,
                "lifecycle_stage": _ACTIVE,
                "artifact_uri": f"{experiment.artifact_location.rstrip('/')}/{run_id}/artifacts",
                "deleted_time": None,
            }
            conn.execute(runs.insert().values(values))
            if tag_map:
                rows = [{"run_uuid": run_id, "key": k, "value": v} for k, v in tag_map.items()]
                conn.execute(schema.tags.insert(), rows)
        info = RunInfo(
            run_id=run_id,
            experiment_id=str(experiment.experiment_id),
            run_name=run_name,
            user_id=values["user_id"],
            status=RunStatus.RUNNING,
            start_time=values["start_time"],
            end_time=None,
            artifact_uri=values["artifact_uri"],
            lifecycle_stage=LifecycleStage.ACTIVE,
        )
        return Run(info=info, data=RunData(tags=tag_map))

    @staticmethod
    def _check_run_name(run_name: object) -> None:
        validation.run_name(run_name)

    def get_run(self, run_id: str) -> Run:
        with self._db.transaction() as conn:
            row = conn.execute(sa.select(*_RUN_COLUMNS).where(runs.c.run_uuid == run_id)).first()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            data = self._run_data(conn, [run_id])[run_id]
        return Run(info=_run_info(row), data=data)

    def get_run_info(self, run_id: str) -> RunInfo:
        with self._db.transaction() as conn:
            row = conn.execute(sa.select(*_RUN_COLUMNS).where(runs.c.run_uuid == run_id)).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return _run_info(row)

    def _run_data(self, conn: sa.Connection, run_ids: Sequence[str]) -> dict[str, RunData]:
        """Latest metrics, params and tags of many runs: one query per table (per chunk of ids)."""
        data = {run_id: RunData() for run_id in run_ids}
        for chunk in _chunks(list(data)):
            metric_query = sa.select(
                latest_metrics.c.run_uuid, latest_metrics.c.key, latest_metrics.c.value, latest_metrics.c.is_nan
            ).where(latest_metrics.c.run_uuid.in_(chunk))
            for run_id, key, value, is_nan in conn.execute(metric_query).all():  # fetchall: no per-row fetch
                data[run_id].metrics[key] = points_sql.loaded_value(value, is_nan)
            for table, attribute in ((params, "params"), (tags, "tags")):
                query = sa.select(table.c.run_uuid, table.c.key, table.c.value).where(table.c.run_uuid.in_(chunk))
                for run_id, key, value in conn.execute(query).all():
                    getattr(data[run_id], attribute)[key] = value
        return data

    def latest_metrics(self, run_ids: Sequence[str]) -> dict[str, dict[str, Metric]]:
        found: dict[str, dict[str, Metric]] = {run_id: {} for run_id in run_ids}
        columns = [latest_metrics.c[name] for name in ("run_uuid", "key", "value", "is_nan", "timestamp", "step")]
        with self._db.transaction() as conn:
            for chunk in _chunks(list(found)):
                query = sa.select(*columns).where(latest_metrics.c.run_uuid.in_(chunk))
                for run_id, key, value, is_nan, timestamp, step in conn.execute(query).all():
                    found[run_id][key] = Metric(key, points_sql.loaded_value(value, is_nan), timestamp, step)
        return found

    def _require_run(
        self, conn: sa.Connection, run_id: str, *, active: bool, lock: bool = False, exclusive: bool = False
    ) -> Any:
        """The run's row; ``lock``: share-locked (PostgreSQL) until the transaction ends, so the run cannot be
        deleted or purged before points written in this transaction commit (metrics have no foreign key);
        ``exclusive``: locked for update (a transaction that will update the row takes that lock first, as two
        holding a share lock could not both upgrade it)."""
        query = sa.select(*_RUN_COLUMNS).where(runs.c.run_uuid == run_id)
        if lock or exclusive:
            query = query.with_for_update(read=not exclusive)
        row = conn.execute(query).first()
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        if active and row.lifecycle_stage != _ACTIVE:
            raise RunNotActive(f"run {run_id} is deleted; restore it before logging to it")
        return row

    def update_run_info(
        self,
        run_id: str,
        *,
        status: RunStatus | None = None,
        end_time: int | None = None,
        run_name: str | None = None,
    ) -> RunInfo:
        values: dict[str, Any] = {}
        if status is not None:
            status = RunStatus.parse(status)
            values["status"] = status.value
            if status is RunStatus.RUNNING:
                values["end_time"] = None
        if end_time is not None and status is not RunStatus.RUNNING:
            values["end_time"] = int(end_time)
        if run_name is not None:
            self._check_run_name(run_name)
            values["name"] = run_name
        with self._db.transaction(write=True) as conn:
            row = self._require_run(conn, run_id, active=False)
            if values:
                conn.execute(runs.update().where(runs.c.run_uuid == run_id).values(values))
            if run_name is not None:
                name_tag = {"run_uuid": run_id, "key": system_tags.RUN_NAME, "value": run_name}
                self._upsert(conn, tags, ("run_uuid", "key"), [name_tag])
        info = _run_info(row)
        info.status = RunStatus(values.get("status", info.status))
        info.end_time = values.get("end_time", info.end_time)
        info.run_name = values.get("name", info.run_name)
        return info

    def _set_lifecycle(self, run_id: str, stage: str, deleted_time: int | None) -> None:
        with self._db.transaction(write=True) as conn:
            updated = conn.execute(
                runs.update().where(runs.c.run_uuid == run_id).values(lifecycle_stage=stage, deleted_time=deleted_time)
            )
            if updated.rowcount == 0:
                raise RunNotFound(f"no run with id {run_id!r}")

    def delete_run(self, run_id: str) -> None:
        self._set_lifecycle(run_id, _DELETED, now_ms())

    def restore_run(self, run_id: str) -> None:
        self._set_lifecycle(run_id, _ACTIVE, None)

    def purge_run(self, run_id: str) -> None:
        with self._db.transaction(write=True) as conn:
            # locked first: a write that share-locked the run commits its points before they are deleted
            row = conn.execute(
                sa.select(runs.c.lifecycle_stage).where(runs.c.run_uuid == run_id).with_for_update()
            ).first()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            if row.lifecycle_stage != _DELETED:
                raise RunNotActive(f"run {run_id} is not deleted; only deleted runs can be purged (delete it first)")
            conn.execute(metrics.delete().where(metrics.c.run_uuid == run_id))  # no foreign key (revision 0006)
            conn.execute(runs.delete().where(runs.c.run_uuid == run_id))  # other children go by ON DELETE CASCADE

    def deleted_run_ids(self, older_than: int | None = None) -> list[str]:
        query = sa.select(runs.c.run_uuid).where(runs.c.lifecycle_stage == _DELETED)
        if older_than is not None:
            query = query.where(runs.c.deleted_time < older_than)
        with self._db.transaction() as conn:
            return list(conn.scalars(query.order_by(runs.c.deleted_time, runs.c.run_uuid)))

    # -- run data ------------------------------------------------------------------------------

    @staticmethod
    def _tags(items: Iterable[RunTag]) -> list[RunTag]:
        return [
            RunTag(validation.validate_key(tag.key, "tag"), validation.tag_value(tag.value, tag.key)) for tag in items
        ]

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> None:
        self._check_key(idempotency_key, fingerprint)
        points = [self._metric_point(run_id, m) for m in metrics]
        new_params: dict[str, str] = {}
        for param in params:
            key = validation.validate_key(param.key, "param")
            value = validation.param_value(param.value, key)
            if new_params.setdefault(key, value) != value:
                raise ParamConflict(
                    f"param {key!r} of run {run_id} is given twice in one batch: {new_params[key]!r} and {value!r}"
                )
        tag_list = self._tags(tags)
        run_name = next((t.value for t in reversed(tag_list) if t.key == system_tags.RUN_NAME), None)
        if run_name is not None:
            self._check_run_name(run_name)
        conflict = f"a param of run {run_id} was logged at the same moment by another writer; log the batch again"
        for attempt in range(2):
            try:
                with self._db.transaction(write=True, conflict=conflict) as conn:
                    if run_name is not None:  # the run row is updated below
                        self._require_run(conn, run_id, active=False, exclusive=True)
                    if idempotency_key is None:
                        self._require_run(conn, run_id, active=True, lock=True)
                    elif self._replayed(conn, idempotency_key, fingerprint, run_id):
                        return
                    if new_params:
                        self._insert_params(conn, run_id, new_params)
                    if tag_list:
                        rows = {t.key: {"run_uuid": run_id, "key": t.key, "value": t.value} for t in tag_list}
                        self._upsert(conn, schema.tags, ("run_uuid", "key"), list(rows.values()))
                        if run_name is not None:
                            conn.execute(runs.update().where(runs.c.run_uuid == run_id).values(name=run_name))
                    if points:
                        points_sql.write_points(conn, self.dialect, self._latest_upsert, points)
                return
            except ResourceAlreadyExists:
                # With a key: another process may have inserted the same key concurrently and committed
                # (PostgreSQL makes this transaction wait for it, then fails it); looking again finds it.
                if idempotency_key is None or attempt:
                    raise

    def log_metric_batches(self, batches: Sequence[KeyedMetrics]) -> None:
        """Several metric-only log-batch requests in one transaction (one commit): what ``log_batch`` of each
        would store, each key recorded with its batch. Any refused batch (unknown or deleted run, a key reused
        with another fingerprint, a bad value) fails the whole transaction: nothing is written, and the
        caller writes them one by one to see which one it was."""
        for batch in batches:
            self._check_key(batch.idempotency_key, batch.fingerprint)
        checked = [(batch, [self._metric_point(batch.run_id, m) for m in batch.metrics]) for batch in batches]
        with self._db.transaction(write=True) as conn:
            points: list[MetricPoint] = []
            unkeyed_runs: list[str] = []
            for batch, batch_points in checked:
                if batch.idempotency_key is None:
                    unkeyed_runs.append(batch.run_id)
                elif self._replayed(conn, batch.idempotency_key, batch.fingerprint, batch.run_id):
                    continue
                points.extend(batch_points)
            if unkeyed_runs:
                self._check_runs_active(conn, unkeyed_runs)
            if points:
                points_sql.write_points(conn, self.dialect, self._latest_upsert, points)

    @staticmethod
    def _check_key(idempotency_key: str | None, fingerprint: str) -> None:
        if idempotency_key is not None:
            if not 0 < len(idempotency_key) <= _MAX_IDEMPOTENCY_KEY:
                raise InvalidArgument(f"an idempotency key must have 1 to {_MAX_IDEMPOTENCY_KEY} characters")
            if len(fingerprint) > _MAX_FINGERPRINT:
                raise InvalidArgument(f"a request fingerprint must have at most {_MAX_FINGERPRINT} characters")

    @staticmethod
    def _metric_point(run_id: str, metric: Metric) -> MetricPoint:
        return MetricPoint(
            run_id,
            validation.validate_key(metric.key, "metric"),
            validation.metric_value(metric.value, metric.key),
            validation.metric_timestamp(metric.timestamp, metric.key),
            validation.metric_step(metric.step, metric.key),
        )

    def _replayed(self, conn: sa.Connection, key: str, fingerprint: str, run_id: str) -> bool:
        """Whether ``key`` was already used (its batch is stored); records it otherwise, in ``conn``'s
        transaction, so the key and the batch commit together. Keys past the TTL are pruned first.

        The common case (a new key for an active run) is one statement: the key is inserted only if the run
        is active and the key unused. When no row comes back, the slower path says which it was.
        """
        keys = schema.idempotency_keys
        now = now_ms()
        prune = keys.delete().where(keys.c.created_time < now - IDEMPOTENCY_KEY_TTL_MS)
        row = (
            sa.select(sa.literal(key), sa.literal(fingerprint), sa.literal(now))
            .where(runs.c.run_uuid == run_id, runs.c.lifecycle_stage == _ACTIVE)
            .with_for_update(read=True)  # the run stays until this transaction's points are committed
        )
        insert = (
            self._insert(keys)
            .from_select(["key", "fingerprint", "created_time"], row)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(keys.c.key)
        )
        if self.dialect == "postgresql":
            insert = insert.add_cte(prune.cte("pruned"))  # the same round trip
        else:
            conn.execute(prune)
        if conn.execute(insert).first() is not None:
            return False
        found = conn.execute(sa.select(keys.c.fingerprint).where(keys.c.key == key)).scalar_one_or_none()
        if found is not None:
            if found != fingerprint:
                raise InvalidArgument(
                    f"idempotency key {key!r} was already used for a different request; "
                    "a retry must repeat the request unchanged, a new request needs a new key"
                )
            return True
        self._require_run(conn, run_id, active=True, lock=True)  # raises: the run is unknown or deleted
        conn.execute(keys.insert().values(key=key, fingerprint=fingerprint, created_time=now))  # pruned meanwhile
        return False

    def _insert_params(self, conn: sa.Connection, run_id: str, new_params: dict[str, str]) -> None:
        existing: dict[str, str] = {}
        for chunk in _chunks(list(new_params)):
            query = sa.select(params.c.key, params.c.value).where(params.c.run_uuid == run_id, params.c.key.in_(chunk))
            existing.update((key, value) for key, value in conn.execute(query))
        for key, value in new_params.items():
            if key in existing and existing[key] != value:
                raise ParamConflict(
                    f"param {key!r} of run {run_id} was already logged with value {existing[key]!r}; "
                    f"cannot change it to {value!r} (params are immutable: log a new key or start a new run)"
                )
        rows = [{"run_uuid": run_id, "key": k, "value": v} for k, v in new_params.items() if k not in existing]
        if rows:
            conn.execute(params.insert(), rows)

    def log_metric_points(self, points: Sequence[MetricPoint]) -> None:
        if not points:
            return
        with self._db.transaction(write=True) as conn:
            self._check_runs_active(conn, [point.run_id for point in points])
            points_sql.write_points(conn, self.dialect, self._latest_upsert, points)

    def _check_runs_active(self, conn: sa.Connection, run_ids_of_points: Sequence[str]) -> None:
        run_ids = list(dict.fromkeys(run_ids_of_points))
        stages: dict[str, str] = {}
        for chunk in _chunks(run_ids):
            query = (
                sa.select(runs.c.run_uuid, runs.c.lifecycle_stage)
                .where(runs.c.run_uuid.in_(chunk))
                .order_by(runs.c.run_uuid)  # locks taken in one order
                .with_for_update(read=True)
            )
            stages.update((run_id, stage) for run_id, stage in conn.execute(query))
        for run_id in run_ids:
            stage = stages.get(run_id)
            if stage is None:
                raise RunNotFound(f"cannot log metrics: no run with id {run_id!r}; nothing of this batch was written")
            if stage != _ACTIVE:
                raise RunNotActive(f"cannot log metrics: run {run_id} is deleted; nothing of this batch was written")

    def _upsert(self, conn: sa.Connection, table: sa.Table, keys: Sequence[str], rows: list[dict[str, Any]]) -> None:
        insert = self._insert(table)
        update = {column: insert.excluded[column] for column in rows[0] if column not in keys}
        conn.execute(insert.on_conflict_do_update(index_elements=list(keys), set_=update), rows)

    def delete_tag(self, run_id: str, key: str) -> None:
        validation.storable_text(key, f"tag key {key!r}")
        with self._db.transaction(write=True) as conn:
            self._require_run(conn, run_id, active=True)
            deleted = conn.execute(tags.delete().where(tags.c.run_uuid == run_id, tags.c.key == key))
            if deleted.rowcount == 0:
                raise NotFound(f"run {run_id} has no tag {key!r}")

    def get_metric_history(self, run_id: str, key: str, *, include_superseded: bool = False) -> list[Metric]:
        query = (
            sa.select(metrics.c.value, metrics.c.is_nan, metrics.c.timestamp, metrics.c.step)
            .where(metrics.c.run_uuid == run_id, metrics.c.key == key)
            .order_by(metrics.c.step, metrics.c.timestamp, metrics.c.id)
        )
        if not include_superseded:
            query = query.where(metrics.c.superseded == sa.false())
        with self._db.transaction() as conn:
            self._require_run(conn, run_id, active=False)
            rows = conn.execute(query).all()
        return [
            Metric(key, points_sql.loaded_value(value, is_nan), timestamp, step)
            for value, is_nan, timestamp, step in rows
        ]

    def supersede_metrics_after(self, run_id: str, step: int) -> int:
        with self._db.transaction(write=True) as conn:
            self._require_run(conn, run_id, active=True)
            marked = conn.execute(
                metrics.update()
                .where(metrics.c.run_uuid == run_id, metrics.c.step > step, metrics.c.superseded == sa.false())
                .values(superseded=True)
            ).rowcount
            if marked:
                points_sql.rebuild_latest(conn, run_id)
        return int(marked or 0)

    def fork_run(self, run_id: str, up_to_step: int, *, run_name: str | None = None, start_time: int) -> Run:
        source = self.get_run(run_id)
        name = run_name or f"{source.info.run_name}-fork-{up_to_step}"[: validation.MAX_RUN_NAME_LENGTH]
        carried = [RunTag(k, v) for k, v in source.data.tags.items() if k != system_tags.RUN_NAME]
        carried += [RunTag(system_tags.FORKED_FROM, run_id), RunTag(system_tags.FORKED_AT_STEP, str(up_to_step))]
        fork = self.create_run(
            source.info.experiment_id, user_id=source.info.user_id, start_time=start_time, run_name=name, tags=carried
        )
        new_id = fork.info.run_id
        with self._db.transaction(write=True) as conn:
            self._require_run(conn, new_id, active=False, lock=True)
            if source.data.params:
                conn.execute(
                    params.insert(), [{"run_uuid": new_id, "key": k, "value": v} for k, v in source.data.params.items()]
                )
            copied = sa.select(
                sa.literal(new_id),
                metrics.c.key,
                metrics.c.value,
                metrics.c.is_nan,
                metrics.c.step,
                metrics.c.timestamp,
                sa.false(),
            ).where(metrics.c.run_uuid == run_id, metrics.c.step <= up_to_step, metrics.c.superseded == sa.false())
            conn.execute(
                metrics.insert().from_select(
                    ["run_uuid", "key", "value", "is_nan", "step", "timestamp", "superseded"], copied
                )
            )
            points_sql.rebuild_latest(conn, new_id)
        return self.get_run(new_id)

    # -- copying runs between stores -----------------------------------------------------------

    def metric_point_counts(self, run_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int]]]:
        found: dict[str, dict[str, tuple[int, int]]] = {}
        superseded = sa.func.sum(sa.case((metrics.c.superseded == sa.true(), 1), else_=0))
        with self._db.transaction() as conn:
            for chunk in _chunks(list(dict.fromkeys(run_ids))):
                query = (
                    sa.select(metrics.c.run_uuid, metrics.c.key, sa.func.count(), superseded)
                    .where(metrics.c.run_uuid.in_(chunk))
                    .group_by(metrics.c.run_uuid, metrics.c.key)
                )
                for run_id, key, total, flagged in conn.execute(query):
                    found.setdefault(run_id, {})[key] = (int(total), int(flagged or 0))
        return found

    def get_metric_points(self, run_id: str, keys: Sequence[str] | None = None) -> list[StoredMetricPoint]:
        query = (
            sa.select(metrics.c.key, metrics.c.value, metrics.c.is_nan, metrics.c.timestamp, metrics.c.step)
            .add_columns(metrics.c.superseded)
            .where(metrics.c.run_uuid == run_id)
            .order_by(metrics.c.key, metrics.c.id)
        )
        found: list[StoredMetricPoint] = []
        with self._db.transaction() as conn:
            self._require_run(conn, run_id, active=False)
            key_lists: list[Sequence[str] | None] = [None] if keys is None else list(_chunks(sorted(set(keys))))
            for chunk in key_lists:
                chunk_query = query if chunk is None else query.where(metrics.c.key.in_(chunk))
                found.extend(
                    StoredMetricPoint(
                        key, math.nan if is_nan or value is None else value, timestamp, step, bool(superseded)
                    )
                    for key, value, is_nan, timestamp, step, superseded in conn.execute(chunk_query).all()
                )
        return found

    def import_run_data(
        self,
        run_id: str,
        *,
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
        points: Sequence[StoredMetricPoint] = (),
        supersede: Sequence[tuple[StoredMetricPoint, int]] = (),
    ) -> None:
        new_params: dict[str, str] = {}
        for param in params:
            key = validation.validate_key(param.key, "param")
            value = validation.param_value(param.value, key)
            if new_params.setdefault(key, value) != value:
                raise ParamConflict(
                    f"param {key!r} of run {run_id} is given twice in one batch: {new_params[key]!r} and {value!r}"
                )
        tag_list = self._tags(tags)
        run_name = next((t.value for t in reversed(tag_list) if t.key == system_tags.RUN_NAME), None)
        if run_name is not None:
            self._check_run_name(run_name)
        for key in {p.key for p in points}:
            validation.validate_key(key, "metric")
        rows = [
            (
                run_id,
                p.key,
                None if p.value != p.value else float(p.value),  # NaN is stored as NULL + is_nan
                p.value != p.value,
                validation.metric_step(p.step, p.key),
                validation.metric_timestamp(p.timestamp, p.key),
                bool(p.superseded),
            )
            for p in points
        ]
        conflict = f"a param of run {run_id} was written at the same moment by another writer; copy the run again"
        with self._db.transaction(write=True, conflict=conflict) as conn:
            self._require_run(conn, run_id, active=False, lock=True, exclusive=run_name is not None)
            if new_params:
                self._insert_params(conn, run_id, new_params)
            if tag_list:
                tag_rows = {t.key: {"run_uuid": run_id, "key": t.key, "value": t.value} for t in tag_list}
                self._upsert(conn, schema.tags, ("run_uuid", "key"), list(tag_rows.values()))
                if run_name is not None:
                    conn.execute(runs.update().where(runs.c.run_uuid == run_id).values(name=run_name))
            flagged = sum(points_sql.supersede_equal(conn, run_id, point, count) for point, count in supersede)
            if rows:
                points_sql.insert_copied_points(conn, self.dialect, rows)
            if flagged:
                points_sql.rebuild_latest(conn, run_id)
            elif rows:
                points_sql.advance_latest(conn, self._latest_upsert, run_id, [p for p in points if not p.superseded])

    # -- search --------------------------------------------------------------------------------

    # -- resume leases -------------------------------------------------------------------------

    def acquire_run_lease(self, run_id: str, owner: str, ttl_seconds: float) -> bool:
        owner, ttl = leases_sql.check_owner(owner), leases_sql.ttl_ms(ttl_seconds)
        with self._db.transaction(write=True) as conn:
            self._require_run(conn, run_id, active=True)
            return leases_sql.acquire(conn, self._insert, run_id, owner, now_ms(), ttl)

    def renew_run_lease(self, run_id: str, owner: str, ttl_seconds: float) -> bool:
        ttl = leases_sql.ttl_ms(ttl_seconds)
        with self._db.transaction(write=True) as conn:
            return leases_sql.renew(conn, run_id, owner, now_ms(), ttl)

    def release_run_lease(self, run_id: str, owner: str) -> None:
        with self._db.transaction(write=True) as conn:
            leases_sql.release(conn, run_id, owner)

    def get_run_lease(self, run_id: str) -> RunLease | None:
        with self._db.transaction() as conn:
            return leases_sql.get(conn, run_id)

    def search_runs(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        run_view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Run]:
        from cairn.tracking.search_filter import parse_filter, parse_order_by

        search.check_max_results(max_results)
        offset = search.decode_page_token(page_token)
        conditions = [search.filter_clause(c, self.dialect) for c in parse_filter(filter_string)]
        source, ordering = search.order_clauses(parse_order_by(order_by))
        if isinstance(experiment_ids, str):
            experiment_ids = [experiment_ids]
        pks = [int(e) for e in map(str, experiment_ids) if e.strip().isdecimal() and int(e) <= _MAX_INT32]
        if not pks:
            return PagedList([])
        query = (
            sa.select(*_RUN_COLUMNS)
            .select_from(source)
            .where(
                runs.c.experiment_id.in_(pks),
                runs.c.lifecycle_stage.in_([stage.value for stage in run_view_type.stages()]),
                *conditions,
            )
            .order_by(*ordering)
            .limit(max_results + 1)
            .offset(offset)
        )
        with self._db.transaction() as conn:
            rows = conn.execute(query).all()
            page = rows[:max_results]
            data = self._run_data(conn, [row.run_uuid for row in page])
        found = [Run(info=_run_info(row), data=data[row.run_uuid]) for row in page]
        token = search.encode_page_token(offset + max_results) if len(rows) > max_results else None
        return PagedList(found, token)
