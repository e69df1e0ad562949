"""Artifact previews, content types for raw downloads, and the checkpoints of a run.

Everything goes through the run's :class:`~cairn.artifacts.ArtifactStore`, whose every path is
checked by :func:`~cairn.artifacts.paths.safe_relpath` first, so nothing outside the run's
artifact root can be read. Content types are chosen from an allow-list: anything a browser could
execute (HTML, SVG opened directly, XML, JavaScript) is either sent as ``text/plain`` or, for SVG
images, under a ``sandbox`` Content-Security-Policy set by the route.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import yaml

from cairn.artifacts import ArtifactStore
from cairn.artifacts.paths import join, safe_relpath
from cairn.errors import ArtifactNotFound, CairnError, InvalidArgument

__all__ = [
    "PREVIEW_BYTES",
    "checkpoints",
    "content_type",
    "preview",
]

PREVIEW_BYTES = 512 * 1024
"""Bytes of a file read for a text preview; longer files are shown truncated."""
EXAMPLE_BYTES = 64 * 1024
"""Bytes of a model's input example shown on the MLmodel preview."""

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".svg": "image/svg+xml",
}
TEXT_EXTENSIONS = frozenset(
    {
        *(".txt", ".log", ".md", ".rst", ".csv", ".tsv", ".py", ".cfg", ".ini", ".toml", ".sh", ".env", ".sql"),
        *(".out", ".err", ".html", ".htm", ".xml", ".js", ".css", ".ts", ".r", ".jl", ".c", ".h", ".cpp"),
        *(".java", ".go", ".rs", ".tex", ".diff", ".patch", ".properties", ".jsonl"),
    }
)
_JSON_EXTENSIONS = frozenset({".json", ".ipynb", ".geojson"})
_YAML_EXTENSIONS = frozenset({".yaml", ".yml"})
_TEXT_NAMES = frozenset({"MLmodel", "requirements.txt", "conda.yaml", "python_env.yaml", "LICENSE", "Dockerfile"})
_STEP_DIR = re.compile(r"^step-(\d+)$")
CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def content_type(path: str) -> tuple[str, bool]:
    """The Content-Type to send a raw artifact with, and whether a browser may show it inline.

    HTML, XML and scripts come back as ``text/plain`` so the browser never renders or runs them.
    """
    ext = _extension(path)
    name = posixpath.basename(path)
    if ext in IMAGE_TYPES:
        return IMAGE_TYPES[ext], True
    if ext in _JSON_EXTENSIONS:
        return "application/json", True
    if ext in TEXT_EXTENSIONS or ext in _YAML_EXTENSIONS or name in _TEXT_NAMES:
        return "text/plain; charset=utf-8", True
    return "application/octet-stream", False


