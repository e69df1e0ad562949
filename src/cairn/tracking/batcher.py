"""Background metric writer: the caller's thread only appends to a queue.

Points are written in batches by one daemon thread per store. ``flush()`` writes everything queued
before the call on the calling thread and raises the first error the writer met since the last
flush, so nothing fails silently: ``end_run`` flushes, and so do process exit and SIGTERM.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from cairn.errors import CairnError, NotFound, RunNotActive, StoreError, StoreLocked
from cairn.store.base import MetricPoint, TrackingStore

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.25
WAKE_AT = 10_000  # queued points that wake the writer before its interval
MAX_BATCH = 50_000
MAX_QUEUED = 2_000_000  # above this the caller writes synchronously (back-pressure, bounded memory)
RETRY_BACKOFF_S = (0.05, 0.2, 1.0)


class MetricBatcher:
    """Queue of metric points for one store, drained by a daemon thread."""

    def __init__(self, store: TrackingStore, *, flush_interval: float = FLUSH_INTERVAL_S) -> None:
        self._store = store
        self._queue: deque[MetricPoint] = deque()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._errors: list[CairnError] = []
        self._retry: list[MetricPoint] = []
        self._interval = flush_interval
        self._thread = threading.Thread(target=self._loop, name="cairn-metric-writer", daemon=True)
        self._thread.start()

    def add(self, point: MetricPoint) -> None:
        """Queue one point. Cost on the caller: an append, no I/O."""
        queue = self._queue
        queue.append(point)
        if len(queue) >= WAKE_AT:
            self._queue_is_long()

    def add_many(self, points: list[MetricPoint]) -> None:
        """Queue several points at once (what :meth:`add` does, for each of them)."""
        queue = self._queue
        queue.extend(points)
        if len(queue) >= WAKE_AT:
            self._queue_is_long()

    def _queue_is_long(self) -> None:
        """Wake the writer before its interval; past ``MAX_QUEUED``, write on the caller's thread."""
        if not self._wake.is_set():
            self._wake.set()
            if len(self._queue) >= MAX_QUEUED:
                self.flush(raise_errors=False)

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._retry)

    def flush(self, *, raise_errors: bool = True) -> None:
        """Write every point queued before this call; re-raise the writer's first error."""
        with self._write_lock:
            self._drain_and_write(retry_forever=True)
        if raise_errors and self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]

    def close(self) -> None:
        """Flush and stop the writer thread (errors are logged, not raised)."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        try:
            self.flush(raise_errors=False)
        finally:
            for error in self._errors:
                logger.error("cairn: metric points were not written: %s", error)
            self._errors.clear()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._queue or self._retry:
                with self._write_lock:
                    self._drain_and_write(retry_forever=False)

    def _drain_and_write(self, *, retry_forever: bool) -> None:
        while self._queue or self._retry:
            batch, self._retry = self._retry, []
            popleft = self._queue.popleft
            try:
                while len(batch) < MAX_BATCH:
                    batch.append(popleft())
            except IndexError:
                pass
            if not self._write(batch, retry_forever=retry_forever):
                return

    def _write(self, batch: list[MetricPoint], *, retry_forever: bool) -> bool:
        """Write one batch; False when it was set aside for the writer thread to retry later."""
        attempts = 0
        while True:
            try:
                self._store.log_metric_points(batch)
                return True
            except (RunNotActive, NotFound):
                self._write_run_by_run(batch)
                return True
            except StoreLocked as exc:
                attempts += 1
                if not retry_forever and attempts > len(RETRY_BACKOFF_S):
                    logger.warning("cairn: store busy, %d metric points will be retried: %s", len(batch), exc)
                    self._retry = batch
                    return False
                if retry_forever and attempts > len(RETRY_BACKOFF_S):
                    return self._give_up(batch, exc)
                time.sleep(RETRY_BACKOFF_S[attempts - 1])
            except CairnError as exc:
                return self._give_up(batch, exc)
            except Exception as exc:  # a bug must not kill the writer thread and lose later points
                return self._give_up(batch, StoreError(f"{type(exc).__name__}: {exc}"))

    def _write_run_by_run(self, batch: list[MetricPoint]) -> None:
        """Keep the points of healthy runs when one run of the batch was deleted or is unknown."""
        by_run: dict[str, list[MetricPoint]] = {}
        for point in batch:
            by_run.setdefault(point.run_id, []).append(point)
        for points in by_run.values():
            try:
                self._store.log_metric_points(points)
            except CairnError as exc:
                self._give_up(points, exc)

    def _give_up(self, batch: list[MetricPoint], exc: CairnError) -> bool:
        logger.warning("cairn: dropping %d metric points: %s", len(batch), exc)
        self._errors.append(exc)
        return True
