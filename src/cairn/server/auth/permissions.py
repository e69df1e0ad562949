"""Permission levels (MLflow's names), the kinds of resources they apply to, and the authenticated user.

MLflow's semantics: READ reads; EDIT also writes (create runs, log, set tags, upload artifacts); MANAGE
also deletes, restores and renames. Admins have MANAGE on everything and manage users.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from cairn.errors import InvalidArgument

__all__ = ["Permission", "Principal", "ResourceKind", "readable_experiments", "readable_models"]


class Permission(enum.IntEnum):
    """What a user may do with one resource; each level includes the ones below it."""

    NONE = 0
    READ = 1
    EDIT = 2
    MANAGE = 3

    @classmethod
    def parse(cls, text: str) -> Permission:
        """``READ``, ``EDIT``, ``MANAGE`` or ``NO_PERMISSIONS`` (MLflow's name for NONE), any case.

        Raises:
            InvalidArgument: any other text.
        """
        name = text.strip().upper() if isinstance(text, str) else ""
        if name in ("NO_PERMISSIONS", "NONE"):
            return cls.NONE
        if name in ("READ", "EDIT", "MANAGE"):
            return cls[name]
        raise InvalidArgument(f"unknown permission {text!r}: use READ, EDIT or MANAGE (or NO_PERMISSIONS)")


class ResourceKind(str, enum.Enum):
    """What a grant applies to: an experiment (by id) or a registered model (by name)."""

    EXPERIMENT = "experiment"
    REGISTERED_MODEL = "registered_model"


@dataclass(frozen=True)
class Principal:
    """An authenticated user with every grant it holds, as read for one request.

    Attributes:
        name: the user name.
        is_admin: admins may do anything, including managing users.
        experiments: experiment id -> permission.
        models: registered model name -> permission.
    """

    name: str
    is_admin: bool
    experiments: Mapping[str, Permission] = field(default_factory=dict)
    models: Mapping[str, Permission] = field(default_factory=dict)

    def experiment_permission(self, experiment_id: str) -> Permission:
        """MANAGE for admins, the granted level otherwise, NONE without a grant."""
        if self.is_admin:
            return Permission.MANAGE
        return self.experiments.get(str(experiment_id), Permission.NONE)

    def model_permission(self, name: str) -> Permission:
        """MANAGE for admins, the granted level otherwise, NONE without a grant."""
        if self.is_admin:
            return Permission.MANAGE
        return self.models.get(name, Permission.NONE)

    def permission(self, kind: ResourceKind, resource: str) -> Permission:
        """The permission on an experiment (by id) or a registered model (by name)."""
        if kind is ResourceKind.EXPERIMENT:
            return self.experiment_permission(resource)
        return self.model_permission(resource)

    def readable_experiments(self) -> frozenset[str] | None:
        """Ids of the experiments this user may read; None for an admin (every experiment)."""
        if self.is_admin:
            return None
        return frozenset(e for e, p in self.experiments.items() if p >= Permission.READ)

    def readable_models(self) -> frozenset[str] | None:
        """Names of the registered models this user may read; None for an admin (every model)."""
        if self.is_admin:
            return None
        return frozenset(m for m, p in self.models.items() if p >= Permission.READ)


def readable_experiments(principal: Principal | None) -> frozenset[str] | None:
    """The experiment ids a request may see: None when it may see all (auth off, or an admin)."""
    return None if principal is None else principal.readable_experiments()


def readable_models(principal: Principal | None) -> frozenset[str] | None:
    """The registered model names a request may see: None when it may see all (auth off, or an admin)."""
    return None if principal is None else principal.readable_models()
