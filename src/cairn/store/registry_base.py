"""The model registry store contract.

Versions of a registered model are numbered 1, 2, ... without duplicates, also when several
processes register into one name at once; the number of a deleted version is never given again.
Versions are returned with ``version`` as a decimal string (MLflow's REST form); methods accept
``str | int``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from cairn.registry.entities import ModelVersion, RegisteredModel, Stage


class RegistryStore(ABC):
    """Persistence of registered models, versions, tags, aliases and stages.

    Errors: ``NotFound`` (unknown model/version/alias), ``ResourceAlreadyExists`` (name taken),
    ``InvalidArgument`` (empty name, bad stage, alias that looks like a version such as ``v3``).
    """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections this store opened itself (a shared engine stays open)."""

    @abstractmethod
    def create_registered_model(
        self, name: str, tags: dict[str, str] | None = None, description: str | None = None
    ) -> RegisteredModel:
        """Raises ResourceAlreadyExists when the name is taken."""

    @abstractmethod
    def get_registered_model(self, name: str) -> RegisteredModel:
        """With tags, aliases and the latest version per stage. Raises NotFound."""

    @abstractmethod
    def search_registered_models(
        self,
        name_like: str | None = None,
        max_results: int = 1000,
        *,
        name: str | None = None,
        case_sensitive: bool = True,
    ) -> list[RegisteredModel]:
        """Models ordered by name, each with tags, aliases and latest versions.

        Args:
            name_like: LIKE pattern (``%``, ``_``, backslash escapes) the name must match.
            max_results: at most this many (1 to 50 000, else InvalidArgument).
            name: exact name the model must have.
            case_sensitive: ``False`` makes ``name_like`` an ILIKE.
        """

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
    def delete_registered_model_tag(self, name: str, key: str) -> None:
        """A key the model does not have is ignored (as in MLflow); an unknown model is NotFound."""

    @abstractmethod
    def create_model_version(
        self,
        name: str,
        source: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        description: str | None = None,
        user_id: str | None = None,
        run_link: str | None = None,
    ) -> ModelVersion:
        """Next version number of ``name``, creating the registered model on first use.

        Atomic across processes: concurrent callers get distinct, consecutive numbers (also when
        the name does not exist yet). Numbers are never reused: after deleting version 3 of 3 the
        next one is 4. ``source`` is stored as given; nothing is copied.
        """

    @abstractmethod
    def get_model_version(self, name: str, version: str | int) -> ModelVersion:
        """Raises NotFound naming the model and version."""

    @abstractmethod
    def search_model_versions(
        self,
        name: str | None = None,
        run_id: str | Sequence[str] | None = None,
        max_results: int = 10_000,
        *,
        name_like: str | None = None,
        case_sensitive: bool = True,
    ) -> list[ModelVersion]:
        """Versions matching every given condition, ordered by model name, then newest version first.

        ``run_id`` may be one id or several (any of them); ``name_like`` is a LIKE pattern
        (an ILIKE with ``case_sensitive=False``).
        """

    @abstractmethod
    def update_model_version(self, name: str, version: str | int, description: str) -> ModelVersion: ...

    @abstractmethod
    def delete_model_version(self, name: str, version: str | int) -> None:
        """Its aliases are removed with it; later versions keep their numbers."""

    @abstractmethod
    def set_model_version_tag(self, name: str, version: str | int, key: str, value: str) -> None: ...

    @abstractmethod
    def delete_model_version_tag(self, name: str, version: str | int, key: str) -> None:
        """A key the version does not have is ignored (as in MLflow)."""

    @abstractmethod
    def transition_model_version_stage(
        self, name: str, version: str | int, stage: Stage | str, archive_existing_versions: bool = False
    ) -> ModelVersion:
        """Move a version to a stage; with ``archive_existing_versions`` other versions in that
        stage (Staging or Production only, else InvalidArgument) move to Archived in the same
        transaction."""

    @abstractmethod
    def get_latest_versions(self, name: str, stages: Sequence[Stage | str] | None = None) -> list[ModelVersion]:
        """Highest version per stage, in the order of ``stages`` (all stages when it is None or empty).

        Stages without a version are left out. Raises NotFound for an unknown model.
        """

    @abstractmethod
    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere).

        Raises NotFound for an unknown version, InvalidArgument for a reserved alias (``latest``,
        ``v3``, digits only) or one with characters other than letters, digits, ``_`` and ``-``.
        """

    @abstractmethod
    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        """An alias the model does not have is ignored (as in MLflow); an unknown model is NotFound."""

    @abstractmethod
    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        """Raises NotFound naming the model and alias."""

    @abstractmethod
    def import_model_version(self, version: ModelVersion) -> ModelVersion:
        """Insert a version copied from another store with its own number (for ``cairn sync`` and
        ``cairn import-mlflow``, so ``models:/<name>/<number>`` URIs keep resolving).

        Keeps the version's source, run id, run link, description, user, stage, status, status
        message, creation and update times and tags; aliases are set separately. The registered
        model is created if missing, and its counter moves up to at least this number, so the next
        :meth:`create_model_version` never reuses it.

        Raises:
            ResourceAlreadyExists: the model already has a version with this number.
            InvalidArgument: bad name, number, stage or status.
        """
