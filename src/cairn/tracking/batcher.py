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

**Tracking servers** (:class:`~cairn.store.rest.RestTrackingStore`). A batch is cut into the log-batch requests
it takes when it is formed, and each request gets its ``Idempotency-Key`` then: every resend, retry and spool
replay of it carries the same key with the same points (halves of a refused request get keys derived from its
own), so the cairn server stores each point once; only requests not answered are sent again. When the server
stays unreachable after the session's retries, the writer goes *offline*: it warns once, moves every batch it
holds, and every later one, to the server's spool (:mod:`cairn.store.rest.spool`, bounded by
``CAIRN_SPOOL_MAX_BYTES``), and probes the server with backoff by sending the first spooled record; when it
answers, the spool is sent in order and deleted, and the writer is online again. The training thread never
waits for the network. A full spool is said at once (a warning, and :class:`~cairn.store.rest.spool.SpoolFull`
raised by the next logging call); what did not fit stays in memory and is sent when the server is back.
``end_run`` (and the exit drain) wait at most ``CAIRN_EXIT_DRAIN_TIMEOUT`` seconds for the server, then leave
the spool to ``cairn sync --spool`` and say so.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from cairn import background
from cairn.errors import CairnError, InvalidArgument, NotFound, RunNotActive, StoreError, StoreLocked
from cairn.store.base import MetricPoint, TrackingStore
from cairn.tracking.validation import point_problem

if TYPE_CHECKING:
    from cairn.store.rest.spool import Spool, SpoolRecord
    from cairn.store.rest.store import RestTrackingStore

logger = logging.getLogger(__name__)

#: Seconds between the writer's wake-ups. 1 s rather than 0.25 s: 40% less writer CPU per point and no more
#: training-thread CPU per point (benchmarks/README.md, "Metric writer wake-ups").
FLUSH_INTERVAL_S = 1.0
WAKE_AT = 10_000  # queued points that wake the writer before its interval
MAX_BATCH = 50_000
MAX_QUEUED = 2_000_000  # above this the caller writes synchronously (back-pressure, bounded memory)
RETRY_BACKOFF_S = (0.05, 0.2, 1.0)
#: What a tracking server answers when it stored nothing of a request and never will: its points are isolated
#: (halved, dropped one by one). Any other failure may have come after the request was stored.
REFUSALS = (InvalidArgument, RunNotActive, NotFound)
#: Single points refused in a row, with nothing written in between, after which a failing batch is taken
#: for a failing store (not for bad points) and the rest of it is dropped at once instead of point by point.
MAX_REFUSED_IN_A_ROW = 8


