"""The ``MLmodel`` file: a model directory's description, in MLflow's YAML layout.

Written with ``yaml.safe_dump`` and sorted keys, as MLflow does, so a file cairn writes reads like
one MLflow writes (and loads with ``mlflow.models.Model.load``). Keys cairn does not model
(``mlflow_version``, ``model_id``, ``prompts``, ``databricks_runtime``, ...) are kept in
:attr:`Model.extra` and written back unchanged, and a signature is written back as the exact
strings it was read from unless it was changed, so an MLflow file round-trips without loss.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cairn.errors import ArtifactNotFound, InvalidArgument
from cairn.models.schema import ModelSignature, ParamSchema, Schema

__all__ = ["FORMAT_VERSION", "MLMODEL_FILE_NAME", "Model", "ModelInfo", "directory_size"]

MLMODEL_FILE_NAME = "MLmodel"
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Version of the cairn model format, stored as ``metadata.cairn_format``; bump on incompatible changes.
FORMAT_VERSION = 1

_KNOWN_KEYS = (
    "artifact_path",
    "run_id",
    "flavors",
    "model_uuid",
    "utc_time_created",
    "signature",
    "saved_input_example_info",
    "model_size_bytes",
    "metadata",
)


def _utc_now() -> str:
    """MLflow's timestamp format: naive UTC, ``'2024-05-01 12:00:00.123456'``."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def directory_size(path: str | os.PathLike[str]) -> int:
    """Total bytes of the files under ``path`` (what MLflow records as ``model_size_bytes``)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


@dataclass
class ModelInfo:
    """What ``log_model`` returns: where the model is and what the MLmodel file says about it."""

    model_uri: str
    run_id: str | None
    artifact_path: str | None
    signature: ModelSignature | None
    flavors: dict[str, dict[str, Any]]
    model_uuid: str | None
    utc_time_created: str | None
    registered_model_version: int | None = None
    metadata: dict[str, Any] | None = None
    saved_input_example_info: dict[str, Any] | None = None


@dataclass
class Model:
    """An MLmodel file. A new Model gets a fresh ``model_uuid``, the current UTC time and
    ``metadata.cairn_format``; :meth:`from_dict` and :meth:`load` keep what the file says.

    Attributes:
        flavors: flavor name -> that flavor's parameters. Every cairn model has a
            ``python_function`` entry with ``loader_module`` plus its framework's own entry.
        extra: top-level keys cairn does not model, written back unchanged.
    """

    artifact_path: str | None = None
    run_id: str | None = None
    flavors: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_uuid: str | None = field(default_factory=lambda: uuid.uuid4().hex)
    utc_time_created: str | None = field(default_factory=_utc_now)
    signature: ModelSignature | None = None
    saved_input_example_info: dict[str, Any] | None = None
    model_size_bytes: int | None = None
    metadata: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The signature as read from a file, and its exact text, to write back unchanged.
    _loaded_signature: tuple[ModelSignature, dict[str, Any]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.metadata = {**(self.metadata or {})}
        self.metadata.setdefault("cairn_format", FORMAT_VERSION)

    @property
    def cairn_format(self) -> int | None:
        """The cairn format version the model was written with; ``None`` for a model MLflow wrote."""
        value = (self.metadata or {}).get("cairn_format")
        return value if isinstance(value, int) else None

    def add_flavor(self, name: str, **params: Any) -> Model:
        """Add (or replace) a flavor entry; returns ``self`` so calls chain."""
        self.flavors[name] = params
        return self

    def get_input_schema(self) -> Schema | None:
        return self.signature.inputs if self.signature is not None else None

    def get_output_schema(self) -> Schema | None:
        return self.signature.outputs if self.signature is not None else None

    def get_params_schema(self) -> ParamSchema | None:
        return self.signature.params if self.signature is not None else None

    def get_model_info(self, model_uri: str | None = None) -> ModelInfo:
        """A :class:`ModelInfo`; ``model_uri`` defaults to ``runs:/<run_id>/<artifact_path>``."""
        return ModelInfo(
            model_uri=model_uri or f"runs:/{self.run_id}/{self.artifact_path}",
            run_id=self.run_id,
            artifact_path=self.artifact_path,
            signature=self.signature,
            flavors=self.flavors,
            model_uuid=self.model_uuid,
            utc_time_created=self.utc_time_created,
            metadata=self.metadata,
            saved_input_example_info=self.saved_input_example_info,
        )

    def to_dict(self) -> dict[str, Any]:
        """The MLmodel content, keys sorted; ``None`` fields are left out, as MLflow does."""
        result = dict(self.extra)
        values = {
            "artifact_path": self.artifact_path,
            "run_id": self.run_id,
            "flavors": {name: dict(params) for name, params in self.flavors.items()},
            "model_uuid": self.model_uuid,
            "utc_time_created": self.utc_time_created,
            "saved_input_example_info": self.saved_input_example_info,
            "model_size_bytes": self.model_size_bytes,
            "metadata": self.metadata,
        }
        result.update({k: v for k, v in values.items() if v is not None})
        if self.signature is not None:
            loaded = self._loaded_signature
            same = loaded is not None and loaded[0] == self.signature
            result["signature"] = dict(loaded[1]) if same and loaded is not None else self.signature.to_dict()
        return dict(sorted(result.items()))

    def to_yaml(self) -> str:
        try:
            return yaml.safe_dump(self.to_dict(), default_flow_style=False)
        except yaml.YAMLError as exc:
            raise InvalidArgument(
                f"the MLmodel content must be plain YAML values (str, numbers, lists, dicts): {exc}"
            ) from exc

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> Model:
        """Build from parsed MLmodel content; unknown keys go to :attr:`extra`."""
        if not isinstance(content, dict):
            raise InvalidArgument(f"MLmodel content must be a mapping, got {type(content).__name__}")
        flavors = content.get("flavors") or {}
        if not isinstance(flavors, dict) or not all(isinstance(v, dict) for v in flavors.values()):
            raise InvalidArgument(f"MLmodel 'flavors' must map flavor names to mappings, got {flavors!r}")
        raw_signature = content.get("signature")
        signature = None
        if isinstance(raw_signature, dict) and any(raw_signature.get(k) for k in ("inputs", "outputs", "params")):
            signature = ModelSignature.from_dict(raw_signature)
        created = content.get("utc_time_created")
        if isinstance(created, dt.datetime):  # an unquoted timestamp in a hand-written file
            created = str(created)
        model = cls(
            artifact_path=content.get("artifact_path"),
            run_id=content.get("run_id"),
            flavors={str(name): dict(params) for name, params in flavors.items()},
            model_uuid=content.get("model_uuid"),
            utc_time_created=created,
            signature=signature,
            saved_input_example_info=content.get("saved_input_example_info"),
            model_size_bytes=content.get("model_size_bytes"),
            extra={k: v for k, v in content.items() if k not in _KNOWN_KEYS},
        )
        model.metadata = content.get("metadata")  # exactly as written, even without cairn_format
        if signature is not None and isinstance(raw_signature, dict):
            model._loaded_signature = (signature, dict(raw_signature))
        elif raw_signature is not None:
            model.extra["signature"] = raw_signature  # an empty signature block, kept as written
        return model

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the MLmodel file to ``path``, or to ``path/MLmodel`` if ``path`` is a directory.

        The file is replaced atomically. Returns the path written.
        """
        target = Path(path)
        if target.is_dir():
            target = target / MLMODEL_FILE_NAME
        text = self.to_yaml()
        fd, tmp = tempfile.mkstemp(prefix=".MLmodel-", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Model:
        """Read an MLmodel file, given its path or its model directory.

        Raises:
            ArtifactNotFound: there is no MLmodel file there.
            InvalidArgument: the file is not valid MLmodel YAML, or was written by a newer cairn
                format than this version reads.
        """
        target = Path(path)
        if target.is_dir():
            target = target / MLMODEL_FILE_NAME
        try:
            text = target.read_text()
        except (FileNotFoundError, NotADirectoryError):
            raise ArtifactNotFound(f'no "{MLMODEL_FILE_NAME}" file at "{target}"') from None
        try:
            content = yaml.load(text, Loader=_SAFE_LOADER)  # the safe loader, libyaml's when available
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"{target} is not valid YAML: {exc}") from exc
        try:
            model = cls.from_dict(content)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{target}: {exc}") from exc
        version = model.cairn_format
        if version is not None and version > FORMAT_VERSION:
            raise InvalidArgument(
                f"{target} uses cairn model format {version}, but this cairn reads format {FORMAT_VERSION} "
                "and older; upgrade cairn to load it"
            )
        return model

    def load_input_example(self, model_dir: str | os.PathLike[str]) -> Any:
        """The input example saved in ``model_dir`` for this model, or ``None``."""
        from cairn.models.input_example import load_input_example

        if self.saved_input_example_info is None:
            return None
        return load_input_example(model_dir, info=self.saved_input_example_info, schema=self.get_input_schema())
