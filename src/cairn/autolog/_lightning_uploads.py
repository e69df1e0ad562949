"""Checkpoint uploads of the Lightning integration: the run's checkpoint index and the upload thread
(see :mod:`cairn.autolog.lightning`)."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import queue
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cairn.autolog._lightning_frameworks import CHECKPOINTS_DIR, INDEX_FILE, INDEX_FORMAT, INTEGRATION, logger
from cairn.autolog.config import report_failure
from cairn.errors import CheckpointCorrupt

if TYPE_CHECKING:
    from cairn.artifacts import ArtifactStore
    from cairn.tracking.client import Client


# ------------------------------------------------------------------------------------------------ upload thread


@dataclass
class _CheckpointIndex:
    """``lightning_checkpoints/index.json``: what was uploaded, with steps and hashes, and the best one."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    best: dict[str, str] = field(default_factory=dict)
    seq: int = 0

    def to_json(self, run_id: str) -> bytes:
        payload = {
            "format": INDEX_FORMAT,
            "version": 1,
            "run_id": run_id,
            "checkpoints": sorted(self.entries.values(), key=lambda e: e["seq"]),
            "best": self.best,
        }
        return json.dumps(payload, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def parse(cls, data: bytes, where: str) -> _CheckpointIndex:
        try:
            payload = json.loads(data)
            if payload.get("format") != INDEX_FORMAT:
                raise ValueError(f"format is {payload.get('format')!r}")
            entries = {str(e["path"]): dict(e) for e in payload["checkpoints"]}
            best = {str(k): str(v) for k, v in (payload.get("best") or {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointCorrupt(f"{where} is not a cairn checkpoint index: {exc}") from exc
        return cls(entries, best, max((int(e.get("seq", 0)) for e in entries.values()), default=0))


def _read_index(store: ArtifactStore) -> _CheckpointIndex | None:
    path = f"{CHECKPOINTS_DIR}/{INDEX_FILE}"
    if not store.exists(path):
        return None
    with store.open(path) as handle:
        return _CheckpointIndex.parse(handle.read(), store.uri_for(path))


@dataclass
class _Job:
    kind: Literal["put", "delete", "best"]
    remote: str
    handle: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


class _Uploader:
    """Uploads checkpoint files into one run from a background thread, in the order they were saved.

    The file is opened on the training thread when it is handed over (so a later overwrite or deletion
    by ``ModelCheckpoint`` cannot change what is uploaded) and copied by the thread; the index is
    rewritten after each upload or deletion, so it never lists a file that is not in the run.
    """

    def __init__(self, client: Client, run_id: str, *, silent: bool) -> None:
        self.run_id = run_id
        self._store = client.artifact_store(run_id)
        self._silent = silent
        self._index = _read_index(self._store) or _CheckpointIndex()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []
        _live_uploaders.add(self)

    @property
    def uploaded(self) -> dict[str, dict[str, Any]]:
        """Remote path -> index entry (read after :meth:`drain` for a stable view)."""
        return dict(self._index.entries)

    def put(self, local_path: str, remote: str, meta: dict[str, Any]) -> None:
        try:
            handle = open(local_path, "rb")  # noqa: SIM115 - closed by the upload thread
        except OSError as exc:
            self._fail(f"opening checkpoint {local_path}", exc)
            return
        self._submit(_Job("put", remote, handle, meta))

    def delete(self, remote: str) -> None:
        self._submit(_Job("delete", remote))

    def set_best(self, slot: str, remote: str) -> None:
        self._submit(_Job("best", remote, meta={"slot": slot}))

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every job handed over so far is done (or ``timeout`` seconds passed)."""
        if self._thread is None:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                logger.warning("cairn: %d checkpoint uploads still pending", self._queue.unfinished_tasks)
                return
            time.sleep(0.01)

    def close(self, timeout: float | None = None) -> None:
        self.drain(timeout)
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread = None
        _live_uploaders.discard(self)

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cairn-lightning-upload", daemon=True)
                self._thread.start()
            self._queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._run(job)
            except Exception as exc:  # a failed upload must not stop later ones
                self._fail(f"{job.kind} of {job.remote}" if job else "upload", exc)
            finally:
                if job is not None and job.handle is not None:
                    job.handle.close()
                self._queue.task_done()

    def _run(self, job: _Job) -> None:
        index = self._index
        if job.kind == "put":
            entry = self._upload(job)
            index.seq += 1
            entry["seq"] = index.seq
            index.entries[job.remote] = entry
        elif job.kind == "best":
            if job.remote in index.entries:
                index.best[job.meta["slot"]] = job.remote
        else:
            if index.entries.pop(job.remote, None) is None:
                return
            index.best = {k: v for k, v in index.best.items() if v != job.remote}
            self._write_index()  # first: the index must never list a missing file
            with contextlib.suppress(FileNotFoundError, KeyError):
                self._store.delete(job.remote)
            return
        self._write_index()

    def _upload(self, job: _Job) -> dict[str, Any]:
        digest = hashlib.sha256()
        size = 0
        directory, _, name = job.remote.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="cairn-ckpt-") as tmp:
            staged = Path(tmp) / name
            with open(staged, "wb") as out:
                while chunk := job.handle.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            self._store.put_file(staged, directory or None)
        return {**job.meta, "path": job.remote, "file": name, "sha256": digest.hexdigest(), "size": size}

    def _write_index(self) -> None:
        self._store.put_bytes(self._index.to_json(self.run_id), f"{CHECKPOINTS_DIR}/{INDEX_FILE}")

    def _fail(self, what: str, exc: BaseException) -> None:
        self.errors.append(exc)
        report_failure(INTEGRATION, what, exc, silent=self._silent)


_live_uploaders: weakref.WeakSet[_Uploader] = weakref.WeakSet()


def _drain_all_at_exit() -> None:
    for uploader in list(_live_uploaders):
        uploader.drain(timeout=120)


atexit.register(_drain_all_at_exit)


# ------------------------------------------------------------------------------------------------ remote names


def _remote_name(subdir: str, local_path: str) -> str:
    base = os.path.basename(local_path)
    return f"{CHECKPOINTS_DIR}/{subdir}/{base}" if subdir else f"{CHECKPOINTS_DIR}/{base}"


def _kind_of(checkpoint_callback: Any, path: str) -> str:
    last = getattr(checkpoint_callback, "last_model_path", "")
    return "last" if last and os.path.abspath(last) == os.path.abspath(path) else "top_k"


def _watch_removals(checkpoint_callback: Any, uploader: _Uploader, subdir: str) -> Callable[[], None]:
    """Delete from the run the files ``checkpoint_callback`` prunes; returns the undo function."""
    original = getattr(checkpoint_callback, "_remove_checkpoint", None)
    if original is None:
        return lambda: None

    def remove(trainer: Any, filepath: str) -> None:
        original(trainer, filepath)
        if getattr(trainer, "is_global_zero", True):
            uploader.delete(_remote_name(subdir, str(filepath)))

    checkpoint_callback._remove_checkpoint = remove
    return lambda: checkpoint_callback.__dict__.pop("_remove_checkpoint", None)