@dataclass
class _Batch:
    """Points written together, and the idempotency key they keep through every resend."""

    key: str
    points: list[MetricPoint]


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
        self._rest = cast("RestTrackingStore", store) if callable(getattr(store, "log_keyed_points", None)) else None
        self._wake_at = wake_at
        self._max_batch = max_batch
        self._queue: deque[MetricPoint] = deque()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._errors: list[CairnError] = []
        self._retry: deque[_Batch] = deque()
        self._interval = flush_interval
        self._offline = False
        self._probe_delay = 0.0
        self._next_probe = 0.0
        self._spool_full = False
        self._unreplayable: set[str] = set()
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
        """Points held in memory, not written (spooled points are not counted)."""
        return len(self._queue) + sum(len(batch.points) for batch in list(self._retry))

    @property
    def offline(self) -> bool:
        """Whether the tracking server was found unreachable and points go to its spool."""
        return self._offline

    def flush(self, *, raise_errors: bool = True) -> None:
        """Write every point queued before this call (to the spool while the server is unreachable, after one
        try to send the spool); re-raise the writer's first error."""
        self._drain(None, wait_for_server=False)
        if raise_errors:
            self.raise_errors()

    def drain(self, timeout: float | None) -> bool:
        """Write every point queued before this call (False if the writer held the store past ``timeout``).

        With a tracking server that is unreachable, the points are spooled and the spool is given at most
        ``timeout`` seconds (and at most ``CAIRN_EXIT_DRAIN_TIMEOUT``) to be sent; what is left stays spooled.
        """
        return self._drain(timeout, wait_for_server=True)

    def _drain(self, timeout: float | None, *, wait_for_server: bool) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            self._drain_and_write(retry_forever=True)
            if wait_for_server and self._offline:
                self._wait_for_server(deadline)
            elif self._offline:  # one try, so that a read after a flush sees the spooled points if it can
                self._replay()
            return not self._retry
        finally:
            self._write_lock.release()

    def raise_errors(self) -> None:
        """Raise the first error met since the last raise (and forget them all)."""
        if self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]

    def unfinished(self) -> str:
        """What is not done yet, for the warning of an exit drain that ran out of time."""
        return f"{self.pending:,} metric point(s) in memory"

    def close(self) -> None:
        """Flush and stop the writer thread (errors are logged, not raised). Points added later are written by
        the next :meth:`flush` or drain of the background service. What is left in a tracking server's spool
        is said on stderr, with how to send it."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        try:
            self.flush(raise_errors=False)
        finally:
            for error in self._errors:
                logger.error("cairn: metric points were not written: %s", error)
            self._errors.clear()
            if self._retry:
                logger.error(
                    "cairn: %d metric points could not be sent nor spooled (the spool is full) and are lost",
                    self.pending,
                )
            self._announce_spool()

    # -- the writer thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self._wait_time())
            self._wake.clear()
            if self._queue or self._retry or self._offline or self._spooled_elsewhere():
                with self._write_lock:
                    if self._queue or self._retry:
                        self._drain_and_write(retry_forever=False, at_most=len(self._queue))
                    if (self._offline or self._spooled_elsewhere()) and time.monotonic() >= self._next_probe:
                        self._offline = True
                        self._replay()

    def _wait_time(self) -> float:
        if not self._offline:
            return self._interval
        return max(0.0, min(self._interval, self._next_probe - time.monotonic()))

    def _spooled_elsewhere(self) -> bool:
        """Whether records of this process wait in the spool though the writer is online (a status spooled by
        ``end_run`` while the server was down, with no points)."""
        spool = self._rest.spool_if_open if self._rest is not None else None
        return spool is not None and not self._offline and bool(set(spool.pending_touched()) - self._unreplayable)

    def _drain_and_write(self, *, retry_forever: bool, at_most: int | None = None) -> None:
        """Write the queued points in batches of up to ``max_batch``; only the first ``at_most`` of them if given.

        The writer thread passes the queue's length when it woke: the points queued while it writes wait for
        its next wake-up instead of being written at once in small batches (which, with the training thread
        queuing all the time, turned each wake-up into a stream of small transactions).
        """
        left = len(self._queue) if at_most is None else at_most
        while self._retry or (self._queue and left > 0):
            if not self._retry:
                points: list[MetricPoint] = []
                popleft = self._queue.popleft
                take = min(self._max_batch, left) if at_most is not None else self._max_batch
                try:
                    for _ in range(take):
                        points.append(popleft())
                except IndexError:
                    pass
                left -= take
                self._retry.extend(self._batches(points))
            if at_most is None:
                left = len(self._queue)
            if self._offline:
                if not self._spool_held():
                    return
                continue
            if not self._write_first(retry_forever=retry_forever):
                return

    def _batches(self, points: list[MetricPoint]) -> list[_Batch]:
        """``points`` as batches with their keys: one per log-batch request for a tracking server."""
        key = uuid.uuid4().hex
        if self._rest is None:
            return [_Batch(key, points)]
        return [_Batch(f"{key}.{n}", piece) for n, piece in enumerate(self._rest.split_points(points))]

    def _send(self, batch: _Batch) -> None:
        if self._rest is not None:
            self._rest.log_keyed_points(batch.points, batch.key)
        else:
            self._store.log_metric_points(batch.points)

    def _write_first(self, *, retry_forever: bool) -> bool:
        """Write the first held batch; False when what is left must wait (a locked store, a full spool)."""
        batch = self._retry[0]
        attempts = 0
        while True:
            try:
                self._send(batch)
                self._retry.popleft()
                return True
            except StoreLocked as exc:
                if self._rest is not None:  # the server stayed unreachable through the session's retries
                    self._go_offline(exc)
                    return self._spool_held()
                attempts += 1
                if not retry_forever and attempts > len(RETRY_BACKOFF_S):
                    logger.warning("cairn: store busy, %d metric points will be retried: %s", len(batch.points), exc)
                    return False
                if retry_forever and attempts > len(RETRY_BACKOFF_S):
                    self._retry.popleft()
                    return self._give_up(batch.points, exc)
                time.sleep(RETRY_BACKOFF_S[attempts - 1])
            except Exception as exc:  # a bad point, a failing store or a bug: never lose the good points for it
                if self._rest is not None and not isinstance(exc, REFUSALS):
                    # a server error (5xx, a body that is not JSON): the request may have been stored, so it is
                    # sent again whole, under its key, later; halves would be new requests, stored twice
                    self._go_offline(exc if isinstance(exc, CairnError) else StoreError(f"{type(exc).__name__}: {exc}"))
                    return self._spool_held()
                self._retry.popleft()
                locked = self._write_isolating(batch)
                if not locked:
                    return True
                self._retry.extendleft(reversed(locked))
                if self._rest is not None:
                    self._go_offline(StoreLocked("the tracking server became unreachable"))
                    return self._spool_held()
                count = sum(len(piece.points) for piece in locked)
                if retry_forever:
                    self._retry.clear()
                    return self._give_up(
                        [p for piece in locked for p in piece.points],
                        StoreLocked(f"the store stayed locked; {count} points were not written"),
                    )
                logger.warning("cairn: store busy, %d metric points will be retried", count)
                return False

    def _write_isolating(self, batch: _Batch) -> list[_Batch]:
        """After ``batch`` failed: drop what cannot be stored, write everything else.

        Returns the pieces left unwritten because the store stayed locked (empty otherwise).
        """
        storable: list[MetricPoint] = []
        for point in batch.points:
            problem = point_problem(*point)
            if problem is None:
                storable.append(point)
            else:
                self._drop_point(point, InvalidArgument(problem))
        by_run: dict[str, list[MetricPoint]] = {}
        for point in storable:
            by_run.setdefault(point.run_id, []).append(point)
        locked: list[_Batch] = []
        for number, points in enumerate(by_run.values()):
            # the same points keep the batch's key (a failure that came after the server stored them must
            # not store them twice); a different set of points is another request, with a key of its own
            piece = _Batch(batch.key if points == batch.points else f"{batch.key}r{number}", points)
            if locked:
                locked.append(piece)
            else:
                locked = self._write_in_halves(piece)
        return locked

    def _write_in_halves(self, batch: _Batch) -> list[_Batch]:
        """Write the points of one run, halving failed pieces down to single points (dropped).

        Returns the pieces left unwritten because the store stayed locked (empty otherwise).
        """
        pieces = [batch]
        refused_in_a_row = 0
        while pieces:
            piece = pieces.pop()
            error = self._try_write(piece)
            if error is None:
                refused_in_a_row = 0
            elif isinstance(error, StoreLocked) or (self._rest is not None and not isinstance(error, REFUSALS)):
                return [piece, *reversed(pieces)]
            elif isinstance(error, (RunNotActive, NotFound)):  # the run is gone: all its points
                self._give_up(piece.points + _joined(pieces), error)
                return []
            elif len(piece.points) > 1:
                middle = len(piece.points) // 2
                first = _Batch(f"{piece.key}a", piece.points[:middle])
                second = _Batch(f"{piece.key}b", piece.points[middle:])
                pieces += [second, first]  # the first half is written first
            else:
                self._drop_point(piece.points[0], error)
                refused_in_a_row += 1
                if refused_in_a_row >= MAX_REFUSED_IN_A_ROW and pieces:  # the store fails, not the points
                    self._give_up(_joined(pieces), error)
                    return []
        return []

    def _try_write(self, batch: _Batch) -> CairnError | None:
        """Write ``batch`` (waiting out a locked store as :meth:`_write_first` does); the error, or None."""
        for delay in (*RETRY_BACKOFF_S, None):
            try:
                self._send(batch)
                return None
            except StoreLocked as exc:
                if delay is None or self._rest is not None:  # a server was retried by the session already
                    return exc
                time.sleep(delay)
            except CairnError as exc:
                return exc
            except Exception as exc:
                return StoreError(f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    # -- the spool of an unreachable tracking server ------------------------------------------------

    def _go_offline(self, exc: CairnError) -> None:
        if self._offline:
            return
        rest = cast("RestTrackingStore", self._rest)
        self._offline = True
        self._probe_delay = rest.http.backoff
        self._next_probe = time.monotonic() + self._probe_delay
        spool = rest.spool
        logger.warning(
            "cairn: the tracking server at %s is unreachable or failing (%s). Metric points are spooled at %s "
            "(at most %s bytes, CAIRN_SPOOL_MAX_BYTES) and sent, in order and once, when it answers again; it is "
            "probed with backoff meanwhile. Training goes on.",
            rest.uri,
            exc,
            spool.directory,
            f"{spool.limit:,}",
        )

    def _spool_held(self) -> bool:
        """Move every held batch to the spool, in order; False when the spool is full (the rest stays here)."""
        from cairn.store.rest.spool import SpoolFull

        spool = cast("RestTrackingStore", self._rest).spool
        while self._retry:
            batch = self._retry[0]
            try:
                spool.append_points(batch.points[0].run_id, batch.key, batch.points)
            except (SpoolFull, OSError) as exc:
                self._spool_failed(exc)
                return False
            self._retry.popleft()
        self._spool_full = False
        return True

    def _spool_failed(self, exc: Exception) -> None:
        if self._spool_full:
            return
        self._spool_full = True
        error = exc if isinstance(exc, CairnError) else StoreError(f"cannot write to the spool: {exc}")
        logger.warning(
            "cairn: %d metric points cannot be spooled: %s. They are kept in memory and sent when the server is back; "
            "they are lost if this process ends first.",
            self.pending,
            error,
        )
        self._errors.append(error)
        background.report(self)

    def _replay(self) -> bool:
        """Send this process's spooled records (one attempt each) in order; True once the spool is empty."""
        rest = cast("RestTrackingStore", self._rest)
        spool = rest.spool
        sent_points = sent_other = 0
        if not rest.answers():  # a cheap probe first: a checkpoint record's upload would wait out every retry
            return self._probe_later()
        try:
            for run_id in spool.pending_touched():
                if run_id in self._unreplayable:
                    continue
                try:
                    sent = spool.replay(run_id, self._send_record)
                except StoreLocked:
                    raise
                except Exception as exc:  # a damaged spool: left for `cairn sync --spool` to report
                    self._unreplayable.add(run_id)
                    self._report(
                        StoreError(f"cannot send the spool of run {run_id}: {exc}; it stays in {spool.directory}")
                    )
                    continue
                sent_points += sent.points
                sent_other += sent.checkpoints + (1 if sent.status else 0)
                if sent.torn:
                    self._report(StoreError(sent.torn))
        except StoreLocked:
            if sent_points or sent_other:
                logger.info("cairn: sent %d spooled points to %s before it failed again", sent_points, rest.uri)
            return self._probe_later()
        while self._retry:  # what the full spool could not take, after what it held (still offline: no new warning)
            if not self._write_first(retry_forever=False):
                return self._probe_later()
        if set(spool.pending_touched()) - self._unreplayable:  # the server failed again, the held points spooled
            return self._probe_later()
        self._offline = False
        self._spool_full = False
        logger.info(
            "cairn: the tracking server at %s answers again: sent %d spooled metric points%s; the spool is emptied",
            rest.uri,
            sent_points,
            f" and {sent_other} other record(s)" if sent_other else "",
        )
        return True

    def _probe_later(self) -> bool:
        rest = cast("RestTrackingStore", self._rest)
        self._probe_delay = min(rest.http.max_backoff, max(self._probe_delay * 2, rest.http.backoff))
        self._next_probe = time.monotonic() + self._probe_delay
        return False

    def _send_record(self, record: SpoolRecord) -> None:
        """Send one spooled record; one the server refuses (:data:`REFUSALS`) is dropped, said; any other failure
        stops the replay (the record is sent again, under its key, at the next probe)."""
        rest = cast("RestTrackingStore", self._rest)
        try:
            rest.send_spooled(record, retries=0)
        except StoreLocked:
            raise
        except Exception as exc:
            if not isinstance(exc, REFUSALS):
                raise StoreLocked(f"the tracking server failed: {type(exc).__name__}: {exc}") from exc
            what = f"{len(record.data.get('points', []))} spooled points" if record.kind == "points" else record.kind
            self._report(StoreError(f"the tracking server refused {what} of run {record.data.get('run_id')}: {exc}"))

    def _wait_for_server(self, deadline: float | None) -> None:
        """Probe the server until the spool is sent or the bound passes (the exit drain's, and ``deadline``)."""
        bound = background.exit_drain_timeout()
        if bound is not None:
            end = time.monotonic() + bound
            deadline = end if deadline is None else min(deadline, end)
        while True:
            if self._replay():
                return
            wait = self._next_probe - time.monotonic()
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if deadline - time.monotonic() <= 0:
                    return
            time.sleep(max(0.0, wait))

    def _announce_spool(self) -> None:
        spool: Spool | None = self._rest.spool_if_open if self._rest is not None else None
        if spool is None:
            return
        from cairn.store.rest.store import announce_spool

        for run_id in spool.pending_touched():
            announce_spool(spool, run_id)

    # -- errors -------------------------------------------------------------------------------------

    def _report(self, error: CairnError) -> None:
        logger.warning("cairn: %s", error)
        self._errors.append(error)
        background.report(self)

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


def _joined(pieces: list[_Batch]) -> list[MetricPoint]:
    """The points of the pieces still to write, in their original order (the stack's top is first)."""
    return [point for piece in reversed(pieces) for point in piece.points]
