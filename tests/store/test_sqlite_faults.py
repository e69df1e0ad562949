"""SQLite under stress: several processes, a killed writer, a held lock, raw storage of NaN/inf."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cairn.errors import InvalidArgument, StoreLocked
from cairn.store._sql import SqlTrackingStore
from cairn.store.base import MetricPoint
from cairn.tracking.entities import Metric, Param

WORKERS, BATCHES, BATCH_SIZE = 4, 30, 200


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "cairn.db"


@pytest.fixture
def sqlite_store(db_file: Path, tmp_path: Path) -> Iterator[SqlTrackingStore]:
    store = SqlTrackingStore(f"sqlite:///{db_file}", str(tmp_path / "artifacts"))
    yield store
    store.close()


def _new_run(store: SqlTrackingStore) -> str:
    return store.create_run("0", user_id="u", start_time=0, run_name="r").info.run_id


def test_connection_setup(sqlite_store: SqlTrackingStore, db_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert db_file.is_file()  # parent folders were created
    with sqlite_store._db.engine.connect() as conn:
        pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in ("journal_mode", "foreign_keys")}
        pragma["synchronous"] = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        pragma["busy_timeout"] = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "synchronous": 1, "busy_timeout": 30_000}
    monkeypatch.setenv("CAIRN_SQLITE_BUSY_TIMEOUT", "2.5")
    other = SqlTrackingStore(f"sqlite:///{db_file}", "/tmp/unused")
    with other._db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
    other.close()
    monkeypatch.setenv("CAIRN_SQLITE_BUSY_TIMEOUT", "soon")
    with pytest.raises(InvalidArgument, match="CAIRN_SQLITE_BUSY_TIMEOUT"):
        SqlTrackingStore(f"sqlite:///{db_file}", "/tmp/unused")


def test_nan_and_inf_are_stored_faithfully(sqlite_store: SqlTrackingStore, db_file: Path) -> None:
    run_id = _new_run(sqlite_store)
    sqlite_store.log_batch(
        run_id, metrics=[Metric("m", v, 1, i) for i, v in enumerate([math.nan, math.inf, -math.inf])]
    )
    with sqlite3.connect(db_file) as conn:
        rows = conn.execute("SELECT value, is_nan FROM metrics WHERE run_uuid = ? ORDER BY step", (run_id,)).fetchall()
        latest = conn.execute("SELECT value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,)).fetchone()
    assert rows == [(None, 1), (math.inf, 0), (-math.inf, 0)]
    assert latest == (-math.inf, 0)


def _log_from_process(db_url: str, run_id: str, worker: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    store = SqlTrackingStore(db_url, "/tmp/unused")
    barrier.wait(timeout=30)
    for batch in range(BATCHES):
        first_step = batch * BATCH_SIZE
        points = [MetricPoint(run_id, f"k{worker}", float(i), batch, first_step + i) for i in range(BATCH_SIZE)]
        shared = (worker * BATCHES + batch) * BATCH_SIZE
        points += [MetricPoint(run_id, "shared", float(shared + i), batch, shared + i) for i in range(BATCH_SIZE)]
        store.log_metric_points(points)
        store.log_batch(run_id, params=[Param(f"w{worker}b{batch}", "1")])
    store.close()


def test_four_processes_log_into_one_file_without_losing_points(sqlite_store: SqlTrackingStore, db_file: Path) -> None:
    run_id = _new_run(sqlite_store)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(WORKERS)
    processes = [
        context.Process(target=_log_from_process, args=(f"sqlite:///{db_file}", run_id, worker, barrier))
        for worker in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0] * WORKERS
    for worker in range(WORKERS):
        history = sqlite_store.get_metric_history(run_id, f"k{worker}")
        assert [point.step for point in history] == list(range(BATCHES * BATCH_SIZE))
    shared = sqlite_store.get_metric_history(run_id, "shared")
    assert [point.step for point in shared] == list(range(WORKERS * BATCHES * BATCH_SIZE))
    run = sqlite_store.get_run(run_id)
    assert run.data.metrics["shared"] == WORKERS * BATCHES * BATCH_SIZE - 1
    assert len(run.data.params) == WORKERS * BATCHES


_KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from cairn.store._sql import SqlTrackingStore
    from cairn.store.base import MetricPoint

    store = SqlTrackingStore(sys.argv[1], "/tmp/unused")
    run_id, size, step = sys.argv[2], int(sys.argv[3]), 0
    while True:
        store.log_metric_points([MetricPoint(run_id, "loss", float(step + i), 0, step + i) for i in range(size)])
        step += size
        print(step, flush=True)  # committed
    """
)


def test_sigkill_mid_logging_keeps_every_committed_batch(sqlite_store: SqlTrackingStore, db_file: Path) -> None:
    run_id, size = _new_run(sqlite_store), 250
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, f"sqlite:///{db_file}", run_id, str(size)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    committed = 0
    deadline = time.monotonic() + 60
    while committed < 40 * size and time.monotonic() < deadline:
        line = child.stdout.readline()
        assert line, f"writer exited early with {child.wait()}"
        committed = int(line)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    child.stdout.close()
    assert committed >= 40 * size

    reopened = SqlTrackingStore(f"sqlite:///{db_file}", "/tmp/unused")
    history = reopened.get_metric_history(run_id, "loss")
    assert len(history) >= committed
    assert len(history) % size == 0  # whole batches only
    assert [point.step for point in history] == list(range(len(history)))
    assert reopened.get_run(run_id).data.metrics["loss"] == len(history) - 1
    with reopened._db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        assert conn.execute(sa.text("PRAGMA foreign_key_check")).all() == []
    reopened.close()


_LOCK_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
    conn.execute("ROLLBACK")
    """
)


def test_lock_held_by_another_process_raises_store_locked(
    db_file: Path, sqlite_store: SqlTrackingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _new_run(sqlite_store)
    monkeypatch.setenv("CAIRN_SQLITE_BUSY_TIMEOUT", "0.3")
    store = SqlTrackingStore(f"sqlite:///{db_file}", "/tmp/unused")
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(db_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(StoreLocked) as caught:
            store.log_batch(run_id, params=[Param("p", "1")])
        waited = time.monotonic() - started
        message = str(caught.value)
        assert str(db_file) in message and "another process" in message and "0.3 s" in message
        assert 0.25 <= waited < 10
        with pytest.raises(StoreLocked):
            store.log_metric_points([MetricPoint(run_id, "m", 1.0, 0, 0)])
        assert store.get_run(run_id).data.params == {}  # readers are not blocked (WAL)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()
    store.log_batch(run_id, params=[Param("p", "1")])  # lock released: writes work again
    assert store.get_run(run_id).data.params == {"p": "1"}
    store.close()


def test_forked_child_reconnects_instead_of_sharing_the_parents_connection(sqlite_store: SqlTrackingStore) -> None:
    run_id = _new_run(sqlite_store)
    sqlite_store.get_run(run_id)  # the pool now holds a connection opened by this process

    def child() -> None:
        opened: list[int] = []
        sa.event.listen(sqlite_store._db.engine, "connect", lambda *_: opened.append(os.getpid()))
        sqlite_store.log_metric_points([MetricPoint(run_id, "child", float(i), 0, i) for i in range(100)])
        sys.exit(0 if opened == [os.getpid()] else 3)  # 3: the child reused the parent's connection

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0
    sqlite_store.log_metric_points([MetricPoint(run_id, "parent", 1.0, 0, 0)])
    assert len(sqlite_store.get_metric_history(run_id, "child")) == 100
    assert sqlite_store.get_run(run_id).data.metrics == {"child": 99.0, "parent": 1.0}
