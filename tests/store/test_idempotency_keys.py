"""Idempotency keys in the SQL store (``TrackingStore.log_batch(..., idempotency_key=, fingerprint=)``), on
SQLite and PostgreSQL: a replay writes nothing, a reused key with another request is refused, concurrent
writers of one key (two stores, as two server processes) store the batch once, a failed batch leaves no
key, old keys are pruned; the 0003 -> 0004 upgrade."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from cairn.errors import InvalidArgument, RunNotFound
from cairn.store._sql import SqlTrackingStore, current_revision, upgrade_schema
from cairn.store._sql import migrate as migrate_module
from cairn.store._sql.store import IDEMPOTENCY_KEY_TTL_MS
from cairn.store._sql.util import now_ms
from cairn.tracking.entities import Metric, Param, RunTag
from tests.store.old_revisions import database_at


def _run(store: SqlTrackingStore) -> str:
    return store.create_run("0", user_id="alice", start_time=1000, run_name="r").info.run_id


def _keys(store: SqlTrackingStore) -> dict[str, str]:
    with store._db.engine.connect() as conn:
        return {k: f for k, f in conn.execute(sa.text("SELECT key, fingerprint FROM idempotency_keys"))}


def _batch(step0: int = 0) -> list[Metric]:
    return [Metric("loss", 0.5, 2000 + i, step0 + i) for i in range(10)]


def test_a_replayed_key_writes_nothing(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    store.log_batch(run_id, _batch(), [Param("lr", "0.1")], [RunTag("t", "a")], idempotency_key="k1", fingerprint="f")
    store.log_batch(run_id, tags=[RunTag("t", "b")])  # a later write the replay must not undo
    store.log_batch(run_id, _batch(), [Param("lr", "0.1")], [RunTag("t", "a")], idempotency_key="k1", fingerprint="f")
    assert [m.step for m in store.get_metric_history(run_id, "loss")] == list(range(10))
    assert store.get_run(run_id).data.tags["t"] == "b"
    assert _keys(store) == {"k1": "f"}
    # without a key (or with a new one) the same batch is written again: duplicate points are kept
    store.log_batch(run_id, _batch(), idempotency_key="k2", fingerprint="f")
    assert len(store.get_metric_history(run_id, "loss")) == 20


def test_a_key_reused_for_another_request_is_refused_and_writes_nothing(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    store.log_batch(run_id, _batch(), idempotency_key="k", fingerprint="first")
    with pytest.raises(InvalidArgument, match="already used for a different request"):
        store.log_batch(run_id, _batch(100), [Param("p", "1")], idempotency_key="k", fingerprint="second")
    assert len(store.get_metric_history(run_id, "loss")) == 10
    assert store.get_run(run_id).data.params == {}


def test_a_failed_batch_records_no_key(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    store.log_batch(run_id, params=[Param("p", "1")])
    with pytest.raises(InvalidArgument):  # ParamConflict: the batch is rejected, its key with it
        store.log_batch(run_id, _batch(), [Param("p", "2")], idempotency_key="k", fingerprint="f")
    with pytest.raises(RunNotFound):
        store.log_batch("f" * 32, _batch(), idempotency_key="k", fingerprint="f")
    assert _keys(store) == {}
    store.log_batch(run_id, _batch(), idempotency_key="k", fingerprint="f")  # the retry is written
    assert len(store.get_metric_history(run_id, "loss")) == 10


def test_key_and_fingerprint_lengths_are_checked(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    with pytest.raises(InvalidArgument, match="idempotency key"):
        store.log_batch(run_id, _batch(), idempotency_key="", fingerprint="f")
    with pytest.raises(InvalidArgument, match="idempotency key"):
        store.log_batch(run_id, _batch(), idempotency_key="k" * 257, fingerprint="f")
    with pytest.raises(InvalidArgument, match="fingerprint"):
        store.log_batch(run_id, _batch(), idempotency_key="k", fingerprint="f" * 129)
    store.log_batch(run_id, _batch(), idempotency_key="k" * 256, fingerprint="f" * 128)
    assert store.get_metric_history(run_id, "loss")[0].value == 0.5


def test_concurrent_writers_of_one_key_store_the_batch_once(store: SqlTrackingStore, artifact_root: str) -> None:
    """Two stores on one database (as two server processes), four threads each, all replaying one key."""
    run_id = _run(store)
    other = SqlTrackingStore(store.db_uri, artifact_root)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(target: SqlTrackingStore) -> None:
        try:
            barrier.wait(10)
            target.log_batch(run_id, _batch(), [Param("p", "1")], idempotency_key="shared", fingerprint="f")
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=write, args=(store if i % 2 else other,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        other.close()
    assert errors == []
    assert [m.step for m in store.get_metric_history(run_id, "loss")] == list(range(10))
    assert _keys(store) == {"shared": "f"}


def test_keys_older_than_the_ttl_are_pruned(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    store.log_batch(run_id, _batch(), idempotency_key="old", fingerprint="f")
    with store._db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE idempotency_keys SET created_time = :t"), {"t": now_ms() - IDEMPOTENCY_KEY_TTL_MS - 1}
        )
    store.log_batch(run_id, _batch(100), idempotency_key="new", fingerprint="g")
    assert _keys(store) == {"new": "g"}
    assert IDEMPOTENCY_KEY_TTL_MS >= 24 * 3600 * 1000


def test_upgrade_from_0003_adds_the_key_table(empty_db_url: str, artifact_root: str) -> None:
    database_at(empty_db_url, artifact_root, "0003", check_absent="idempotency_keys")
    assert upgrade_schema(empty_db_url) == ("0003", migrate_module.HEAD_REVISION)  # through 0004
    assert current_revision(empty_db_url) == migrate_module.HEAD_REVISION
    store = SqlTrackingStore(empty_db_url, artifact_root)
    try:
        store.log_batch("a" * 32, _batch(), idempotency_key="k", fingerprint="f")
        store.log_batch("a" * 32, _batch(), idempotency_key="k", fingerprint="f")
        assert len(store.get_metric_history("a" * 32, "loss")) == 10
    finally:
        store.close()
