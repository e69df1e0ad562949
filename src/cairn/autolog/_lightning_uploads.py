"""Checkpoint uploads of the Lightning integration: the run's checkpoint index (the format's commit marker,
see :data:`cairn.checkpoint.formats.LIGHTNING`) and the jobs run on the shared upload thread of
:class:`~cairn.checkpoint.run_checkpoints.RunCheckpoints` (see :mod:`cairn.autolog.lightning`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cairn.artifacts.leftovers import temp_dir_prefix
from cairn.autolog._lightning_frameworks import CHECKPOINTS_DIR, INDEX_FILE, INDEX_FORMAT, INTEGRATION, logger
from cairn.autolog.config import report_failure
from cairn.checkpoint.formats import LIGHTNING
from cairn.checkpoint.run_checkpoints import RunCheckpoints
from cairn.checkpoint.uploads import UploadFailure
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
    """Uploads checkpoint files into one run in the order they were saved, on the run's
    :class:`~cairn.checkpoint.run_checkpoints.RunCheckpoints` upload thread.

    The file is opened on the training thread when it is handed over (so a later overwrite or deletion
    by ``ModelCheckpoint`` cannot change what is uploaded) and copied by the thread; the index (the
    Lightning format's commit marker) is rewritten after each upload or deletion, so it never lists a file
    that is not in the run. Failures are reported as they happen and kept for :meth:`take_error`.
    """

    def __init__(self, client: Client, run_id: str, *, silent: bool) -> None:
        self.run_id = run_id
        self._silent = self.silent = silent
        self.checkpoints = RunCheckpoints(client, run_id, LIGHTNING, on_failure=self._report)
        self._store = self.checkpoints.store
        self._index = _read_index(self._store) or _CheckpointIndex()
        self.errors: list[BaseException] = []

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

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every job handed over so far is done; False (and a log line) if ``timeout`` passed first."""
        if self.checkpoints.drain(timeout):
            return True
        logger.warning("cairn: %d checkpoint uploads still pending", self.checkpoints.pending)
        return False

    def take_error(self) -> BaseException | None:
        """The background failures since the last call, as one error (they were reported when they happened)."""
        return self.checkpoints.take_error()

    def close(self, timeout: float | None = None) -> None:
        self.drain(timeout)
        self.checkpoints.close(0 if timeout is not None else None)

    def _submit(self, job: _Job) -> None:
        handle = job.handle
        self.checkpoints.submit(
            f"{job.kind} of {job.remote}",
            lambda: self._run(job),
            cleanup=handle.close if handle is not None else None,
        )

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
        with tempfile.TemporaryDirectory(prefix=temp_dir_prefix("ckpt")) as tmp:
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

    def _report(self, failure: UploadFailure) -> None:
        self._fail(failure.what, failure.error)

    def _fail(self, what: str, exc: BaseException) -> None:
        self.errors.append(exc)
        report_failure(INTEGRATION, what, exc, silent=self._silent)


# ------------------------------------------------------------------------------------------------ remote names


def _remote_name(subdir: str, local_path: str) -> str:
    base = os.path.basename(local_path)
    return f"{CHECKPOINTS_DIR}/{subdir}/{base}" if subdir else f"{CHECKPOINTS_DIR}/{base}"


def _kind_of(checkpoint_callback: Any, path: str) -> str:
    last = getattr(checkpoint_callback, "last_model_path", "")
    return "last" if last and os.path.abspath(last) == os.path.abspath(path) else "top_k"
