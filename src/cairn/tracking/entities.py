"""Plain data objects returned by the tracking API (MLflow-compatible field names)."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


class RunStatus(str, enum.Enum):
    """Lifecycle status of a run."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    @classmethod
    def parse(cls, value: str | RunStatus) -> RunStatus:
        try:
            return cls(str(value.value if isinstance(value, RunStatus) else value).upper())
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            from cairn.errors import InvalidArgument

            raise InvalidArgument(f"unknown run status {value!r}; expected one of {choices}") from None

    @property
    def is_terminated(self) -> bool:
        return self in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)


class LifecycleStage(str, enum.Enum):
    """Soft-delete state of an experiment or run."""

    ACTIVE = "active"
    DELETED = "deleted"


class ViewType(enum.Enum):
    """Which lifecycle stages a search returns."""

    ACTIVE_ONLY = 1
    DELETED_ONLY = 2
    ALL = 3

    def stages(self) -> tuple[LifecycleStage, ...]:
        if self is ViewType.ACTIVE_ONLY:
            return (LifecycleStage.ACTIVE,)
        if self is ViewType.DELETED_ONLY:
            return (LifecycleStage.DELETED,)
        return (LifecycleStage.ACTIVE, LifecycleStage.DELETED)


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric point. ``timestamp`` is milliseconds since the epoch."""

    key: str
    value: float
    timestamp: int
    step: int = 0

    def __eq__(self, other: object) -> bool:  # NaN == NaN for stored points
        if not isinstance(other, Metric):
            return NotImplemented
        same_value = self.value == other.value or (math.isnan(self.value) and math.isnan(other.value))
        return (self.key, self.timestamp, self.step) == (other.key, other.timestamp, other.step) and same_value

    def __hash__(self) -> int:
        return hash((self.key, self.timestamp, self.step))


@dataclass(frozen=True, slots=True)
class Param:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class RunTag:
    key: str
    value: str


@dataclass(slots=True)
class Experiment:
    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: LifecycleStage = LifecycleStage.ACTIVE
    tags: dict[str, str] = field(default_factory=dict)
    creation_time: int | None = None
    last_update_time: int | None = None


@dataclass(slots=True)
class RunInfo:
    run_id: str
    experiment_id: str
    run_name: str
    user_id: str
    status: RunStatus
    start_time: int
    end_time: int | None
    artifact_uri: str
    lifecycle_stage: LifecycleStage = LifecycleStage.ACTIVE

    @property
    def run_uuid(self) -> str:  # MLflow's older name
        return self.run_id


@dataclass(slots=True)
class RunData:
    """Latest metric values, params and tags of a run."""

    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Run:
    info: RunInfo
    data: RunData

    @property
    def run_id(self) -> str:
        return self.info.run_id


class PagedList(list[T]):
    """A page of search results (a list, as MLflow's) and the token for the next page (``None`` when done)."""

    def __init__(self, items: Iterable[T] = (), next_page_token: str | None = None) -> None:
        super().__init__(items)
        self.next_page_token = next_page_token

    @property
    def items(self) -> list[T]:
        """The page's results as a plain list."""
        return list(self)

    @property
    def token(self) -> str | None:
        """MLflow's name for :attr:`next_page_token`."""
        return self.next_page_token

    def __repr__(self) -> str:
        return f"PagedList({list.__repr__(self)}, next_page_token={self.next_page_token!r})"


@dataclass(frozen=True, slots=True)
class FileInfo:
    """An entry of an artifact listing; ``path`` is relative to the run's artifact root."""

    path: str
    is_dir: bool
    file_size: int | None = None
