"""Registered models and their versions (MLflow's field names)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Stage(str, enum.Enum):
    """Deployment stage of a model version (MLflow's stages, kept next to aliases)."""

    NONE = "None"
    STAGING = "Staging"
    PRODUCTION = "Production"
    ARCHIVED = "Archived"

    @classmethod
    def parse(cls, value: str | Stage) -> Stage:
        if isinstance(value, Stage):
            return value
        for stage in cls:
            if stage.value.lower() == str(value).strip().lower():
                return stage
        from cairn.errors import InvalidArgument

        choices = ", ".join(s.value for s in cls)
        raise InvalidArgument(f"unknown stage {value!r}; expected one of {choices}")


class ModelVersionStatus(str, enum.Enum):
    PENDING_REGISTRATION = "PENDING_REGISTRATION"
    FAILED_REGISTRATION = "FAILED_REGISTRATION"
    READY = "READY"


@dataclass(slots=True)
class ModelVersion:
    name: str
    version: str
    creation_timestamp: int
    last_updated_timestamp: int
    source: str
    run_id: str | None = None
    description: str | None = None
    user_id: str | None = None
    current_stage: str = Stage.NONE.value
    status: str = ModelVersionStatus.READY.value
    status_message: str | None = None
    run_link: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RegisteredModel:
    name: str
    creation_timestamp: int
    last_updated_timestamp: int
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version
    latest_versions: list[ModelVersion] = field(default_factory=list)  # latest per stage