def _read(store: ArtifactStore, path: str, limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of a file and whether there was more."""
    with store.open(path) as handle:
        data = handle.read(limit + 1)
    return data[:limit], len(data) > limit


def _looks_binary(data: bytes) -> bool:
    if b"\x00" in data[:8192]:
        return True
    try:
        data[:8192].decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(data[:8192]) - 4  # a multi-byte character cut at the end is fine
    return False


def _size_of(store: ArtifactStore, path: str) -> int | None:
    parent = posixpath.dirname(path)
    for info in store.list(parent or None):
        if info.path == path:
            return info.file_size
    return None


def preview(store: ArtifactStore, raw_path: str) -> dict[str, Any]:
    """What the artifact browser shows for one file.

    Returns a dict with ``path``, ``kind`` (``text``, ``json``, ``yaml``, ``image``, ``mlmodel``,
    ``binary``), ``size``, ``content_type`` (what the raw route sends), ``truncated`` (only the first
    :data:`PREVIEW_BYTES` were read), ``text`` (JSON pretty-printed), ``error`` when a JSON or YAML
    file does not parse, and for an MLmodel file ``model`` (see :func:`mlmodel_summary`). Images
    carry no content: the page loads them from the raw route.

    Raises:
        UnsafePath: the path could leave the artifact root.
        ArtifactNotFound: no file there.
        InvalidArgument: the path is a directory.
    """
    path = safe_relpath(raw_path)
    if not path:
        raise InvalidArgument("preview needs a file path, not the artifact root")
    size = _size_of(store, path)
    ext = _extension(path)
    base: dict[str, Any] = {"path": path, "size": size, "truncated": False, "content_type": content_type(path)[0]}
    if ext in IMAGE_TYPES:
        if not store.exists(path):
            raise ArtifactNotFound(f"no artifact at {path!r}")
        return {**base, "kind": "image"}
    data, truncated = _read(store, path, PREVIEW_BYTES)
    base["truncated"] = truncated
    if posixpath.basename(path) == "MLmodel":
        return {**base, "kind": "mlmodel", "text": _decode(data), "model": mlmodel_summary(store, path, data)}
    if _looks_binary(data):
        return {**base, "kind": "binary"}
    text = _decode(data)
    if ext in _JSON_EXTENSIONS and not truncated:
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            return {**base, "kind": "text", "text": text, "error": f"not valid JSON: {exc}"}
        return {**base, "kind": "json", "text": json.dumps(parsed, indent=2, ensure_ascii=False, default=str)}
    if ext in _YAML_EXTENSIONS:
        error = None
        if not truncated:
            try:
                yaml.safe_load(text)
            except yaml.YAMLError as exc:
                error = f"not valid YAML: {exc}"
        return {**base, "kind": "yaml", "text": text, **({"error": error} if error else {})}
    return {**base, "kind": "text", "text": text}


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _schema(raw: Any) -> Any:
    """A signature part: MLflow stores each as a JSON string of column or tensor specs."""
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def mlmodel_summary(store: ArtifactStore, path: str, data: bytes) -> dict[str, Any]:
    """Flavors, signature (inputs, outputs, params as parsed specs) and input example of an MLmodel file."""
    try:
        parsed = yaml.safe_load(data.decode("utf-8", errors="replace"))
    except yaml.YAMLError as exc:
        return {"error": f"MLmodel is not valid YAML: {exc}"}
    if not isinstance(parsed, dict):
        return {"error": "MLmodel is not a mapping"}
    raw_signature, raw_flavors = parsed.get("signature"), parsed.get("flavors")
    signature: dict[str, Any] = raw_signature if isinstance(raw_signature, dict) else {}
    flavors: dict[str, Any] = raw_flavors if isinstance(raw_flavors, dict) else {}
    summary: dict[str, Any] = {
        "flavors": {
            name: {k: v for k, v in (spec or {}).items() if isinstance(v, (str, int, float, bool))}
            for name, spec in flavors.items()
            if isinstance(spec, dict) or spec is None
        },
        "run_id": parsed.get("run_id"),
        "model_uuid": parsed.get("model_uuid"),
        "utc_time_created": str(parsed.get("utc_time_created", "")) or None,
        "signature": {part: _schema(signature.get(part)) for part in ("inputs", "outputs", "params")},
        "input_example": None,
    }
    info = parsed.get("saved_input_example_info")
    if isinstance(info, dict) and isinstance(info.get("artifact_path"), str):
        example_path = join(posixpath.dirname(path), info["artifact_path"])
        try:
            example, cut = _read(store, safe_relpath(example_path), EXAMPLE_BYTES)
        except (CairnError, ValueError) as exc:  # missing, a directory, or an unsafe path in the file
            summary["input_example"] = {"path": example_path, "error": str(exc)}
        else:
            text = _decode(example)
            if not cut:
                try:
                    text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
                except ValueError:
                    pass
            summary["input_example"] = {
                "path": example_path,
                "type": info.get("type"),
                "text": text,
                "truncated": cut,
            }
    return summary


# -- checkpoints -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    step: int
    path: str
    valid: bool
    problem: str | None = None
    epoch: int | None = None
    created_at: str | None = None
    metrics: dict[str, float | str] | None = None
    size: int | None = None
    files: int | None = None


def resume_command(run_id: str, step: int) -> str:
    """The Python call that resumes training from one checkpoint."""
    return f'cairn.pytorch.resume(run_id="{run_id}", step={step}, model=..., optimizer=...)'


def _walk_sizes(store: ArtifactStore, directory: str, limit: int = 10_000) -> dict[str, int | None]:
    """Sizes of every file below ``directory`` keyed by path relative to it (at most ``limit`` files)."""
    sizes: dict[str, int | None] = {}
    pending = [directory]
    while pending and len(sizes) < limit:
        current = pending.pop()
        for info in store.list(current):
            if info.is_dir:
                pending.append(info.path)
            else:
                sizes[info.path[len(directory) + 1 :]] = info.file_size
    return sizes


def _checkpoint(store: ArtifactStore, directory: str, step_from_name: int) -> CheckpointRow:
    try:
        raw, _ = _read(store, join(directory, MANIFEST), 4 * 1024 * 1024)
        manifest = json.loads(raw)
    except ArtifactNotFound:
        return CheckpointRow(step_from_name, directory, False, "no manifest.json (interrupted write?)")
    except ValueError as exc:
        return CheckpointRow(step_from_name, directory, False, f"manifest.json is unreadable: {exc}")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return CheckpointRow(step_from_name, directory, False, "manifest.json has no file list")
    files: dict[str, Any] = manifest["files"]
    present = _walk_sizes(store, directory)
    problem = None
    for rel, entry in files.items():
        expected = entry.get("size") if isinstance(entry, dict) else None
        if rel not in present:
            problem = f"{rel} is missing"
            break
        if present[rel] is not None and expected is not None and present[rel] != expected:
            problem = f"{rel} has {present[rel]} bytes, the manifest says {expected}"
            break
    step = manifest.get("step")
    epoch = manifest.get("epoch")
    raw_metrics = manifest.get("metrics")
    metrics: dict[str, Any] = raw_metrics if isinstance(raw_metrics, dict) else {}
    return CheckpointRow(
        step=step if isinstance(step, int) else step_from_name,
        path=directory,
        valid=problem is None,
        problem=problem,
        epoch=epoch if isinstance(epoch, int) else None,
        created_at=str(manifest.get("created_at") or "") or None,
        metrics={str(k): _metric(v) for k, v in metrics.items()},
        size=sum(int(e.get("size", 0)) for e in files.values() if isinstance(e, dict)),
        files=len(files),
    )


def _metric(value: Any) -> float | str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else str(value)
    return str(value)


def checkpoints(store: ArtifactStore, run_id: str) -> list[dict[str, Any]]:
    """The run's checkpoints under ``checkpoints/step-<N>/``, newest step first, with resume commands.

    A directory whose manifest is missing, unreadable, or disagrees with the files present is listed
    with ``valid: false`` and the problem (sizes are compared; hashes are not recomputed here).
    """
    try:
        entries = store.list(CHECKPOINTS_DIR)
    except ArtifactNotFound:
        return []
    rows: list[dict[str, Any]] = []
    for info in entries:
        match = _STEP_DIR.match(posixpath.basename(info.path))
        if not info.is_dir or match is None:
            continue
        row = _checkpoint(store, info.path, int(match.group(1)))
        rows.append(
            {
                "step": row.step,
                "path": row.path,
                "valid": row.valid,
                "problem": row.problem,
                "epoch": row.epoch,
                "created_at": row.created_at,
                "metrics": row.metrics or {},
                "size": row.size,
                "files": row.files,
                "resume_command": resume_command(run_id, row.step) if row.valid else None,
            }
        )
    rows.sort(key=lambda r: int(r["step"]), reverse=True)
    return rows
