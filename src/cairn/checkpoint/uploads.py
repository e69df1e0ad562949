"""One background thread that runs a run's checkpoint uploads in the order they were handed over.

Used by every format (:class:`~cairn.checkpoint.run_checkpoints.RunCheckpoints`). It is an ``UPLOADS``
worker of the background service (:mod:`cairn.background`), registered for its run while its thread runs:
the run's ordered drain at ``end_run``, interpreter exit or SIGTERM waits for its jobs, after the run's
checkpoints and metric points, before fsync and the release of the run's resume lease.

A failed job does not stop later ones. Its error is reported to the service's error box at once, so the
next logging call, ``flush`` or ``end_run`` raises it; an integration may take it first
(:meth:`BackgroundUploads.take_error`) to report it its own way. Either way each failure is handed out once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cairn import background
from cairn.errors import CheckpointWriteError

__all__ = ["BackgroundUploads", "UploadFailure"]


@dataclass(frozen=True)
class UploadFailure:
    """A job that raised: what it was doing, and the error."""

    what: str
    error: BaseException


@dataclass
class _Job:
    what: str
    run: Callable[[], None]
    cleanup: Callable[[], None] | None


class BackgroundUploads:
    """A FIFO of upload jobs run by one lazily started daemon thread (a worker of the background service)."""

    name = "checkpoint uploads"
    phase = background.Phase.UPLOADS

    def __init__(
        self,
        name: str,
        *,
        run_id: str | None = None,
        on_failure: Callable[[UploadFailure], None] | None = None,
    ) -> None:
        """Args:
        name: the thread's name.
        run_id: the run the uploads belong to: its ``end_run`` drains and closes them (default: drained
            only by the process-wide drains, at exit and on SIGTERM).
        on_failure: also called (on the upload thread) with each failure as it happens.
        """
        self._thread_name = name
        self.run_id = run_id
        self._on_failure = on_failure
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._cond = threading.Condition()
        self._pending = 0
        self._failures: list[UploadFailure] = []
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Jobs handed over and not finished yet."""
        with self._cond:
            return self._pending

    def submit(self, what: str, run: Callable[[], None], *, cleanup: Callable[[], None] | None = None) -> None:
        """Queue ``run`` (described by ``what`` in errors); ``cleanup`` runs after it whatever happened."""
        with self._cond:
            self._pending += 1
            starting = self._thread is None
            if starting:
                self._thread = threading.Thread(target=self._loop, name=self._thread_name, daemon=True)
                self._thread.start()
        if starting:  # again after a close (the run's drain forgets the workers it closed)
            background.register(self, run_id=self.run_id)
        self._queue.put(_Job(what, run, cleanup))

    def drain(self, timeout: float | None = None) -> bool:
        """Block until every job handed over so far has finished; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def take_errors(self) -> list[UploadFailure]:
        """The failures since the last call (each is handed out once)."""
        with self._cond:
            failures, self._failures = self._failures, []
        return failures

    def take_error(self) -> CheckpointWriteError | None:
        """The failures since the last call as one error (``None`` when there were none)."""
        failures = self.take_errors()
        if not failures:
            return None
        text = "; ".join(f"{f.what}: {type(f.error).__name__}: {f.error}" for f in failures)
        error = CheckpointWriteError(f"checkpoint upload failed: {text}")
        error.__cause__ = failures[0].error
        return error

    def raise_errors(self) -> None:
        """Raise :meth:`take_error`'s error, if any (the service's error box calls this).

        Raises:
            CheckpointWriteError: a background job failed since the last call.
        """
        error = self.take_error()
        if error is not None:
            raise error

    raise_error = raise_errors

    def unfinished(self) -> str:
        """What is not done yet, for the warning of an exit drain that ran out of time."""
        return f"{self.pending} checkpoint upload job(s)"

    def close(self, timeout: float | None = None) -> bool:
        """Drain, then stop the thread (a later :meth:`submit` starts a new one). False on timeout (the thread
        then stops after its last job)."""
        drained = self.drain(timeout)
        with self._cond:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            if drained:
                thread.join()
        return drained

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job.run()
            except Exception as exc:  # recorded and handed to the caller; later uploads still run
                failure = UploadFailure(job.what, exc)
                with self._cond:
                    self._failures.append(failure)
                background.report(self)
                if self._on_failure is not None:
                    self._on_failure(failure)
            finally:
                try:
                    if job.cleanup is not None:
                        job.cleanup()
                finally:
                    with self._cond:
                        self._pending -= 1
                        self._cond.notify_all()
