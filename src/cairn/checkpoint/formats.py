"""Checkpoint formats: how each one is named in a run's artifacts, how a complete one is told, how it is verified.

Three formats share one listing/verification contract (:class:`CheckpointFormat`), so the resume planner
(:mod:`cairn.checkpoint.resume`) and a run's checkpoints (:mod:`cairn.checkpoint.run_checkpoints`) are written
once:

- :data:`NATIVE`: cairn's own directories ``checkpoints/step-<N>/`` (safetensors + JSON), committed by
  ``manifest.json`` (the sha256 of every file), uploaded last;
- :data:`TRANSFORMERS`: a Trainer's ``checkpoints/checkpoint-<N>/`` directories, committed the same way;
- :data:`LIGHTNING`: Lightning ``.ckpt`` files under ``lightning_checkpoints/``, committed by their entry (with
  its sha256) in ``lightning_checkpoints/index.json``, rewritten after each upload.

Only naming, "is it complete" and "does it verify" differ; capture and restore stay with the frameworks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cairn.artifacts.base import ArtifactStore
from cairn.checkpoint.local import TEMP_PREFIX
from cairn.checkpoint.manifest import MANIFEST_NAME, parse_manifest, read_manifest
from cairn.errors import ArtifactNotFound, CheckpointCorrupt

__all__ = [
    "LIGHTNING",
    "NATIVE",
    "TRANSFORMERS",
    "CheckpointFormat",
    "LightningFileFormat",
    "ManifestDirFormat",
    "StoredCheckpoint",
]


@dataclass(frozen=True)
class StoredCheckpoint:
    """One checkpoint in a run's artifacts.

    Attributes:
        name: its name under the format's directory (``step-10``, ``checkpoint-10``, ``last.ckpt``).
        path: its artifact path.
        step: the run's metric step it was taken at: a resume continues after it, a fork copies up to it.
        global_step: the step a user names it by (Lightning's ``global_step``; else ``step``).
        order: newer checkpoints have higher values.
        complete: False for an interrupted upload (no commit marker).
        fingerprint: what the local copy must match: the manifest's bytes, or a file's sha256.
    """

    name: str
    path: str
    step: int
    global_step: int
    order: int
    complete: bool = True
    fingerprint: bytes | str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class CheckpointFormat(Protocol):
    """How one checkpoint format lives in a run's artifacts."""

    @property
    def label(self) -> str:
        """Named in messages ("cairn", "Transformers", "Lightning")."""
        ...

    @property
    def artifact_dir(self) -> str:
        """The run's artifact directory holding the checkpoints."""
        ...

    def scan(self, store: ArtifactStore) -> list[StoredCheckpoint]:
        """Every checkpoint of the run (complete or not), oldest first."""
        ...

    def fetch(self, store: ArtifactStore, entry: StoredCheckpoint, destination: Path) -> Path:
        """A verified local copy of ``entry`` inside ``destination`` (reused when it already matches).

        Raises:
            CheckpointCorrupt: the stored copy is incomplete or damaged.
        """
        ...


# -- directories committed by manifest.json ---------------------------------------------------------


@dataclass(frozen=True)
class ManifestDirFormat:
    """Directories ``<artifact_dir>/<prefix><N>/`` committed by a ``manifest.json`` written last."""

    label: str
    prefix: str
    artifact_dir: str = "checkpoints"

    def name_for(self, step: int) -> str:
        return f"{self.prefix}{int(step)}"

    def step_of(self, name: str) -> int | None:
        match = re.fullmatch(re.escape(self.prefix) + r"(\d+)", name)
        return int(match.group(1)) if match else None

    def scan(self, store: ArtifactStore) -> list[StoredCheckpoint]:
        try:
            entries = store.list(self.artifact_dir)
        except ArtifactNotFound:
            return []
        found = []
        for item in entries:
            name = item.path.rsplit("/", 1)[-1]
            step = self.step_of(name)
            if item.is_dir and step is not None:
                found.append(self._read(store, name, step))
        return sorted(found, key=lambda e: (e.step, e.order, e.name))

    def _read(self, store: ArtifactStore, name: str, step: int) -> StoredCheckpoint:
        path = f"{self.artifact_dir}/{name}"
        try:
            with store.open(f"{path}/{MANIFEST_NAME}") as handle:
                data = handle.read()
            manifest = parse_manifest(data, Path(path) / MANIFEST_NAME)
        except (ArtifactNotFound, CheckpointCorrupt, ValueError, UnicodeDecodeError):
            return StoredCheckpoint(name, path, step, step, step, complete=False)
        return StoredCheckpoint(
            name,
            path,
            manifest.step,
            manifest.step,
            manifest.step,
            fingerprint=data,
            metrics=dict(manifest.metrics),
            meta={"epoch": manifest.epoch, "created_at": manifest.created_at, "metadata": dict(manifest.metadata)},
        )

    def fetch(self, store: ArtifactStore, entry: StoredCheckpoint, destination: Path) -> Path:
        local = destination / entry.name
        manifest = local / MANIFEST_NAME
        if entry.fingerprint is not None and manifest.is_file() and manifest.read_bytes() == entry.fingerprint:
            try:
                read_manifest(local, verify_hashes=True)
                return local
            except CheckpointCorrupt:
                pass
        destination.mkdir(parents=True, exist_ok=True)
        tmp = destination / f"{TEMP_PREFIX}download-{uuid.uuid4().hex}"
        try:
            fetched = store.download(entry.path, tmp)
            read_manifest(fetched, verify_hashes=True)
            try:
                if local.exists():
                    aside = destination / f"{TEMP_PREFIX}old-{entry.name}-{uuid.uuid4().hex}"
                    os.rename(local, aside)
                    shutil.rmtree(aside, ignore_errors=True)
                os.rename(fetched, local)
            except OSError:  # another process (a second rank) put the same checkpoint there first
                if not (manifest.is_file() and manifest.read_bytes() == entry.fingerprint):
                    raise
                read_manifest(local, verify_hashes=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local


# -- Lightning .ckpt files committed by the index ---------------------------------------------------

LIGHTNING_DIR = "lightning_checkpoints"
LIGHTNING_INDEX = "index.json"
LIGHTNING_INDEX_FORMAT = "cairn.lightning_checkpoints"


@dataclass(frozen=True)
class LightningFileFormat:
    """``.ckpt`` files under ``lightning_checkpoints/``; the index lists the committed ones with their sha256."""

    label: str = "Lightning"
    artifact_dir: str = LIGHTNING_DIR

    def read_index(self, store: ArtifactStore) -> dict[str, Any] | None:
        """The parsed index (``None`` when the run has none).

        Raises:
            CheckpointCorrupt: it is not a cairn checkpoint index.
        """
        path = f"{self.artifact_dir}/{LIGHTNING_INDEX}"
        if not store.exists(path):
            return None
        with store.open(path) as handle:
            data = handle.read()
        try:
            payload = json.loads(data)
            if payload.get("format") != LIGHTNING_INDEX_FORMAT:
                raise ValueError(f"format is {payload.get('format')!r}")
            entries = [dict(e) for e in payload["checkpoints"]]
            for entry in entries:
                str(entry["path"])
            best = {str(k): str(v) for k, v in (payload.get("best") or {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointCorrupt(f"{store.uri_for(path)} is not a cairn checkpoint index: {exc}") from exc
        return {"checkpoints": entries, "best": best}

    def scan(self, store: ArtifactStore) -> list[StoredCheckpoint]:
        index = self.read_index(store)
        found = []
        for entry in (index or {}).get("checkpoints", []):
            global_step = entry.get("global_step")
            log_step = entry.get("log_step")
            global_step = int(global_step) if isinstance(global_step, int) else -1
            found.append(
                StoredCheckpoint(
                    name=str(entry.get("file") or str(entry["path"]).rsplit("/", 1)[-1]),
                    path=str(entry["path"]),
                    step=int(log_step) if isinstance(log_step, int) else -1,
                    global_step=global_step,
                    order=int(entry.get("seq", 0)),
                    fingerprint=entry.get("sha256"),
                    meta=entry,
                )
            )
        return sorted(found, key=lambda e: e.order)

    def fetch(self, store: ArtifactStore, entry: StoredCheckpoint, destination: Path) -> Path:
        destination.mkdir(parents=True, exist_ok=True)
        local = store.download(entry.path, destination)
        digest = hashlib.sha256()
        with open(local, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        if digest.hexdigest() != entry.fingerprint:
            raise CheckpointCorrupt(
                f"{entry.path} does not match the sha256 recorded when it was uploaded "
                "(the uploading process probably died while replacing it)"
            )
        return Path(local)


NATIVE = ManifestDirFormat("cairn", "step-")
TRANSFORMERS = ManifestDirFormat("Transformers", "checkpoint-")
LIGHTNING = LightningFileFormat()
