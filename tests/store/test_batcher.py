"""The metric batcher queues points on the caller's thread and its writer thread stores them, on both backends."""

from __future__ import annotations

import time

from cairn.store._sql.store import SqlTrackingStore
from cairn.store.base import MetricPoint
from cairn.tracking import batcher as batcher_module
from cairn.tracking.batcher import MetricBatcher


def _run(store: SqlTrackingStore) -> str:
    return store.create_run("0", user_id="u", start_time=0, tags=[], run_name="r").info.run_id


def test_add_many_queues_in_order_and_flush_writes_them(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    batcher = MetricBatcher(store, flush_interval=3600)  # only flush() writes
    try:
        batcher.add(MetricPoint(run_id, "loss", 0.5, 1000, 0))
        batcher.add_many([MetricPoint(run_id, "loss", i / 10, 1000 + i, i) for i in range(1, 6)])
        assert batcher.pending == 6
        assert store.get_metric_history(run_id, "loss") == []
        batcher.flush()
        assert batcher.pending == 0
        history = store.get_metric_history(run_id, "loss")
        assert [(m.step, m.value) for m in history] == [(0, 0.5)] + [(i, i / 10) for i in range(1, 6)]
    finally:
        batcher.close()


def test_a_large_add_many_wakes_the_writer_before_its_interval(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    count = batcher_module.WAKE_AT + 10
    batcher = MetricBatcher(store, flush_interval=3600)
    try:
        batcher.add_many([MetricPoint(run_id, "acc", 1.0, 1000 + i, i) for i in range(count)])
        deadline = time.monotonic() + 30
        stored = 0
        while stored < count and time.monotonic() < deadline:  # no flush: only the woken writer can store them
            time.sleep(0.01)
            stored = store.metric_point_counts([run_id]).get(run_id, {}).get("acc", (0, 0))[0]
        assert stored == count
    finally:
        batcher.close()
