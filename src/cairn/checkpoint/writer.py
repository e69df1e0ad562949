"""Write checkpoints atomically, in a background thread, with back-pressure and deferred errors.

Protocol for one checkpoint ``<dir>/<name>``: write every file into the sibling ``<dir>/.tmp-<name>-<uuid>``,
fsync each file, write ``manifest.json`` last (fsynced), fsync the temporary directory, rename it to
``<name>`` and fsync ``<dir>``. A crash at any point leaves either the previous state or a ``.tmp-*``
directory that listings ignore. Rewriting an existing name moves the old directory aside first
(``.tmp-old-*``), so for a moment neither exists and a crash then falls back to the previous checkpoint.

Error policy: a write that fails in the background (disk full, permissions) is remembered and raised as
:class:`~cairn.errors.CheckpointWriteError` by the next :meth:`AsyncCheckpointWriter.submit`,
:meth:`~AsyncCheckpointWriter.wait` or :meth:`~AsyncCheckpointWriter.close`. The state that failed is
not lost: the newest failed snapshot stays in memory as :attr:`AsyncCheckpointWriter.failed` until
:meth:`~AsyncCheckpointWriter.retry_failed` writes it again (or a later checkpoint is written, which
supersedes it). Only the newest is kept, to bound memory while a disk stays full. A ``submit`` that
raises such an error has not queued its own state; submit it again after handling the error.

Memory: a written snapshot's buffers go back to :attr:`AsyncCheckpointWriter.buffers`; capturing with
``buffers=writer.buffers`` then copies into memory that is already mapped, which keeps the stall on the
training thread to a plain memcpy.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cairn import background
from cairn.checkpoint._fs import digest_file, fsync_dir
from cairn.checkpoint.buffers import BufferPool
from cairn.checkpoint.capture import TrainingState
from cairn.checkpoint.local import TEMP_PREFIX, CheckpointInfo, scan_checkpoints, step_dirname
from cairn.checkpoint.manifest import write_manifest
from cairn.checkpoint.retention import RetentionPolicy, apply_retention, delete_local
from cairn.errors import CheckpointError, CheckpointWriteError, InvalidArgument

__all__ = ["AsyncCheckpointWriter", "FailedWrite", "write_checkpoint"]


def write_checkpoint(
    state: TrainingState, directory: str | os.PathLike[str], name: str | None = None, *, fsync: bool = True
) -> CheckpointInfo:
    """Write ``state`` as checkpoint ``<directory>/<name>`` (default ``step-<N>``), atomically, on this thread.

    Returns:
        The committed checkpoint.
    """
    name = _check_name(name or step_dirname(state.step))
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"{TEMP_PREFIX}{name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        state.wait_ready()
        written = state.write_files(tmp)
        digests = {path.relative_to(tmp).as_posix(): digest_file(path, fsync=fsync) for path in written}
        manifest = write_manifest(
            tmp,
            step=state.step,
            epoch=state.epoch,
            run_id=state.run_id,
            metrics=state.metrics,
            metadata={**state.metadata, "components": sorted(state.components)},
            digests=digests,
            fsync=fsync,
        )
        if fsync:
            fsync_dir(tmp)
        final = base / name
        _move_into_place(tmp, final, base)
        if fsync:
            fsync_dir(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckpointInfo.from_manifest(final, manifest)


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith(TEMP_PREFIX):
        raise InvalidArgument(f"invalid checkpoint directory name {name!r}")
    return name


def _move_into_place(tmp: Path, final: Path, base: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    old = base / f"{TEMP_PREFIX}old-{final.name}-{uuid.uuid4().hex}"
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class FailedWrite:
    """A checkpoint the background thread could not write, with the snapshot kept for a retry."""

    name: str
    state: TrainingState
    error: BaseException


class AsyncCheckpointWriter:
    """Writes :class:`TrainingState` snapshots into ``directory`` on one background thread, in order.

    A worker of :mod:`cairn.background` (held weakly): ``end_run``, interpreter exit and SIGTERM finish its
    queued writes, and failures nobody collected are logged at exit.

    Args:
        directory: where checkpoint directories are created (e.g. ``<run>/checkpoints``).
        max_pending: checkpoints queued or being written at most; :meth:`submit` blocks for a slot.
        retention: pruning applied after each successful write (``None``: keep everything).
        delete: how a pruned checkpoint is deleted; replace it to delete remote copies too.
        on_commit: called on the background thread with each committed checkpoint (e.g. to upload it).
        fsync: flush files and directories to stable storage (turn off only for throwaway data).
    """

    name = "checkpoint writer"
    phase = background.Phase.CHECKPOINTS

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_pending: int = 2,
        retention: RetentionPolicy | None = None,
        delete: Callable[[CheckpointInfo], None] = delete_local,
        on_commit: Callable[[CheckpointInfo], None] | None = None,
        fsync: bool = True,
    ) -> None:
        if max_pending < 1:
            raise InvalidArgument(f"max_pending must be >= 1, got {max_pending}")
        self.directory = Path(directory)
        self.max_pending = max_pending
        self.retention = retention
        self.delete = delete
        self.on_commit = on_commit
        self.fsync = fsync
        self.failed: FailedWrite | None = None
        """The newest snapshot whose write failed, kept for :meth:`retry_failed`."""
        self.committed: list[CheckpointInfo] = []
        """Checkpoints written by this writer, in order."""
        self.buffers = BufferPool()
        """Memory of written snapshots, for ``capture_training_state(..., buffers=writer.buffers)``."""
        self._cond = threading.Condition()
        self._queue: deque[tuple[TrainingState, str]] = deque()
        self._in_flight = 0
        self._errors: list[tuple[str, BaseException]] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        background.register(self)

    # -- caller's side ----------------------------------------------------------------------------

    def submit(self, state: TrainingState, directory_name: str | None = None) -> None:
        """Queue ``state`` to be written as ``directory_name`` (default ``step-<N>``); returns at once unless
        ``max_pending`` writes are already in flight, in which case it waits for one to finish.

        The writer owns ``state`` from now on: once written, its memory is recycled into :attr:`buffers`
        (``state.released`` becomes true), so do not read or submit it again.

        Raises:
            CheckpointWriteError: an earlier background write failed (``state`` is then not queued).
            CheckpointError: the writer is closed.
        """
        name = _check_name(directory_name or step_dirname(state.step))
        with self._cond:
            self._raise_errors()
            while self._in_flight >= self.max_pending and not self._closed:
                self._cond.wait()
            self._raise_errors()
            if self._closed:
                raise CheckpointError(f"checkpoint writer for {self.directory} is closed")
            self._queue.append((state, name))
            self._in_flight += 1
            self._start()
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Checkpoints queued or being written."""
        with self._cond:
            return self._in_flight

    def wait(self) -> None:
        """Block until every submitted checkpoint is written (or failed), then raise any failure."""
        with self._cond:
            while self._in_flight:
                self._cond.wait()
            self._raise_errors()

    def drain(self, timeout: float | None) -> bool:
        """Wait until every submitted checkpoint is written (or failed), at most ``timeout`` seconds; failures
        stay recorded for :meth:`raise_errors` (and the next logging call)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._in_flight, timeout)

    def raise_errors(self) -> None:
        """Raise (and forget) the failures recorded since the last raise, without waiting for anything.

        Raises:
            CheckpointWriteError: a background write or ``on_commit`` step failed.
        """
        with self._cond:
            self._raise_errors()

    def retry_failed(self) -> bool:
        """Queue the kept failed snapshot again; returns whether there was one."""
        with self._cond:
            failed, self.failed = self.failed, None
        if failed is None:
            return False
        self.submit(failed.state, failed.name)
        return True

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise any failure. Idempotent."""
        background.unregister(self)
        with self._cond:
            while self._in_flight:
                self._cond.wait()
            self._closed = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # it is exiting: the queue is empty
        with self._cond:
            self._raise_errors()

    def __enter__(self) -> AsyncCheckpointWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _raise_errors(self) -> None:
        """With the lock held: raise (and forget) the failures recorded since the last raise."""
        if not self._errors:
            return
        errors, self._errors = self._errors, []
        message = "; ".join(text for text, _ in errors)
        if self.failed is not None:
            message += (
                f". The training state of step {self.failed.state.step} is kept in writer.failed; "
                "call writer.retry_failed() to write it again once the cause is fixed"
            )
        error = CheckpointWriteError(message)
        error.failures = [exc for _, exc in errors]  # type: ignore[attr-defined]
        raise error from errors[0][1]

    # -- background side --------------------------------------------------------------------------

    def _start(self) -> None:
        """With the lock held: make sure a worker runs. Workers exit when the queue is empty, so an idle
        writer holds no thread and can be garbage-collected."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cairn-checkpoint-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._thread = None
                    return
                state, name = self._queue.popleft()
            try:
                self._write_one(state, name)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _record(self, text: str, exc: BaseException) -> None:
        with self._cond:
            self._errors.append((text, exc))
        background.report(self)

    def _write_one(self, state: TrainingState, name: str) -> None:
        try:
            snapshot_bytes = state.nbytes
            info = write_checkpoint(state, self.directory, name, fsync=self.fsync)
        except Exception as exc:
            with self._cond:
                self.failed = FailedWrite(name, state, exc)
                text = f"checkpoint {name!r} could not be written to {self.directory}: {type(exc).__name__}: {exc}"
                self._errors.append((text, exc))
            background.report(self)
            return
        with self._cond:
            self.committed.append(info)
            if self.failed is not None and self.failed.state.step <= state.step:
                self.failed = None  # superseded by a newer checkpoint on disk
        self.buffers.give(state.release(), keep_bytes=self.max_pending * snapshot_bytes)
        if self.on_commit is not None:
            try:
                self.on_commit(info)
            except Exception as exc:
                self._record(f"checkpoint {name!r} was written to {info.path} but on_commit failed: {exc!r}", exc)
        if self.retention is not None:
            try:
                apply_retention(scan_checkpoints(self.directory, verify_hashes=False), self.retention, self.delete)
            except Exception as exc:
                self._record(f"pruning old checkpoints after {name!r} failed: {exc!r}", exc)
