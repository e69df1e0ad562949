"""Model registry: registered models, numbered versions, tags, aliases and stages.

The registry lives in the tracking database and shares its engine. ``runs:/`` and ``models:/``
URIs are resolved by :func:`cairn.registry.uris.resolve_model_uri`. Importing this package loads
no database code; that happens on first use.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from cairn.registry.entities import ModelVersion, ModelVersionStatus, RegisteredModel, Stage
from cairn.registry.fluent import register_model

if TYPE_CHECKING:
    from cairn.store.base import TrackingStore
    from cairn.store.registry_base import RegistryStore

__all__ = [
    "ModelVersion",
    "ModelVersionStatus",
    "RegisteredModel",
    "Stage",
    "get_registry_store",
    "register_model",
]


def get_registry_store(tracking_store: TrackingStore) -> RegistryStore:
    """The registry store on the same database (and engine) as ``tracking_store``.

    Raises:
        InvalidArgument: the tracking store is neither one of cairn's SQL stores nor a tracking server's.
    """
    from cairn.store._sql.registry import SqlRegistryStore
    from cairn.store._sql.store import SqlTrackingStore

    if isinstance(tracking_store, SqlTrackingStore):
        return SqlRegistryStore.from_tracking_store(tracking_store)
    rest = sys.modules.get("cairn.store.rest.store")  # imported (with httpx) only for http(s) tracking URIs
    if rest is not None and isinstance(tracking_store, rest.RestTrackingStore):
        from cairn.store.rest.registry import RestRegistryStore

        return RestRegistryStore(tracking_store.http)
    from cairn.errors import InvalidArgument

    raise InvalidArgument(
        f"no model registry for {tracking_store!r}: the registry lives in a SQLite or PostgreSQL tracking store"
    )
