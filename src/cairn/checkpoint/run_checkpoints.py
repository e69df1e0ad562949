"""A run's checkpoints in its artifact store: list them, upload (commit marker last), delete (marker first),
prune by a retention policy, and materialise a verified local copy.

One object per (run, format): :class:`RunCheckpoints`. Uploads handed to :meth:`RunCheckpoints.submit` run in
order on one background thread (:class:`~cairn.checkpoint.uploads.BackgroundUploads`), a worker of the background
service registered for the run: ``end_run``, exit and SIGTERM drain it in the ordered drain. :meth:`drain` waits
for them; a failure is raised once, by the next logging call or by :meth:`take_error` if the caller asks first.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from cairn.artifacts.base import ArtifactStore, collect_files
from cairn.checkpoint.formats import NATIVE, CheckpointFormat, StoredCheckpoint
from cairn.checkpoint.local import CheckpointInfo
from cairn.checkpoint.manifest import MANIFEST_NAME
from cairn.checkpoint.retention import RetentionPolicy
from cairn.checkpoint.uploads import BackgroundUploads, UploadFailure
from cairn.errors import ArtifactNotFound, CheckpointWriteError, InvalidArgument, StoreLocked
from cairn.tracking.client import Client

__all__ = ["RunCheckpoints"]

logger = logging.getLogger(__name__)


class RunCheckpoints:
    """The checkpoints of one run in one format.

    Args:
        client: the tracking client whose artifact store holds the run's artifacts.
        run_id: the run.
        fmt: the format (default: cairn's native ``checkpoints/step-<N>/``).
        on_failure: called on the upload thread with each background failure as it happens.
    """

    def __init__(
        self,
        client: Client,
        run_id: str,
        fmt: CheckpointFormat = NATIVE,
        *,
        on_failure: Callable[[UploadFailure], None] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.format = fmt
        self._store: ArtifactStore | None = None
        self._uploads = BackgroundUploads(f"cairn-checkpoint-upload-{run_id[:8]}", run_id=run_id, on_failure=on_failure)

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = self.client.artifact_store(self.run_id)
        return self._store

    def artifact_path(self, name: str) -> str:
        return f"{self.format.artifact_dir}/{name}"

    # -- reading -------------------------------------------------------------------------------------

    def scan(self) -> builtins.list[StoredCheckpoint]:
        """Every checkpoint, complete or not (interrupted uploads), oldest first."""
        return self.format.scan(self.store)

    def list(self) -> builtins.list[StoredCheckpoint]:
        """The complete checkpoints, oldest first."""
        return [entry for entry in self.scan() if entry.complete]

    def materialize(self, entry: StoredCheckpoint, destination: Path) -> Path:
        """A verified local copy of ``entry`` in ``destination``.

        Raises:
            CheckpointCorrupt: the stored copy is incomplete or damaged.
        """
        return self.format.fetch(self.store, entry, destination)

    # -- writing (call these from a background job, or directly on a writer thread) ------------------

    def upload_dir(self, local: Path, name: str, *, manifest: bytes | None = None) -> None:
        """Upload a checkpoint directory as ``<artifact_dir>/<name>``, its manifest last.

        A previous copy is invalidated first (manifest deleted, then the rest), so a crash in between leaves
        no valid copy rather than a mixed one. When the run's tracking server stays unreachable, the upload is
        recorded in its spool instead (the files linked there, the local checkpoint untouched) and done, manifest
        last, when the server is back or by ``cairn sync --spool`` (see :mod:`cairn.store.rest.spool`).

        Args:
            manifest: the manifest's bytes when they are not (or must not be uploaded from) ``local``.
        """
        if not self.spooled:
            try:
                self._upload_dir(local, name, manifest=manifest)
                return
            except StoreLocked as exc:  # a tracking server's ServerUnavailable, after its retries
                if getattr(self.client.store, "spool", None) is None:
                    raise
                reason = str(exc)
        else:  # after the uploads waiting there, in order
            reason = "earlier records of the run wait in the spool"
        spool = self.client.store.spool  # type: ignore[attr-defined]  # a RestTrackingStore's
        if manifest is None:
            manifest = (local / MANIFEST_NAME).read_bytes()
        spool.append_checkpoint(self.run_id, self.artifact_path(name), local, manifest)
        logger.warning(
            "cairn: checkpoint %s of run %s stays in %s and its upload is spooled at %s (%s), to be done when the "
            "tracking server is back (or by `cairn sync --spool`)",
            name,
            self.run_id,
            local,
            spool.run(self.run_id).path,
            reason,
        )

    @property
    def spooled(self) -> bool:
        """Whether records of this run wait in its tracking server's spool (uploads go there too, in order, and
        pruning waits)."""
        spool = getattr(self.client.store, "spool_if_open", None)
        return spool is not None and bool(spool.pending(self.run_id))

    def _upload_dir(self, local: Path, name: str, *, manifest: bytes | None = None) -> None:
        base = self.artifact_path(name)
        self.delete(name)
        if not (local / MANIFEST_NAME).exists():
            if manifest is None:
                raise InvalidArgument(f"{local} has no {MANIFEST_NAME} and none was given")
            self.store.put_dir(local, base)
            self.store.put_bytes(manifest, f"{base}/{MANIFEST_NAME}")
            return
        if manifest is None:
            manifest = (local / MANIFEST_NAME).read_bytes()
        for item in collect_files(local):
            if item.relpath == MANIFEST_NAME:
                continue
            parent = item.relpath.rsplit("/", 1)[0] if "/" in item.relpath else ""
            self.store.put_file(item.source, f"{base}/{parent}" if parent else base)
        self.store.put_bytes(manifest, f"{base}/{MANIFEST_NAME}")

    def delete(self, name: str) -> None:
        """Delete ``<artifact_dir>/<name>``, its manifest first (no reader sees a manifest without its files)."""
        base = self.artifact_path(name)
        with contextlib.suppress(ArtifactNotFound):
            if self.store.exists(f"{base}/{MANIFEST_NAME}"):
                self.store.delete(f"{base}/{MANIFEST_NAME}")
            if self.store.exists(base):
                self.store.delete(base)

    def prune(
        self,
        policy: RetentionPolicy,
        *,
        entries: Iterable[StoredCheckpoint] | None = None,
        protect: Iterable[str] = (),
        up_to_step: int | None = None,
    ) -> builtins.list[str]:
        """Delete interrupted uploads and the complete checkpoints ``policy`` drops; return the deleted names.

        Args:
            entries: the run's checkpoints if the caller knows them (default: listed from the store).
            protect: names never deleted (e.g. the best one a framework points at).
            up_to_step: consider only checkpoints at or before this step (later ones are a dead process's,
                about to be written again).
        """
        listed = self.scan() if entries is None else list(entries)
        considered = [e for e in listed if up_to_step is None or e.step <= up_to_step]
        kept = set(protect)
        doomed = [e.name for e in considered if not e.complete and e.name not in kept]
        infos = [_info(e) for e in considered if e.complete]
        doomed += [info.name for info in policy.select_for_deletion(infos) if info.name not in kept]
        for name in doomed:
            self.delete(name)
        return doomed

    # -- background ---------------------------------------------------------------------------------

    def submit(self, what: str, job: Callable[[], None], *, cleanup: Callable[[], None] | None = None) -> None:
        """Run ``job`` on the upload thread after the jobs handed over before it."""
        self._uploads.submit(what, job, cleanup=cleanup)

    @property
    def pending(self) -> int:
        return self._uploads.pending

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the jobs handed over so far; False if ``timeout`` seconds passed first."""
        return self._uploads.drain(timeout)

    def take_error(self) -> CheckpointWriteError | None:
        """The background failures since the last call, as one error (``None`` if there were none)."""
        return self._uploads.take_error()

    def take_failures(self) -> builtins.list[UploadFailure]:
        """The background failures since the last call, one by one."""
        return self._uploads.take_errors()

    def close(self, timeout: float | None = None) -> bool:
        """Drain and stop the upload thread; False on timeout."""
        return self._uploads.close(timeout)


def _info(entry: StoredCheckpoint) -> CheckpointInfo:
    """The retention view of a stored checkpoint (its ``path`` is only an identity here)."""
    return CheckpointInfo(
        name=entry.name,
        path=Path(entry.path),
        step=entry.step,
        epoch=entry.meta.get("epoch"),
        run_id=None,
        created_at=str(entry.meta.get("created_at", "")),
        metrics=dict(entry.metrics),
    )
