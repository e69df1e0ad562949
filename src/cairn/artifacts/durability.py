"""Making files durable in the background: ``fsync`` each file, then the directories they were renamed into.

A local artifact store writes every file atomically (temporary file, rename), so a crashed process
never leaves a partial file behind. Surviving a power loss also takes ``fsync``, which for a large
model costs as much as writing it (the page cache is flushed to disk). ``log_model`` hands that part
to this module's thread (a worker of :mod:`cairn.background`, drained last) and returns once the model
is in place; the fluent ``end_run`` and interpreter exit wait for it, and a failure is raised there or
by the next logging call. Between the two, a power loss could tear a file: its sha256 no longer matches the
model's ``cairn_files.json``, so the model is refused at load instead of loading wrong weights.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Iterable

from cairn import background
from cairn.errors import ArtifactWriteError

__all__ = ["fsync_dirs", "fsync_file", "fsync_in_background", "pending", "wait_durable"]

logger = logging.getLogger(__name__)


def fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(dirs: Iterable[str]) -> None:
    """Make the renames into ``dirs`` durable; best effort (not every OS can fsync a directory)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    for directory in dirs:
        try:
            fd = os.open(directory, flags)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


class _Flusher:
    """The fsync thread, started when there is work and gone when there is none."""

    name = "fsync of logged files"
    phase = background.Phase.FSYNC

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[tuple[list[str], set[str]]] = deque()
        self._in_flight = 0
        self._errors: list[str] = []
        self._thread: threading.Thread | None = None

    def submit(self, files: list[str], dirs: set[str]) -> None:
        background.register(self)
        with self._cond:
            self._queue.append((files, dirs))
            self._in_flight += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cairn-fsync", daemon=True)
                self._thread.start()

    def pending(self) -> int:
        with self._cond:
            return self._in_flight

    def wait(self) -> None:
        self.drain(None)
        self.raise_errors()

    def drain(self, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._in_flight, timeout)

    def close(self) -> None:
        self.drain(None)

    def raise_errors(self) -> None:
        with self._cond:
            errors, self._errors = self._errors, []
        if errors:
            more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
            raise ArtifactWriteError(
                f"artifacts could not be made durable (fsync failed): {'; '.join(errors[:3])}{more}"
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._thread = None
                    return
                files, dirs = self._queue.popleft()
            failures = []
            for path in files:
                try:
                    fsync_file(path)
                except FileNotFoundError:  # deleted since (a replaced model): nothing to keep
                    pass
                except OSError as exc:
                    failures.append(f"{path}: {exc.strerror or exc}")
            fsync_dirs(dirs)
            with self._cond:
                self._errors.extend(failures)
                self._in_flight -= 1
                self._cond.notify_all()
            if failures:
                background.report(self)


_flusher = _Flusher()


def fsync_in_background(files: Iterable[str | os.PathLike[str]], dirs: Iterable[str]) -> None:
    """Queue ``files`` for ``fsync``, then ``dirs`` (the directories they were renamed into)."""
    _flusher.submit([os.fspath(path) for path in files], set(dirs))


def pending() -> int:
    """Batches of files queued or being made durable."""
    return _flusher.pending()


def wait_durable() -> None:
    """Block until every queued file is durable.

    Raises:
        ArtifactWriteError: an ``fsync`` failed (the message names the files).
    """
    _flusher.wait()
