"""Group commit for ``runs/log-batch``: metric-only requests that arrive together share one transaction.

On PostgreSQL most of a small log-batch's cost is its transaction (begin, commit, the server's work per
statement), not its points. Requests that wait while another group is being written are written together
by the next writer, in one transaction of :meth:`SqlTrackingStore.log_metric_batches`; each request is
answered after that transaction committed, so a 200 still means the points are stored, and each key is
recorded with its own batch. When the group is refused (an unknown or deleted run, a key reused with
another body, a bad value), each request is written alone, so each gets its own answer; when the database
itself fails, every request of the group gets that error (the commit's outcome is not known to be a
refusal of one of them).
"""

from __future__ import annotations

import threading
from collections import deque

from cairn.errors import StoreError
from cairn.store._sql.store import KeyedMetrics, SqlTrackingStore

__all__ = ["GroupCommit"]


class _Request:
    __slots__ = ("batch", "done", "error")

    def __init__(self, batch: KeyedMetrics) -> None:
        self.batch = batch
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupCommit:
    """Writes metric-only log-batch requests, several per transaction.

    Args:
        store: the server's SQL store.
        writers: transactions written at the same time (each takes the requests waiting when it starts).
        max_points: points one transaction takes at most (further requests wait for the next one).
    """

    def __init__(self, store: SqlTrackingStore, *, writers: int = 2, max_points: int = 10_000) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._pending: deque[_Request] = deque()
        self._writers = threading.BoundedSemaphore(writers)
        self._max_points = max_points

    def write(self, batch: KeyedMetrics) -> None:
        """Store ``batch`` (as ``store.log_batch`` would); returns once its transaction committed.

        Raises:
            CairnError: what writing the batch alone raises.
        """
        request = _Request(batch)
        with self._lock:
            self._pending.append(request)
        while not request.done.is_set():
            with self._writers:
                group = self._take()
                if group:
                    self._write(group)
            if not group:  # another writer took this request
                request.done.wait()
        if request.error is not None:
            raise request.error

    def _take(self) -> list[_Request]:
        group: list[_Request] = []
        points = 0
        with self._lock:
            while self._pending and (not group or points + len(self._pending[0].batch.metrics) <= self._max_points):
                request = self._pending.popleft()
                group.append(request)
                points += len(request.batch.metrics)
        return group

    def _write(self, group: list[_Request]) -> None:
        try:
            self._store.log_metric_batches([request.batch for request in group])
        except StoreError as exc:  # the database failed: no request is to blame, each gets the error
            for request in group:
                request.error = exc
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
            else:
                for request in group:  # one of them was refused: each alone, for its own answer
                    try:
                        self._store.log_metric_batches([request.batch])
                    except Exception as alone:
                        request.error = alone
        finally:
            for request in group:
                request.done.set()
