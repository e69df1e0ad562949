"""Background metric writer: the caller's thread only appends to a queue.

Points are written in batches by one daemon thread per store, a worker of :mod:`cairn.background`
(drained after checkpoint writes, before uploads and fsync). The writer wakes every ``flush_interval``
seconds or when ``wake_at`` points are queued, and writes up to ``max_batch`` points per transaction
(``benchmarks/README.md`` explains the defaults). ``flush()`` writes everything queued before the call
on the calling thread and raises the first error the writer met since then; the same error is raised
by the next logging call (whichever comes first, once), so nothing fails silently: ``end_run`` drains
the writer, and so do process exit and SIGTERM.

One bad point never costs the others: when a batch fails, the points of deleted or unknown runs are
dropped run by run, points no database can hold (see :func:`cairn.tracking.validation.point_problem`)
one by one, and the rest is written in halves down to single points, so only the points the store
refuses are dropped, each with a warning naming run, key and step (and raised as said above).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from cairn import background
from cairn.errors import CairnError, InvalidArgument, NotFound, RunNotActive, StoreError, StoreLocked
from cairn.store.base import MetricPoint, TrackingStore
from cairn.tracking.validation import point_problem

logger = logging.getLogger(__name__)

#: Seconds between the writer's wake-ups. 1 s rather than 0.25 s: 40% less writer CPU per point and no more
#: training-thread CPU per point (benchmarks/README.md, "Metric writer wake-ups").
FLUSH_INTERVAL_S = 1.0
WAKE_AT = 10_000  # queued points that wake the writer before its interval
MAX_BATCH = 50_000
MAX_QUEUED = 2_000_000  # above this the caller writes synchronously (back-pressure, bounded memory)
RETRY_BACKOFF_S = (0.05, 0.2, 1.0)
#: Single points refused in a row, with nothing written in between, after which a failing batch is taken
#: for a failing store (not for bad points) and the rest of it is dropped at once instead of point by point.
MAX_REFUSED_IN_A_ROW = 8


class MetricBatcher:
    """Queue of metric points for one store, drained by a daemon thread; a worker of the background service.

    Args:
        store: where the points go.
        flush_interval: seconds between the writer's wake-ups.
        wake_at: queued points that wake the writer before its interval.
        max_batch: points written per transaction at most.
    """

    name = "metric writer"
    phase = background.Phase.METRICS

    def __init__(
        self,
        store: TrackingStore,
        *,
        flush_interval: float = FLUSH_INTERVAL_S,
        wake_at: int = WAKE_AT,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._store = store
        self._wake_at = wake_at
        self._max_batch = max_batch
        self._queue: deque[MetricPoint] = deque()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._errors: list[CairnError] = []
        self._retry: list[MetricPoint] = []
        self._interval = flush_interval
        self._thread = threading.Thread(target=self._loop, name="cairn-metric-writer", daemon=True)
        self._thread.start()
        background.register(self)

    def add(self, point: MetricPoint) -> None:
        """Queue one point. Cost on the caller: an append, no I/O."""
        queue = self._queue
        queue.append(point)
        if len(queue) >= self._wake_at:
            self._queue_is_long()

    def add_many(self, points: list[MetricPoint]) -> None:
        """Queue several points at once (what :meth:`add` does, for each of them)."""
        queue = self._queue
        queue.extend(points)
        if len(queue) >= self._wake_at:
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
        self.drain(None)
        if raise_errors:
            self.raise_errors()

    def drain(self, timeout: float | None) -> bool:
        """Write every point queued before this call (False if the writer held the store past ``timeout``)."""
        if not self._write_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            self._drain_and_write(retry_forever=True)
        finally:
            self._write_lock.release()
        return True

    def raise_errors(self) -> None:
        """Raise the first error met since the last raise (and forget them all)."""
        if self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]

    def close(self) -> None:
        """Flush and stop the writer thread (errors are logged, not raised). Points added later are written by
        the next :meth:`flush` or drain of the background service."""
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
                    self._drain_and_write(retry_forever=False, at_most=len(self._queue))

    def _drain_and_write(self, *, retry_forever: bool, at_most: int | None = None) -> None:
        """Write the queued points in batches of up to ``max_batch``; only the first ``at_most`` of them if given.

        The writer thread passes the queue's length when it woke: the points queued while it writes wait for
        its next wake-up instead of being written at once in small batches (which, with the training thread
        queuing all the time, turned each wake-up into a stream of small transactions).
        """
        left = len(self._queue) if at_most is None else at_most
        while self._retry or (self._queue and left > 0):
            batch, self._retry = self._retry, []
            popleft = self._queue.popleft
            room = max(0, self._max_batch - len(batch))
            take = min(room, left) if at_most is not None else room
            try:
                for _ in range(take):
                    batch.append(popleft())
            except IndexError:
                pass
            left -= take
            if at_most is None:
                left = len(self._queue)
            if not self._write(batch, retry_forever=retry_forever):
                return

    def _write(self, batch: list[MetricPoint], *, retry_forever: bool) -> bool:
        """Write one batch; False when it was set aside for the writer thread to retry later."""
        attempts = 0
        while True:
            try:
                self._store.log_metric_points(batch)
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
            except Exception:  # a bad point, a failing store or a bug: never lose the good points for it
                return self._write_isolating(batch, retry_forever=retry_forever)

    def _write_isolating(self, batch: list[MetricPoint], *, retry_forever: bool) -> bool:
        """After ``batch`` failed: drop what cannot be stored, write everything else.

        False when the store stayed locked and the unwritten points were set aside for the writer
        thread to retry later (as :meth:`_write` does).
        """
        storable: list[MetricPoint] = []
        for point in batch:
            problem = point_problem(*point)
            if problem is None:
                storable.append(point)
            else:
                self._drop_point(point, InvalidArgument(problem))
        by_run: dict[str, list[MetricPoint]] = {}
        for point in storable:
            by_run.setdefault(point.run_id, []).append(point)
        locked: list[MetricPoint] = []
        for points in by_run.values():
            if locked:
                locked += points
            else:
                locked = self._write_in_halves(points)
        if not locked:
            return True
        if retry_forever:
            return self._give_up(locked, StoreLocked(f"the store stayed locked; {len(locked)} points were not written"))
        logger.warning("cairn: store busy, %d metric points will be retried", len(locked))
        self._retry = locked
        return False

    def _write_in_halves(self, points: list[MetricPoint]) -> list[MetricPoint]:
        """Write the points of one run, halving failed pieces down to single points (dropped).

        Returns the points left unwritten because the store stayed locked (empty otherwise).
        """
        pieces = [points]
        refused_in_a_row = 0
        while pieces:
            piece = pieces.pop()
            error = self._try_write(piece)
            if error is None:
                refused_in_a_row = 0
            elif isinstance(error, StoreLocked):
                return piece + _joined(pieces)
            elif isinstance(error, (RunNotActive, NotFound)):  # the run is gone: all its points
                self._give_up(piece + _joined(pieces), error)
                return []
            elif len(piece) > 1:
                middle = len(piece) // 2
                pieces += [piece[middle:], piece[:middle]]  # the first half is written first
            else:
                self._drop_point(piece[0], error)
                refused_in_a_row += 1
                if refused_in_a_row >= MAX_REFUSED_IN_A_ROW and pieces:  # the store fails, not the points
                    self._give_up(_joined(pieces), error)
                    return []
        return []

    def _try_write(self, points: list[MetricPoint]) -> CairnError | None:
        """Write ``points`` (waiting out a locked store as :meth:`_write` does); the error, or None."""
        for delay in (*RETRY_BACKOFF_S, None):
            try:
                self._store.log_metric_points(points)
                return None
            except StoreLocked as exc:
                if delay is None:
                    return exc
                time.sleep(delay)
            except CairnError as exc:
                return exc
            except Exception as exc:
                return StoreError(f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    def _drop_point(self, point: MetricPoint, exc: CairnError) -> None:
        """Drop one point the store refused: warn now, raise at the next flush (naming run, key, step)."""
        run_id, key, _, _, step = point
        message = f"metric point (run {run_id}, key {key!r}, step {step!r}) was not written: {exc}"
        logger.warning("cairn: dropping 1 %s", message)
        self._errors.append(InvalidArgument(message) if isinstance(exc, InvalidArgument) else StoreError(message))
        background.report(self)

    def _give_up(self, batch: list[MetricPoint], exc: CairnError) -> bool:
        runs = sorted({point.run_id for point in batch})
        logger.warning("cairn: dropping %d metric points of run(s) %s: %s", len(batch), ", ".join(runs), exc)
        self._errors.append(exc)
        background.report(self)
        return True


def _joined(pieces: list[list[MetricPoint]]) -> list[MetricPoint]:
    """The points of the pieces still to write, in their original order (the stack's top is first)."""
    return [point for piece in reversed(pieces) for point in piece]
