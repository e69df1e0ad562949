"""Checkpoint uploads of the Transformers integration: staging (hard links) and the jobs handed to the run's
:class:`~cairn.checkpoint.run_checkpoints.RunCheckpoints` (see :mod:`cairn.autolog.transformers`)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cairn.artifacts.leftovers import temp_dir_prefix
from cairn.checkpoint.formats import TRANSFORMERS
from cairn.checkpoint.retention import RetentionPolicy
from cairn.checkpoint.run_checkpoints import RunCheckpoints

if TYPE_CHECKING:
    from cairn.tracking.client import Client

CHECKPOINTS_DIR = TRANSFORMERS.artifact_dir
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


class _CheckpointUploader:
    """Uploads the checkpoints of one run, in order, through the run's :class:`RunCheckpoints` (one thread)."""

    def __init__(self, client: Client, run_id: str) -> None:
        self._run_id = run_id
        self.checkpoints = RunCheckpoints(client, run_id, TRANSFORMERS)
        self._committed: list[int] = []
        self._lock = threading.Lock()

    @property
    def committed(self) -> list[int]:
        with self._lock:
            return list(self._committed)

    def take_errors(self) -> list[str]:
        return [f"{f.what}: {type(f.error).__name__}: {f.error}" for f in self.checkpoints.take_failures()]

    def submit(self, job: _UploadJob) -> None:
        cleanup = job.cleanup
        self.checkpoints.submit(
            f"uploading {job.name}",
            lambda: self._upload(job),
            cleanup=(lambda: shutil.rmtree(cleanup, ignore_errors=True)) if cleanup is not None else None,
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted checkpoint is uploaded (or failed); False on timeout."""
        return self.checkpoints.drain(timeout)

    def close(self) -> None:
        self.checkpoints.close()

    def _upload(self, job: _UploadJob) -> None:
        from cairn.checkpoint.manifest import MANIFEST_NAME, write_manifest

        source = job.source
        copied: Path | None = None
        if job.cleanup is None:  # hard links failed: copy now (Trainer's rotation may still win the race)
            copied = Path(tempfile.mkdtemp(prefix=temp_dir_prefix("checkpoint")))
            source = copied / job.name
            shutil.copytree(job.source, source)
        try:
            write_manifest(
                source,
                step=job.step,
                run_id=self._run_id,
                metadata={"kind": "transformers.trainer", "name": job.name},
                fsync=False,
            )
            manifest_file = source / MANIFEST_NAME
            payload = manifest_file.read_bytes()
            manifest_file.unlink()
            self.checkpoints.upload_dir(source, job.name, manifest=payload)
            if job.log_model:
                from cairn.flavors import transformers as flavor

                flavor.log_model(source, f"{CHECKPOINT_MODELS_DIR}/{job.name}", task=job.task, run_id=self._run_id)
            if job.save_total_limit:
                self._prune(job)
        finally:
            if copied is not None:
                shutil.rmtree(copied, ignore_errors=True)
        with self._lock:
            self._committed.append(job.step)

    def _prune(self, job: _UploadJob) -> None:
        """Keep the newest ``save_total_limit`` committed checkpoints up to this one, and the best one.

        Checkpoints after this step (a dead process's, beyond the resume point) are left alone: this
        run will write those steps again, replacing them.
        """
        keep = {job.name} | ({TRANSFORMERS.name_for(job.best_step)} if job.best_step is not None else set())
        policy = RetentionPolicy(keep_last=int(job.save_total_limit or 0), keep_best=0)
        store = self.checkpoints.store
        for name in self.checkpoints.prune(policy, protect=keep, up_to_step=job.step):
            if store.exists(f"{CHECKPOINT_MODELS_DIR}/{name}"):
                store.delete(f"{CHECKPOINT_MODELS_DIR}/{name}")


def _sha256_or_none(path: Path) -> str | None:
    from cairn.checkpoint._fs import digest_file

    try:
        return digest_file(path).sha256
    except OSError:
        return None


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


# ------------------------------------------------------------------------------------ several ranks


def wait_for_every_rank(args: object) -> None:
    """At ``on_save``, on every rank: a barrier, so the main process uploads ``checkpoint-N`` only after every
    rank has written its part (``rng_state_<rank>.pth``; Trainer itself has no barrier after those writes)."""
    if int(getattr(args, "world_size", 1) or 1) <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def missing_rank_files(checkpoint: Path, args: object) -> list[str]:
    """The ``rng_state_<rank>.pth`` files a checkpoint of a multi-process Trainer lacks (e.g. other nodes wrote
    theirs to disks of their own: ``output_dir`` is not on a shared filesystem)."""
    world = int(getattr(args, "world_size", 1) or 1)
    if world <= 1 or getattr(args, "save_only_model", False):
        return []
    return [name for name in (f"rng_state_{r}.pth" for r in range(world)) if not (checkpoint / name).is_file()]
