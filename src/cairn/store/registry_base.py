"""The model registry store contract.

Versions of a registered model are numbered 1, 2, ... without gaps or duplicates, also when
several processes register into one name at once. Versions are returned with ``version`` as a
decimal string (MLflow's REST form); methods accept ``str | int``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from cairn.registry.entities import ModelVersion, RegisteredModel, Stage


class RegistryStore(ABC):
    """Persistence of registered models, versions, tags, aliases and stages.

    Errors: ``NotFound`` (unknown model/version/alias), ``ResourceAlreadyExists`` (name taken),
    ``InvalidArgument`` (empty name, bad stage, alias that looks like a version such as ``v3``).
    """

    @abstractmethod
    def create_registered_model(
        self, name: str, tags: dict[str, str] | None = None, description: str | None = None
    ) -> RegisteredModel:
        """Raises ResourceAlreadyExists when the name is taken."""

    @abstractmethod
    def get_registered_model(self, name: str) -> RegisteredModel:
        """With tags, aliases and the latest version per stage. Raises NotFound."""

    @abstractmethod
    def search_registered_models(self, name_like: str | None = None, max_results: int = 1000) -> list[RegisteredModel]:
        """Ordered by name; ``name_like`` is a case-insensitive LIKE pattern."""

    @abstractmethod
    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel:
        """Versions, tags and aliases follow the new name."""

    @abstractmethod
    def update_registered_model(self, name: str, description: str) -> RegisteredModel: ...

    @abstractmethod
    def delete_registered_model(self, name: str) -> None:
        """Delete the model with every version, tag and alias (the runs' artifacts stay)."""

    @abstractmethod
    def set_registered_model_tag(self, name: str, key: str, value: str) -> None: ...

    @abstractmethod
    def delete_registered_model_tag(self, name: str, key: str) -> None: ...

    @abstractmethod
    def create_model_version(
        self,
        name: str,
        source: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        description: str | None = None,
        user_id: str | None = None,
    ) -> ModelVersion:
        """Next version number of ``name``, creating the registered model on first use.

        Atomic across processes: concurrent callers get distinct, consecutive numbers.
        """

    @abstractmethod
    def get_model_version(self, name: str, version: str | int) -> ModelVersion:
        """Raises NotFound naming the model and version."""

    @abstractmethod
    def search_model_versions(
        self, name: str | None = None, run_id: str | None = None, max_results: int = 10_000
    ) -> list[ModelVersion]:
        """Newest version first."""

    @abstractmethod
    def update_model_version(self, name: str, version: str | int, description: str) -> ModelVersion: ...

    @abstractmethod
    def delete_model_version(self, name: str, version: str | int) -> None:
        """Its aliases are removed with it; later versions keep their numbers."""

    @abstractmethod
    def set_model_version_tag(self, name: str, version: str | int, key: str, value: str) -> None: ...

    @abstractmethod
    def delete_model_version_tag(self, name: str, version: str | int, key: str) -> None: ...

    @abstractmethod
    def transition_model_version_stage(
        self, name: str, version: str | int, stage: Stage, archive_existing_versions: bool = False
    ) -> ModelVersion:
        """Move a version to a stage; with ``archive_existing_versions`` other versions in that
        stage (Staging or Production only) move to Archived in the same transaction."""

    @abstractmethod
    def get_latest_versions(self, name: str, stages: list[Stage] | None = None) -> list[ModelVersion]:
        """Highest version per stage (all stages when ``stages`` is None)."""

    @abstractmethod
    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""

    @abstractmethod
    def delete_registered_model_alias(self, name: str, alias: str) -> None: ...

    @abstractmethod
    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        """Raises NotFound naming the model and alias."""
