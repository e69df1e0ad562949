"""Where a model URI points: ``runs:/``, ``models:/``, local paths and artifact-store URLs.

Accepted forms:

* ``runs:/<run_id>/<path>``: ``<path>`` under the run's artifact root.
* ``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``models:/<name>/latest`` (the highest
  version) and ``models:/<name>/<stage>`` (the highest version in Production, Staging, ...): the
  version's recorded source.
* A local path or ``file://`` URI: the absolute local path.
* Any other URL (``s3://...``, ``gs://...``): passed through unchanged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from cairn.errors import InvalidArgument, NotFound
from cairn.registry.entities import ModelVersion, Stage

if TYPE_CHECKING:
    from cairn.registry.client import RegistryMethods

__all__ = [
    "MODEL_URI_FORMS",
    "ResolvedModel",
    "is_local",
    "is_registry_uri",
    "is_runs_uri",
    "parse_runs_uri",
    "resolve_model_uri",
]

MODEL_URI_FORMS = (
    "runs:/<run_id>/<path>, models:/<name>/<version>, models:/<name>@<alias>, models:/<name>/latest, "
    "models:/<name>/<stage> (None, Staging, Production, Archived), a local path or file:// URI, "
    "or an artifact-store URL such as s3://bucket/path"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
#: A version's source may itself be a runs:/ or models:/ URI; this bounds how deep that goes.
_MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model URI resolved to a location.

    Attributes:
        location: local absolute path or artifact-store URL of the model directory (or file).
        run_id: the run that produced it, when known.
        name: registered model name (``models:/`` URIs only).
        version: registered version, as a decimal string (``models:/`` URIs only).
    """

    location: str
    run_id: str | None = None
    name: str | None = None
    version: str | None = None


def _scheme(uri: str) -> str | None:
    match = _SCHEME.match(uri)
    if match is None or len(match.group(1)) == 1:  # "C:\\models" is a Windows drive, not a scheme
        return None
    return match.group(1).lower()


def is_registry_uri(uri: str) -> bool:
    """Whether ``uri`` needs a store to resolve (``runs:/`` or ``models:/``)."""
    return _scheme(uri) in ("runs", "models")


def is_runs_uri(uri: str) -> bool:
    return _scheme(uri) == "runs"


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a local path or ``file:`` URI."""
    return _scheme(uri) in (None, "file")


def _malformed(uri: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"malformed model URI {uri!r}: {why}; expected one of {MODEL_URI_FORMS}")


def parse_runs_uri(uri: str) -> tuple[str, str]:
    """``(run_id, path)`` of ``runs:/<run_id>/<path>`` (``path`` may be empty: the artifact root)."""
    from cairn.artifacts.paths import safe_relpath

    if not uri.startswith("runs:/") or uri.startswith("runs://"):
        raise _malformed(uri, "a runs URI starts with 'runs:/' followed by the run id")
    run_id, _, path = uri[len("runs:/") :].partition("/")
    if not _RUN_ID.match(run_id):
        raise _malformed(uri, f"{run_id!r} is not a run id (32 lowercase hex characters)")
    return run_id, safe_relpath(path) if path.strip("/") else ""


def _parse_models_uri(uri: str) -> tuple[str, str, str]:
    """``(name, kind, ref)`` with kind one of version, alias, latest, stage."""
    if not uri.startswith("models:/") or uri.startswith("models://"):
        raise _malformed(uri, "a models URI starts with 'models:/' followed by the model name")
    rest = uri[len("models:/") :].rstrip("/")
    if "/" in rest:
        name, ref = rest.split("/", 1)
        if not name or not ref or "/" in ref:
            raise _malformed(uri, "expected exactly a name and a version, 'latest' or a stage after 'models:/'")
        if ref.isdecimal():
            return name, "version", str(int(ref))
        if ref.lower() == "latest":
            return name, "latest", ref
        try:
            return name, "stage", Stage.parse(ref).value
        except InvalidArgument:
            raise _malformed(uri, f"{ref!r} is neither a version number, 'latest' nor a stage") from None
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if not name or not alias:
            raise _malformed(uri, "an alias URI needs both a name and an alias")
        return name, "alias", alias
    raise _malformed(uri, f"no version given for model {rest!r}")


def _local_path(uri: str) -> str:
    if uri.startswith("file:"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise _malformed(uri, f"file URIs name a local path; host {parsed.netloc!r} is not this machine")
        uri = unquote(parsed.path)
    return os.path.abspath(os.path.expanduser(uri))


def _version_for(client: RegistryMethods, uri: str, name: str, kind: str, ref: str) -> ModelVersion:
    if kind == "version":
        return client.get_model_version(name, ref)
    if kind == "alias":
        return client.get_model_version_by_alias(name, ref)
    if kind == "latest":
        versions = client.get_latest_versions(name)
        if not versions:
            raise NotFound(f"model URI {uri!r}: registered model {name!r} has no versions")
        return max(versions, key=lambda v: int(v.version))
    found = client.get_latest_versions(name, [ref])
    if not found:
        raise NotFound(f"model URI {uri!r}: registered model {name!r} has no version in stage {ref}")
    return found[0]


def resolve_model_uri(uri: str | os.PathLike[str], client: RegistryMethods | None = None) -> ResolvedModel:
    """Resolve a model URI to the location of the model's files (nothing is downloaded).

    Args:
        uri: one of the forms in the module docstring.
        client: the registry client to look ``runs:/`` and ``models:/`` URIs up with (default: a
            client on the current tracking URI).

    Raises:
        InvalidArgument: malformed ``runs:/``/``models:/`` URI (the message lists the accepted forms).
        RunNotFound: ``runs:/`` names an unknown run.
        NotFound: unknown registered model, version, alias, or no version in that stage.
    """
    text = os.fspath(uri)
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument(f"model URI must be a non-empty string or path, got {uri!r}")
    if not is_registry_uri(text):
        return ResolvedModel(_local_path(text) if is_local(text) else text)
    if client is None:
        from cairn.registry.client import RegistryClient

        client = RegistryClient()
    return _resolve(text, client, depth=0)


def _resolve(uri: str, client: RegistryMethods, depth: int) -> ResolvedModel:
    if is_runs_uri(uri):
        run_id, path = parse_runs_uri(uri)
        root = client.store.get_run_info(run_id).artifact_uri.rstrip("/")
        return ResolvedModel(f"{root}/{path}" if path else root, run_id=run_id)
    if _scheme(uri) != "models":
        return ResolvedModel(_local_path(uri) if is_local(uri) else uri)
    name, kind, ref = _parse_models_uri(uri)
    version = _version_for(client, uri, name, kind, ref)
    source = version.source
    if is_registry_uri(source):  # a version registered from another URI form (e.g. by MLflow)
        if depth >= _MAX_DEPTH:
            raise InvalidArgument(f"model URI {uri!r}: sources refer to each other more than {_MAX_DEPTH} deep")
        inner = _resolve(source, client, depth + 1)
        return ResolvedModel(inner.location, version.run_id or inner.run_id, version.name, version.version)
    if is_local(source):
        source = _local_path(source)
    return ResolvedModel(source, version.run_id, version.name, version.version)
