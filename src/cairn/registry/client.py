"""Registry methods of the client (MLflow's ``MlflowClient`` names) and a registry-only client.

:class:`RegistryMethods` is a mixin: the tracking ``Client`` inherits it, so ``client.
create_model_version(...)`` works as in MLflow. It needs only ``self.store`` (the tracking store);
the registry store on the same database is created on first use.

Where cairn differs from MLflow: ``create_model_version`` creates the registered model on first use
(as ``register_model`` does), resolves ``runs:/`` and ``models:/`` sources to the artifact location
(checking the artifact exists) instead of storing the URI, and versions are ready at once (nothing
is copied, so there is nothing to wait for).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cairn.errors import ArtifactNotFound, FilterSyntaxError, InvalidArgument
from cairn.registry.entities import ModelVersion, RegisteredModel, Stage

if TYPE_CHECKING:
    from cairn.artifacts import ArtifactStore
    from cairn.registry.lineage import ModelVersionLineage
    from cairn.registry.uris import ResolvedModel
    from cairn.store.base import TrackingStore
    from cairn.store.registry_base import RegistryStore

_MAX_SEARCH = 50_000
_MODEL_ORDER_KEYS: dict[str, Callable[[RegisteredModel], Any]] = {
    "name": lambda m: m.name,
    "creation_timestamp": lambda m: m.creation_timestamp,
    "last_updated_timestamp": lambda m: m.last_updated_timestamp,
    "timestamp": lambda m: m.last_updated_timestamp,
}


class RegistryMethods:
    """Model registry methods with MLflow's names, for a class that provides ``store``."""

    _registry_store_instance: RegistryStore | None = None

    if TYPE_CHECKING:

        @property
        def store(self) -> TrackingStore: ...

    def artifact_store(self, run_id: str) -> ArtifactStore:
        """Where run ``run_id``'s artifacts are (``mlflow-artifacts:/`` resolves on this client's server)."""
        from cairn.artifacts import get_artifact_store

        root = self.store.get_run(run_id).info.artifact_uri
        rest = sys.modules.get("cairn.store.rest.store")  # imported (with httpx) only for http(s) tracking URIs
        if rest is not None and isinstance(self.store, rest.RestTrackingStore):
            return get_artifact_store(root, tracking_uri=self.store.uri)
        return get_artifact_store(root)

    @property
    def registry_store(self) -> RegistryStore:
        """The registry store on the tracking store's database, created on first use."""
        if self._registry_store_instance is None:
            from cairn.registry import get_registry_store

            self._registry_store_instance = get_registry_store(self.store)
        return self._registry_store_instance

    # -- registered models -------------------------------------------------------------------------

    def create_registered_model(
        self, name: str, tags: Mapping[str, Any] | None = None, description: str | None = None
    ) -> RegisteredModel:
        """Raises ResourceAlreadyExists when the name is taken."""
        return self.registry_store.create_registered_model(name, _tags(tags), description)

    def get_registered_model(self, name: str) -> RegisteredModel:
        return self.registry_store.get_registered_model(name)

    def search_registered_models(
        self,
        filter_string: str | None = None,
        max_results: int = 100,
        order_by: Sequence[str] | None = None,
    ) -> list[RegisteredModel]:
        """Registered models matching ``name = '...'``, ``name LIKE '...'`` or ``name ILIKE '...'``.

        Ordered by name unless ``order_by`` names ``name``, ``creation_timestamp`` or
        ``last_updated_timestamp`` (each optionally ``ASC``/``DESC``).
        """
        from cairn.registry.filters import parse_registry_filter

        conditions = parse_registry_filter(filter_string, allow_run_id=False)
        if conditions.matches_nothing:
            return []
        limit = _MAX_SEARCH if order_by else max_results
        found = self.registry_store.search_registered_models(
            conditions.name_like, limit, name=conditions.name, case_sensitive=conditions.case_sensitive
        )
        return _ordered(found, order_by)[:max_results]

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel:
        """Versions, tags and aliases follow; ``models:/<old name>/...`` URIs stop resolving."""
        return self.registry_store.rename_registered_model(name, new_name)

    def update_registered_model(self, name: str, description: str | None = None) -> RegisteredModel:
        if description is None:
            return self.registry_store.get_registered_model(name)
        return self.registry_store.update_registered_model(name, description)

    def delete_registered_model(self, name: str) -> None:
        """Delete the model, its versions, tags and aliases; the runs' artifacts stay."""
        self.registry_store.delete_registered_model(name)

    def set_registered_model_tag(self, name: str, key: str, value: Any) -> None:
        self.registry_store.set_registered_model_tag(name, key, value)

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        self.registry_store.delete_registered_model_tag(name, key)

    # -- versions ----------------------------------------------------------------------------------

    def create_model_version(
        self,
        name: str,
        source: str | os.PathLike[str],
        run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_link: str | None = None,
        description: str | None = None,
        await_creation_for: int | None = None,
    ) -> ModelVersion:
        """Register ``source`` as the next version of ``name`` (created on first use).

        ``source`` may be a ``runs:/<run_id>/<path>`` URI (stored as that artifact's location, with
        the run id), a ``models:/`` URI (another version's source and run), a local path (stored
        absolute) or an artifact-store URL (stored as given). ``await_creation_for`` is accepted for
        MLflow compatibility; versions are ready at once.

        Raises:
            RunNotFound: a ``runs:/`` source names an unknown run.
            ArtifactNotFound: the run, or the local path, has nothing at that path.
            InvalidArgument: malformed URI or name.
        """
        del await_creation_for
        resolved = self._registration_source(source)
        from cairn.tracking import context

        return self.registry_store.create_model_version(
            name,
            resolved.location,
            run_id=run_id or resolved.run_id,
            tags=_tags(tags),
            description=description,
            user_id=context.current_user(),
            run_link=run_link,
        )

    def _registration_source(self, source: str | os.PathLike[str]) -> ResolvedModel:
        from cairn.registry import uris

        text = os.fspath(source)
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgument(f"model source must be a non-empty URI or path, got {source!r}")
        if uris.is_runs_uri(text):
            run_id, path = uris.parse_runs_uri(text)
            root = self.store.get_run(run_id).info.artifact_uri.rstrip("/")
            if not self.artifact_store(run_id).exists(path):  # mlflow-artifacts:/ resolves on this client's server
                raise ArtifactNotFound(
                    f"cannot register {text!r}: run {run_id} has no artifact at {path or '<root>'!r} "
                    f"(under {root}); log the model there first, e.g. log_model(model, name={path or 'model'!r})"
                )
            return uris.ResolvedModel(f"{root}/{path}" if path else root, run_id)
        resolved = uris.resolve_model_uri(text, self)
        if uris.is_local(text) and not os.path.exists(resolved.location):
            raise ArtifactNotFound(f"cannot register {text!r}: {resolved.location} does not exist")
        return resolved

    def get_model_version(self, name: str, version: str | int) -> ModelVersion:
        return self.registry_store.get_model_version(name, version)

    def search_model_versions(
        self,
        filter_string: str | None = None,
        max_results: int = 10_000,
        order_by: Sequence[str] | None = None,
    ) -> list[ModelVersion]:
        """Versions matching ``name = '...'``, ``name LIKE '...'``, ``run_id = '...'``, ``run_id IN (...)``
        joined by AND; ordered by name, then newest version first (``order_by`` is not supported yet).
        """
        from cairn.registry.filters import parse_registry_filter

        if order_by:
            raise FilterSyntaxError(
                "search_model_versions orders by name and newest version first; order_by is not supported"
            )
        conditions = parse_registry_filter(filter_string, allow_run_id=True)
        if conditions.matches_nothing:
            return []
        return self.registry_store.search_model_versions(
            conditions.name,
            conditions.run_ids,
            max_results,
            name_like=conditions.name_like,
            case_sensitive=conditions.case_sensitive,
        )

    def update_model_version(self, name: str, version: str | int, description: str | None = None) -> ModelVersion:
        if description is None:
            return self.registry_store.get_model_version(name, version)
        return self.registry_store.update_model_version(name, version, description)

    def delete_model_version(self, name: str, version: str | int) -> None:
        """Delete the version with its tags and aliases; its number is not given again."""
        self.registry_store.delete_model_version(name, version)

    def set_model_version_tag(self, name: str, version: str | int, key: str, value: Any) -> None:
        self.registry_store.set_model_version_tag(name, version, key, value)

    def delete_model_version_tag(self, name: str, version: str | int, key: str) -> None:
        self.registry_store.delete_model_version_tag(name, version, key)

    def get_model_version_download_uri(self, name: str, version: str | int) -> str:
        """Where the version's files are (local path or artifact-store URL)."""
        from cairn.registry.uris import resolve_model_uri

        return resolve_model_uri(f"models:/{name}/{_version_text(version)}", self).location

    def copy_model_version(self, src_model_uri: str, dst_name: str) -> ModelVersion:
        """Register the source of ``src_model_uri`` (any model URI) as the next version of ``dst_name``."""
        return self.create_model_version(dst_name, src_model_uri)

    # -- stages and aliases ------------------------------------------------------------------------

    def transition_model_version_stage(
        self, name: str, version: str | int, stage: str | Stage, archive_existing_versions: bool = False
    ) -> ModelVersion:
        """Move a version to None, Staging, Production or Archived (case-insensitive).

        With ``archive_existing_versions`` the other versions in Staging/Production move to
        Archived in the same transaction.
        """
        return self.registry_store.transition_model_version_stage(name, version, stage, archive_existing_versions)

    def get_latest_versions(self, name: str, stages: Sequence[str | Stage] | None = None) -> list[ModelVersion]:
        """The highest version in each of ``stages`` (every stage when None)."""
        return self.registry_store.get_latest_versions(name, stages)

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point ``alias`` at ``version``, moving it from the version it pointed at before."""
        self.registry_store.set_registered_model_alias(name, alias, version)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self.registry_store.delete_registered_model_alias(name, alias)

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        return self.registry_store.get_model_version_by_alias(name, alias)

    # -- lineage -----------------------------------------------------------------------------------

    def get_model_version_lineage(self, name: str, version: str | int) -> ModelVersionLineage:
        """The version with its run's params, metrics and tags, git commit and source, in one call."""
        from cairn.registry.lineage import version_lineage
        from cairn.tracking import config

        model_version = self.registry_store.get_model_version(name, version)
        batcher = config.existing_batcher(self.store)
        if batcher is not None and batcher.pending:
            batcher.flush()  # metrics this process logged are part of the lineage
        return version_lineage(model_version, self.store)


