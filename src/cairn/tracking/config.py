"""Where runs go: the tracking URI, the artifact root and the shared store instances.

``CAIRN_TRACKING_URI`` accepts a SQLAlchemy database URL (``sqlite:///...``, ``postgresql://...``)
or a directory (``./cairn-runs``, ``file:///data/runs``) which means ``<dir>/cairn.db`` with
artifacts in ``<dir>/artifacts``. Nothing is set: ``./cairn-runs`` in the working directory.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from cairn.errors import InvalidArgument

if TYPE_CHECKING:
    from cairn.store.base import TrackingStore
    from cairn.tracking.batcher import MetricBatcher

DEFAULT_HOME = "cairn-runs"
DATABASE_FILE = "cairn.db"
_DB_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")
_HTTP_SCHEMES = ("http", "https")

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
    return _tracking_uri or resolve_tracking_uri(os.environ.get("CAIRN_TRACKING_URI") or DEFAULT_HOME)


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


def resolve_tracking_uri(uri: str) -> str:
    """Normalise a user-given tracking URI into a database URL with absolute paths."""
    uri = uri.strip()
    if not uri:
        raise InvalidArgument("tracking URI is empty")
    scheme = uri.split(":", 1)[0].lower() if "://" in uri else ""
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise InvalidArgument(f"tracking URI {uri!r} needs a file path: sqlite:///path/to/cairn.db")
        return f"sqlite:///{Path(path).expanduser().resolve()}"
    if scheme in _DB_SCHEMES:
        return uri
    if scheme in _HTTP_SCHEMES:  # a tracking server: cairn.store.rest
        return uri.rstrip("/")
    if scheme == "file":
        uri = unquote(urlparse(uri).path)
    elif scheme:
        raise InvalidArgument(
            f"tracking URI scheme {scheme!r} is not supported; use a directory, sqlite:///file.db, postgresql://... or "
            "http(s)://host:port (a tracking server)"
        )
    location = Path(uri).expanduser().resolve()
    if location.suffix == ".db":
        return f"sqlite:///{location}"
    return f"sqlite:///{location / DATABASE_FILE}"


def _absolute_if_local(uri: str) -> str:
    if "://" in uri and not uri.startswith("file://"):
        return uri.rstrip("/")
    if uri.startswith("file://"):
        uri = unquote(urlparse(uri).path)
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
