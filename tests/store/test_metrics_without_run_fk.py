"""Metric points have no foreign key to ``runs`` (revision 0006), on SQLite and PostgreSQL: no write path
stores a point of an unknown or deleted run, a write's run cannot be deleted (so neither purged) before the
write commits, and an upgrade from 0005 keeps the points and drops the key."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from cairn.errors import RunNotActive, RunNotFound
from cairn.store._sql import SqlTrackingStore, current_revision, upgrade_schema
from cairn.store._sql import migrate as migrate_module
from cairn.store.base import MetricPoint, StoredMetricPoint
from cairn.tracking.entities import Metric, RunTag
from cairn.tracking.system_tags import RUN_NAME
from tests.conftest import driver_url
from tests.store.old_revisions import OLD_RUN_ID, database_at

UNKNOWN = "0" * 32


def _run(store: SqlTrackingStore) -> str:
    return store.create_run("0", user_id="alice", start_time=1000, run_name="r").info.run_id


def _points(store: SqlTrackingStore, run_id: str) -> int:
    with store._db.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM metrics WHERE run_uuid = :r"), {"r": run_id}).scalar())


@pytest.mark.parametrize("stage", ["unknown", "deleted"])
def test_no_write_path_stores_points_of_a_run_that_is_not_active(store: SqlTrackingStore, stage: str) -> None:
    run_id = UNKNOWN
    if stage == "deleted":
        run_id = _run(store)
        store.delete_run(run_id)
    metric = [Metric("m", 1.0, 1, 0)]
    writes = [
        lambda: store.log_batch(run_id, metric),
        lambda: store.log_batch(run_id, metric, idempotency_key="k", fingerprint="f"),
        lambda: store.log_metric_points([MetricPoint(run_id, "m", 1.0, 1, 0)]),
    ]
    for write in writes:
        with pytest.raises((RunNotFound, RunNotActive)):
            write()
    if stage == "unknown":
        with pytest.raises(RunNotFound):
            store.import_run_data(run_id, points=[StoredMetricPoint("m", 1.0, 1, 0, False)])
    assert _points(store, run_id) == 0


def test_a_run_is_not_deleted_while_a_write_to_it_is_open(store: SqlTrackingStore) -> None:
    """The write's transaction holds the run (PostgreSQL: a share lock; SQLite: the write lock), so deleting it
    waits until the points are committed, and a purge after that removes them."""
    run_id = _run(store)
    deleted = threading.Event()
    with store._db.transaction(write=True) as conn:
        store._require_run(conn, run_id, active=True, lock=True)
        deleter = threading.Thread(target=lambda: (store.delete_run(run_id), deleted.set()))
        deleter.start()
        time.sleep(0.5)
        assert not deleted.is_set()
        conn.execute(
            sa.text(
                "INSERT INTO metrics (run_uuid, key, value, is_nan, step, timestamp, superseded) "
                "VALUES (:r, 'm', 1.0, false, 0, 1, false)"
            ),
            {"r": run_id},
        )
    deleter.join(30)
    assert deleted.is_set()
    assert _points(store, run_id) == 1
    store.purge_run(run_id)
    assert _points(store, run_id) == 0


def test_upgrade_from_0005_keeps_the_points_and_drops_the_foreign_key(empty_db_url: str, artifact_root: str) -> None:
    database_at(empty_db_url, artifact_root, "0005")
    engine = sa.create_engine(driver_url(empty_db_url))
    try:
        with engine.begin() as conn:
            for step in range(3):
                conn.execute(
                    sa.text(
                        "INSERT INTO metrics (run_uuid, key, value, is_nan, step, timestamp, superseded) "
                        "VALUES (:r, 'loss', :v, false, :s, 5, false)"
                    ),
                    {"r": OLD_RUN_ID, "v": 0.5 + step, "s": step},
                )
    finally:
        engine.dispose()
    assert upgrade_schema(empty_db_url) == ("0005", migrate_module.HEAD_REVISION)
    assert current_revision(empty_db_url) == migrate_module.HEAD_REVISION
    store = SqlTrackingStore(empty_db_url, artifact_root)
    try:
        with store._db.engine.connect() as conn:
            assert sa.inspect(conn).get_foreign_keys("metrics") == []
            assert "ix_metrics_run_uuid_key_step" in {i["name"] for i in sa.inspect(conn).get_indexes("metrics")}
        assert [(m.step, m.value) for m in store.get_metric_history(OLD_RUN_ID, "loss")] == [
            (0, 0.5),
            (1, 1.5),
            (2, 2.5),
        ]
        store.log_batch(OLD_RUN_ID, [Metric("loss", 9.0, 6, 3)])
        store.delete_run(OLD_RUN_ID)
        store.purge_run(OLD_RUN_ID)
        assert _points(store, OLD_RUN_ID) == 0
    finally:
        store.close()


def test_concurrent_batches_renaming_one_run_do_not_deadlock(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    errors: list[BaseException] = []

    def rename(name: str) -> None:
        try:
            for step in range(15):
                store.log_batch(run_id, [Metric("m", 1.0, 1, step)], tags=[RunTag(RUN_NAME, f"{name}{step}")])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rename, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert _points(store, run_id) == 45