class RegistryClient(RegistryMethods):
    """A client with only the registry methods, on the tracking URI's database.

    Args:
        tracking_uri: database URL or directory; defaults to ``CAIRN_TRACKING_URI`` / ``./cairn-runs``.
        artifact_root: the store's artifact root (as for the tracking ``Client``).
    """

    def __init__(self, tracking_uri: str | None = None, artifact_root: str | None = None) -> None:
        from cairn.tracking import config

        self._store = config.get_store(tracking_uri, artifact_root)

    @property
    def store(self) -> TrackingStore:
        return self._store


def _tags(tags: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not tags:
        return None
    from cairn.tracking import validation

    return {validation.validate_key(k, "tag"): validation.tag_value(v, k) for k, v in tags.items()}


def _version_text(version: str | int) -> str:
    from cairn.registry.validation import version_number

    return str(version_number(version))


def _ordered(models: list[RegisteredModel], order_by: Sequence[str] | None) -> list[RegisteredModel]:
    if not order_by:
        return models
    for clause in reversed(list(order_by)):  # stable sorts, last key first
        parts = clause.split()
        key = _MODEL_ORDER_KEYS.get(parts[0].lower()) if parts else None
        direction = parts[1].upper() if len(parts) == 2 else "ASC"
        if key is None or len(parts) > 2 or direction not in ("ASC", "DESC"):
            raise FilterSyntaxError(
                f"cannot order registered models by {clause!r}; use name, creation_timestamp or "
                "last_updated_timestamp, optionally followed by ASC or DESC"
            )
        models = sorted(models, key=key, reverse=direction == "DESC")
    return models
