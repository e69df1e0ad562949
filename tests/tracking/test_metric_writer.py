"""The metric writer's wake-ups: one batch of what was queued when it woke, not a stream of small ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from cairn.store.base import MetricPoint
from cairn.tracking import config
from cairn.tracking.batcher import MetricBatcher
from cairn.tracking.fluent import start_run


class _RecordingStore:
    """Writes into the real store; the first write queues more points, as a training thread would meanwhile."""

    def __init__(self, batcher_box: list[MetricBatcher], run_id: str) -> None:
        self.store = config.get_store()
        self.batches: list[int] = []
        self.first_write_done = threading.Event()
        self._box = batcher_box
        self._run_id = run_id

    def log_metric_points(self, points: Sequence[MetricPoint]) -> None:
        if not self.batches:
            self._box[0].add_many([MetricPoint(self._run_id, "loss", 1.0, 0, 100 + i) for i in range(5)])
        self.store.log_metric_points(points)
        self.batches.append(len(points))
        self.first_write_done.set()


def test_a_wake_up_writes_what_was_queued_when_the_writer_woke() -> None:
    run_id = start_run().info.run_id
    box: list[MetricBatcher] = []
    store = _RecordingStore(box, run_id)
    batcher = MetricBatcher(store, flush_interval=3600, wake_at=10)  # type: ignore[arg-type]
    box.append(batcher)
    try:
        batcher.add_many([MetricPoint(run_id, "loss", 0.5, 0, i) for i in range(10)])  # wakes the writer
        assert store.first_write_done.wait(30)
        time.sleep(0.3)  # time for a second write, if the writer were to go on
        assert store.batches == [10]  # the 5 points queued during the write wait for the next wake-up
        assert batcher.pending == 5
        batcher.flush()
        assert store.batches == [10, 5] and batcher.pending == 0
    finally:
        batcher.close()
