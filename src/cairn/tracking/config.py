"""Where runs go: the tracking URI, the artifact root and the shared store instances.

``CAIRN_TRACKING_URI`` (else MLflow's ``MLFLOW_TRACKING_URI``, see :mod:`cairn.tracking.env`) accepts a
SQLAlchemy database URL (``sqlite:///...``, ``postgresql://...``), a tracking server (``http(s)://``) or a
directory (``./cairn-runs``, ``file:///data/runs``, ``file:/data/runs``, ``file:runs``) which means
``<dir>/cairn.db`` with artifacts in ``<dir>/artifacts``. Nothing is set: ``./cairn-runs`` in the working
directory. Other schemes (``databricks``, ``mysql://``, ...) and MLflow file stores are refused, saying why.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from cairn.errors import ForeignStore, InvalidArgument
from cairn.tracking import env

if TYPE_CHECKING:
    from cairn.store.base import TrackingStore
    from cairn.tracking.batcher import MetricBatcher

DEFAULT_HOME = "cairn-runs"
DATABASE_FILE = "cairn.db"
_DB_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")
_HTTP_SCHEMES = ("http", "https")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_DATABRICKS_NAMES = ("databricks", "databricks-uc", "uc")  # MLflow reads these bare words as schemes
_OTHER_DATABASES = ("mysql", "mssql", "oracle", "mariadb")
_SUPPORTED = (
    "cairn supports a SQLite file (sqlite:///path/to/file.db), PostgreSQL (postgresql://...), a tracking server "
    "(http(s)://host:port), and a local directory or file: URI (./runs, file:/abs, file:///abs, file:relative)"
)

_tracking_uri: str | None = None
_artifact_root: str | None = None
_lock = threading.Lock()
_stores: dict[tuple[str, str], TrackingStore] = {}
_batchers: dict[int, MetricBatcher] = {}
_generation = 0


def generation() -> int:
    """Bumped whenever the URI set in code changes or stores are reset (clients cache on it)."""
    return _generation


def set_tracking_uri(uri: str | os.PathLike[str] | None) -> None:
    """Point this process at another store (``None`` goes back to the environment/default)."""
    global _tracking_uri, _generation
    _tracking_uri = resolve_tracking_uri(os.fspath(uri)) if uri is not None else None
    _generation += 1


def get_tracking_uri() -> str:
    """The URI set in code, else ``CAIRN_TRACKING_URI``, else ``MLFLOW_TRACKING_URI``, else ``./cairn-runs``."""
    if _tracking_uri:
        return _tracking_uri
    setting = env.lookup(env.TRACKING_URI)
    if setting is None:
        return resolve_tracking_uri(DEFAULT_HOME)
    return resolve_tracking_uri(setting.value, origin=setting.name)


def set_artifact_root(uri: str | os.PathLike[str] | None) -> None:
    global _artifact_root, _generation
    _artifact_root = os.fspath(uri) if uri is not None else None
    _generation += 1


def get_artifact_root(tracking_uri: str | None = None) -> str:
    """``CAIRN_ARTIFACT_ROOT`` if set, else ``artifacts/`` beside a SQLite file, else ./cairn-runs/artifacts."""
    explicit = _artifact_root or os.environ.get("CAIRN_ARTIFACT_ROOT")
    if explicit:
        return _absolute_if_local(explicit)
    uri = tracking_uri or get_tracking_uri()
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        return str(Path(uri[len("sqlite:///") :]).parent / "artifacts")
    return str(Path(DEFAULT_HOME).resolve() / "artifacts")


def resolve_tracking_uri(uri: str, *, origin: str | None = None) -> str:
    """Normalise a user-given tracking URI into a database URL with absolute paths.

    Args:
        uri: a database URL, an ``http(s)://`` server, a directory, or a ``file:`` URI in the forms MLflow
            parses (``file:/abs``, ``file:///abs``, ``file://localhost/abs``, ``file:rel``).
        origin: the environment variable ``uri`` came from, named in errors.

    Raises:
        InvalidArgument: an empty URI, a scheme cairn does not support (``databricks``, ``mysql``, ...), a
            ``file:`` URI on another host, a file that is not a ``.db`` database.
        ForeignStore: the directory is (or is inside) an MLflow file store: ``cairn import-mlflow`` copies it.
    """
    where = f"{origin}={uri!r}" if origin else f"tracking URI {uri!r}"
    text = uri.strip()
    if not text:
        raise InvalidArgument(f"{where} is empty")
    if text.lower() in _DATABRICKS_NAMES:
        raise InvalidArgument(f"{where}: {_unsupported(text.lower())}; for a directory of that name write ./{text}")
    scheme = _scheme(text)
    if scheme == "sqlite":
        path = text[len("sqlite:///") :] if text.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise InvalidArgument(f"{where} needs a file path: sqlite:///path/to/cairn.db")
        return f"sqlite:///{Path(path).expanduser().resolve()}"
    if scheme in _DB_SCHEMES:
        return text
    if scheme in _HTTP_SCHEMES:  # a tracking server: cairn.store.rest
        return text.rstrip("/")
    if scheme == "file":
        text = _file_uri_path(text, where)
    elif scheme:
        raise InvalidArgument(f"{where}: {_unsupported(scheme)}")
    location = Path(text).expanduser().resolve()
    if location.suffix == ".db":
        return f"sqlite:///{location}"
    if location.is_file():
        raise InvalidArgument(
            f"{where}: {location} is a file, not a directory; give a directory (cairn keeps {DATABASE_FILE} and "
            "artifacts/ in it) or a SQLite database as sqlite:///path/to/file.db"
        )
    if not (location / DATABASE_FILE).exists():  # a store cairn already uses is used whatever lies beside it
        _refuse_mlflow_file_store(location, where)
    return f"sqlite:///{location / DATABASE_FILE}"


def _scheme(text: str) -> str:
    """The URI scheme of ``text`` (lower case), or "" for a path; one letter is a Windows drive, not a scheme."""
    match = _SCHEME.match(text)
    return match.group(1).lower() if match and len(match.group(1)) > 1 else ""


def _file_uri_path(text: str, where: str) -> str:
    """The local path of a ``file:`` URI as MLflow reads it: ``file:/abs``, ``file:///abs``, ``file:rel``."""
    parsed = urlparse(text)
    if parsed.netloc not in ("", "localhost"):
        raise InvalidArgument(
            f"{where}: a file: URI on host {parsed.netloc!r}; cairn reads local paths only (file:/abs, file:///abs, "
            "file:relative); for a shared store use postgresql://... or a tracking server http(s)://..."
        )
    path = unquote(parsed.path)
    if not path:
        raise InvalidArgument(f"{where} names no path (file:/abs, file:///abs, file:relative)")
    return path


def _unsupported(scheme: str) -> str:
    base = scheme.split("+", 1)[0]
    if base in _DATABRICKS_NAMES:
        why = "MLflow's Databricks-hosted tracking, which cairn does not talk to"
    elif base in _OTHER_DATABASES:
        why = (
            "cairn's SQL store runs on SQLite and PostgreSQL only (its schema migrations are written and tested for "
            "those two); to bring an MLflow store kept in that database into cairn, run "
            "`cairn import-mlflow --from <that URI> --to <cairn store>`"
        )
    elif base in ("runs", "models"):
        why = f"{base}:/ URIs name a run's artifacts or a model, not a tracking store"
    else:
        why = "cairn does not know it; a directory whose name holds a colon is written ./name"
    return f"the scheme {scheme!r} is not supported ({why}). {_SUPPORTED}"


def _refuse_mlflow_file_store(location: Path, where: str) -> None:
    """Raise :class:`ForeignStore` if ``location`` is an MLflow file store or a directory inside one.

    MLflow's ``FileStore`` keeps one directory per experiment (numeric id) holding ``meta.yaml``, a
    directory per run holding its own ``meta.yaml``, and deleted experiments under ``.trash/``.
    """
    root: Path | None = location if _is_mlflow_file_store(location) else None
    if root is None and (location / "meta.yaml").is_file():  # an experiment's or a run's directory
        root = next((p for p in (location.parent, location.parent.parent) if _is_mlflow_file_store(p)), None)
    if root is None:
        return
    inside = "an MLflow file store" if root == location else f"inside the MLflow file store {root}"
    raise ForeignStore(
        f"{where}: {location} is {inside}, not a cairn store; cairn does not write into it. Import it into a cairn "
        f"store of its own with `cairn import-mlflow --from {root} --to <cairn store>` (e.g. --to ./{DEFAULT_HOME}), "
        "then use that store"
    )


def _is_mlflow_file_store(directory: Path) -> bool:
    try:
        for parent in (directory, directory / ".trash"):
            if parent.is_dir() and any(
                child.name.isdigit() and (child / "meta.yaml").is_file() for child in parent.iterdir()
            ):
                return True
    except OSError:  # unreadable: not recognisable, and cairn's own open reports the real problem
        return False
    return False


def _absolute_if_local(uri: str) -> str:
    if _scheme(uri) == "file":
        uri = _file_uri_path(uri, f"artifact root {uri!r}")
    elif "://" in uri:
        return uri.rstrip("/")
    return str(Path(uri).expanduser().resolve())


def get_store(tracking_uri: str | None = None, artifact_root: str | None = None) -> TrackingStore:
    """The process-wide store for a URI (one engine and one metric batcher per database)."""
    uri = resolve_tracking_uri(tracking_uri) if tracking_uri else get_tracking_uri()
    root = _absolute_if_local(artifact_root) if artifact_root else get_artifact_root(uri)
    key = (uri, root)
    store = _stores.get(key)
    if store is None:
        with _lock:
            store = _stores.get(key)
            if store is None:
                if uri.split(":", 1)[0].lower() in _HTTP_SCHEMES:
                    from cairn.store.rest import RestTrackingStore

                    store = RestTrackingStore(uri)
                else:
                    from cairn.store._sql.store import SqlTrackingStore

                    store = SqlTrackingStore(uri, root)
                _stores[key] = store
    return store


def get_batcher(store: TrackingStore) -> MetricBatcher:
    """The background metric writer of a store, started on first use."""
    batcher = _batchers.get(id(store))
    if batcher is None:
        with _lock:
            batcher = _batchers.get(id(store))
            if batcher is None:
                from cairn.tracking.batcher import MetricBatcher

                batcher = MetricBatcher(store)
                _batchers[id(store)] = batcher
    return batcher


def existing_batcher(store: TrackingStore) -> MetricBatcher | None:
    return _batchers.get(id(store))


def all_batchers() -> list[MetricBatcher]:
    return list(_batchers.values())


def reset() -> None:
    """Flush and close every store of this process and forget URIs set in code (used by tests)."""
    global _tracking_uri, _artifact_root, _generation
    with _lock:
        _generation += 1
        for batcher in _batchers.values():
            batcher.close()
        for store in _stores.values():
            store.close()
        _batchers.clear()
        _stores.clear()
        _tracking_uri = None
        _artifact_root = None
