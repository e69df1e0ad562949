"""Checkpoint uploads of the Transformers integration: staging (hard links) and the upload thread
(see :mod:`cairn.autolog.transformers`)."""

from __future__ import annotations

import os
import queue
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_MODELS_DIR = "checkpoint_models"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


# ----------------------------------------------------------------------------------------- uploads


@dataclass
class _UploadJob:
    step: int
    name: str
    source: Path  # the staged (hard-linked) copy, or the checkpoint itself when linking failed
    cleanup: Path | None  # removed once the job is done (the staging directory)
    save_total_limit: int | None
    best_step: int | None
    log_model: bool
    task: str | None


@dataclass
class _UploadState:
    committed: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pending: int = 0


class _CheckpointUploader:
    """One background thread uploading checkpoints of one run, in order."""

    def __init__(self, store: Any, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._jobs: queue.Queue[_UploadJob | None] = queue.Queue()
        self._state = _UploadState()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="cairn-checkpoint-upload", daemon=True)
        self._thread.start()

    @property
    def committed(self) -> list[int]:
        with self._cond:
            return list(self._state.committed)

    def take_errors(self) -> list[str]:
        with self._cond:
            errors, self._state.errors = self._state.errors, []
            return errors

    def submit(self, job: _UploadJob) -> None:
        with self._cond:
            self._state.pending += 1
        self._jobs.put(job)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted checkpoint is uploaded (or failed); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._state.pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._upload(job)
                with self._cond:
                    self._state.committed.append(job.step)
            except Exception as exc:
                with self._cond:
                    self._state.errors.append(f"uploading {job.name}: {type(exc).__name__}: {exc}")
            finally:
                if job.cleanup is not None:
                    shutil.rmtree(job.cleanup, ignore_errors=True)
                with self._cond:
                    self._state.pending -= 1
                    self._cond.notify_all()

    def _upload(self, job: _UploadJob) -> None:
        from cairn.checkpoint.manifest import MANIFEST_NAME, write_manifest

        prefix = f"{CHECKPOINTS_DIR}/{job.name}"
        source = job.source
        if job.cleanup is None:  # hard links failed: copy now (Trainer's rotation may still win the race)
            job.cleanup = Path(tempfile.mkdtemp(prefix="cairn-checkpoint-"))
            source = job.cleanup / job.name
            shutil.copytree(job.source, source)
        _delete_checkpoint(self._store, prefix)  # an earlier, possibly partial, upload of this step
        manifest = write_manifest(
            source,
            step=job.step,
            run_id=self._run_id,
            metadata={"kind": "transformers.trainer", "name": job.name},
            fsync=False,
        )
        manifest_file = source / MANIFEST_NAME
        payload = manifest_file.read_bytes()
        manifest_file.unlink()
        del manifest
        self._store.put_dir(source, prefix)
        self._store.put_bytes(payload, f"{prefix}/{MANIFEST_NAME}")  # the commit marker, last
        if job.log_model:
            from cairn.flavors import transformers as flavor

            flavor.log_model(source, f"{CHECKPOINT_MODELS_DIR}/{job.name}", task=job.task, run_id=self._run_id)
        if job.save_total_limit:
            self._prune(job)

    def _prune(self, job: _UploadJob) -> None:
        """Keep the newest ``save_total_limit`` committed checkpoints up to this one, and the best one.

        Checkpoints after this step (a dead process's, beyond the resume point) are left alone: this
        run will write those steps again, replacing them.
        """
        from cairn.checkpoint.manifest import MANIFEST_NAME

        steps = [s for s in _remote_steps(self._store) if s <= job.step]
        committed = [s for s in steps if self._store.exists(f"{CHECKPOINTS_DIR}/checkpoint-{s}/{MANIFEST_NAME}")]
        keep = set(sorted(committed)[-int(job.save_total_limit or 0) :]) | {job.step}
        if job.best_step is not None:
            keep.add(job.best_step)
        for step in steps:
            if step not in keep:
                _delete_checkpoint(self._store, f"{CHECKPOINTS_DIR}/checkpoint-{step}")
                if self._store.exists(f"{CHECKPOINT_MODELS_DIR}/checkpoint-{step}"):
                    self._store.delete(f"{CHECKPOINT_MODELS_DIR}/checkpoint-{step}")


def _delete_checkpoint(store: Any, prefix: str) -> None:
    """Delete an uploaded checkpoint, its commit marker first (so no reader sees a manifest without files)."""
    from cairn.checkpoint.manifest import MANIFEST_NAME

    if store.exists(f"{prefix}/{MANIFEST_NAME}"):
        store.delete(f"{prefix}/{MANIFEST_NAME}")
    if store.exists(prefix):
        store.delete(prefix)


def _sha256_or_none(path: Path) -> str | None:
    from cairn.checkpoint._fs import digest_file

    try:
        return digest_file(path).sha256
    except OSError:
        return None


def _remote_steps(store: Any) -> list[int]:
    if not store.exists(CHECKPOINTS_DIR):
        return []
    steps = []
    for info in store.list(CHECKPOINTS_DIR):
        match = _CHECKPOINT_NAME.match(info.path.rsplit("/", 1)[-1])
        if match and info.is_dir:
            steps.append(int(match.group(1)))
    return sorted(steps)


def _stage(checkpoint: Path, staging_root: Path) -> Path | None:
    """Hard-link every file of ``checkpoint`` into ``staging_root/<name>`` and return that directory;
    None when the filesystem refuses links (the upload thread then copies the checkpoint).

    A file named like cairn's manifest is copied rather than linked: the upload writes that name, and
    writing through a link would change the user's checkpoint.
    """
    from cairn.checkpoint.manifest import MANIFEST_NAME

    target = staging_root / checkpoint.name
    try:
        if target.exists():
            shutil.rmtree(target)
        for path in checkpoint.rglob("*"):
            destination = target / path.relative_to(checkpoint)
            if path.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
            elif path.is_file():
                destination.parent.mkdir(parents=True, exist_ok=True)
                if path.parent == checkpoint and path.name == MANIFEST_NAME:
                    shutil.copy2(path, destination)
                else:
                    os.link(path, destination)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        return None
    return target
