"""One background thread that runs a run's checkpoint uploads in the order they were handed over.

Used by every format (:class:`~cairn.checkpoint.run_checkpoints.RunCheckpoints`). A failed job does not
stop later ones; its error is kept until :meth:`BackgroundUploads.take_error` (or
:meth:`~BackgroundUploads.raise_error`) hands it to the caller, so a background failure surfaces at the
next call instead of vanishing. :meth:`drain` waits with an optional timeout, for an ordered drain at run
end, exit or a signal.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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
    """A FIFO of upload jobs run by one lazily started daemon thread."""

    def __init__(self, name: str, *, on_failure: Callable[[UploadFailure], None] | None = None) -> None:
        """Args:
        name: the thread's name.
        on_failure: also called (on the upload thread) with each failure as it happens.
        """
        self._name = name
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
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
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

    def raise_error(self) -> None:
        """Raise :meth:`take_error`'s error, if any.

        Raises:
            CheckpointWriteError: a background job failed since the last call.
        """
        error = self.take_error()
        if error is not None:
            raise error

    def close(self, timeout: float | None = None) -> bool:
        """Drain, then stop the thread (a later :meth:`submit` starts a new one). False on timeout."""
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
