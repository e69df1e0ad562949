"""Model registry: registered models, numbered versions, tags, aliases and stages.

The registry lives in the tracking database and shares its engine. ``runs:/`` and ``models:/``
URIs are resolved by :func:`cairn.registry.uris.resolve_model_uri`. Importing this package loads
no database code; that happens on first use.
"""

from __future__ import annotations

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
        InvalidArgument: the tracking store is not one of cairn's SQL stores.
    """
    from cairn.store._sql.registry import SqlRegistryStore
    from cairn.store._sql.store import SqlTrackingStore

    if isinstance(tracking_store, SqlTrackingStore):
        return SqlRegistryStore.from_tracking_store(tracking_store)
    from cairn.errors import InvalidArgument

    raise InvalidArgument(
        f"no model registry for {tracking_store!r}: the registry lives in a SQLite or PostgreSQL tracking store"
    )
