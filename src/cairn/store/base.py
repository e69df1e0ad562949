"""The tracking store contract.

A :class:`TrackingStore` persists experiments, runs and their params, tags and metric points.
Implementations must be safe to call from several threads of one process (the metric batcher
writes from its own thread) and from several processes sharing one database.

Times are integers in milliseconds since the epoch. Ids are strings: experiment ids are
decimal integers (``"0"`` is the default experiment), run ids are 32 lowercase hex characters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cairn.errors import NotFound
from cairn.tracking.entities import (
    Experiment,
    Metric,
    PagedList,
    Param,
    Run,
    RunInfo,
    RunStatus,
    RunTag,
    ViewType,
)

DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"


class MetricPoint(NamedTuple):
    """One queued metric point, as the batcher hands it to the store."""

    run_id: str
    key: str
    value: float
    timestamp: int
    step: int


class StoredMetricPoint(NamedTuple):
    """One stored metric point with its superseded flag, as a sync or an import reads and writes it."""

    key: str
    value: float
    timestamp: int
    step: int
    superseded: bool = False


@dataclass(frozen=True)
class RunLease:
    """The lease a process holds on a run while it resumes it (see :meth:`TrackingStore.acquire_run_lease`).

    Times are milliseconds since the epoch on the clock of the process that wrote them.
    """

    run_id: str
    owner: str
    acquired_time: int
    expires_time: int

    def expired(self, now_ms: int) -> bool:
        """Whether another owner may take the lease over at ``now_ms``."""
        return self.expires_time <= now_ms


class TrackingStore(ABC):
    """Persistence of experiments and runs. Errors come from :mod:`cairn.errors`."""

    # -- experiments -------------------------------------------------------------------------

    @abstractmethod
    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Create an experiment and return its id.

        ``artifact_location`` defaults to ``<artifact root>/<experiment id>``.

        Raises:
            InvalidArgument: empty name.
            ResourceAlreadyExists: an experiment (active or deleted) has this name.
        """

    @abstractmethod
    def get_experiment(self, experiment_id: str) -> Experiment:
        """Raises ExperimentNotFound when no experiment has this id."""

    @abstractmethod
    def get_experiment_by_name(self, name: str) -> Experiment | None:
        """Return the experiment (active or deleted) with this name, or ``None``."""

    @abstractmethod
    def search_experiments(
        self,
        view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        name_like: str | None = None,
    ) -> list[Experiment]:
        """Experiments ordered by id; ``name_like`` is a SQL LIKE pattern on the name."""

    @abstractmethod
    def delete_experiment(self, experiment_id: str) -> None:
        """Soft-delete the experiment and its runs. Raises ExperimentNotFound."""

    @abstractmethod
    def restore_experiment(self, experiment_id: str) -> None:
        """Undo :meth:`delete_experiment`. Raises ExperimentNotFound."""

    @abstractmethod
    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Raises ExperimentNotFound, ResourceAlreadyExists."""

    @abstractmethod
    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Set (or overwrite) a tag on an experiment. Raises ExperimentNotFound."""

    # -- runs ----------------------------------------------------------------------------------

    @abstractmethod
    def create_run(
        self,
        experiment_id: str,
        *,
        user_id: str,
        start_time: int,
        run_name: str,
        tags: Sequence[RunTag] = (),
        run_id: str | None = None,
    ) -> Run:
        """Create a RUNNING run; its artifact URI is ``<experiment location>/<run id>/artifacts``.

        ``run_id`` lets a sync keep ids across stores; it defaults to a new uuid4 hex.

        Raises:
            ExperimentNotFound: unknown experiment.
            RunNotActive: the experiment is deleted.
            ResourceAlreadyExists: ``run_id`` is taken.
        """

    @abstractmethod
    def get_run(self, run_id: str) -> Run:
        """The run with latest metric values, params and tags. Raises RunNotFound."""

    def get_run_info(self, run_id: str) -> RunInfo:
        """The run's info alone (no metrics, params or tags). Raises RunNotFound."""
        return self.get_run(run_id).info

    @abstractmethod
    def update_run_info(
        self,
        run_id: str,
        *,
        status: RunStatus | None = None,
        end_time: int | None = None,
        run_name: str | None = None,
    ) -> RunInfo:
        """Change status, end time or name (the ``mlflow.runName`` tag follows the name).

        Setting RUNNING clears ``end_time``. Raises RunNotFound.
        """

    @abstractmethod
    def delete_run(self, run_id: str) -> None:
        """Soft-delete: the run disappears from default searches. Raises RunNotFound."""

    @abstractmethod
    def restore_run(self, run_id: str) -> None:
        """Undo :meth:`delete_run`. Raises RunNotFound."""

    @abstractmethod
    def purge_run(self, run_id: str) -> None:
        """Remove a soft-deleted run and all its rows for good.

        Raises:
            RunNotFound: unknown run.
            RunNotActive: the run is not soft-deleted (only deleted runs can be purged).
        """

    @abstractmethod
    def deleted_run_ids(self, older_than: int | None = None) -> list[str]:
        """Ids of soft-deleted runs, deleted before ``older_than`` (ms) when given."""

    # -- run data ------------------------------------------------------------------------------

    @abstractmethod
    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> None:
        """Write params, tags and metric points of one run atomically.

        Re-logging a param with the same value is a no-op. NaN and +/-inf values are stored
        faithfully.

        Exactly once: with ``idempotency_key`` (1 to 256 characters, unique per logical batch; a
        client repeats it only when retrying that batch), the key and ``fingerprint`` (up to 128
        characters identifying the request, e.g. a hash of its body) are recorded in the batch's own
        transaction. A later call with the same key writes nothing and returns normally, also from
        another process on the same database; keys are remembered at least 24 hours. Stores that
        cannot record keys atomically must refuse a key (InvalidArgument) rather than ignore it.

        Raises:
            RunNotFound: unknown run.
            RunNotActive: the run is deleted.
            ParamConflict: a param already has a different value (names both values).
            InvalidArgument: a key or value breaks the rules of :mod:`cairn.tracking.validation`; or
                ``idempotency_key`` was already used with a different ``fingerprint``.
        """

    def latest_metrics(self, run_ids: Sequence[str]) -> dict[str, dict[str, Metric]]:
        """Each run's latest point per metric key, with its step and timestamp: the points behind
        ``RunData.metrics`` (latest = highest step, then latest timestamp). Unknown ids map to ``{}``.

        This default reads each metric's history; stores that keep latest values override it.
        """
        found: dict[str, dict[str, Metric]] = {}
        for run_id in run_ids:
            try:
                keys = list(self.get_run(run_id).data.metrics)
            except NotFound:
                found[run_id] = {}
                continue
            latest: dict[str, Metric] = {}
            for key in keys:
                history = self.get_metric_history(run_id, key)
                if history:
                    latest[key] = max(history, key=lambda m: (m.step, m.timestamp))
            found[run_id] = latest
        return found

    @abstractmethod
    def log_metric_points(self, points: Sequence[MetricPoint]) -> None:
        """Bulk-insert points of possibly many runs (the batcher's path; keys already valid).

        Raises:
            RunNotFound / RunNotActive: naming the first offending run; nothing is written then.
        """

    @abstractmethod
    def delete_tag(self, run_id: str, key: str) -> None:
        """Raises RunNotFound, RunNotActive, or NotFound when the tag does not exist."""

    @abstractmethod
    def get_metric_history(self, run_id: str, key: str, *, include_superseded: bool = False) -> list[Metric]:
        """All points of one metric ordered by step then timestamp. Raises RunNotFound."""

    @abstractmethod
    def supersede_metrics_after(self, run_id: str, step: int) -> int:
        """Flag every point of the run with a step above ``step`` as superseded; return how many.

        Used when training resumes from the checkpoint at ``step``: the dead process's later points
        are kept but hidden from history, latest values and search, so each curve stays continuous.

        Raises:
            RunNotFound / RunNotActive.
        """

    @abstractmethod
    def fork_run(self, run_id: str, up_to_step: int, *, run_name: str | None = None, start_time: int) -> Run:
        """A new RUNNING run in the same experiment carrying params, tags and the (not superseded)
        metric points with step <= ``up_to_step``, tagged ``cairn.forkedFrom``/``cairn.forkedAtStep``.

        The source run is left untouched. Raises RunNotFound.
        """

    @abstractmethod
    def search_runs(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        run_view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Run]:
        """Runs matching an MLflow filter string, ordered (default: start time, newest first).

        Raises:
            FilterSyntaxError: the filter or an order-by clause does not parse.
        """

    # -- copying runs between stores (cairn sync, cairn import-mlflow) ---------------------------

    @abstractmethod
    def metric_point_counts(self, run_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int]]]:
        """Per run, per metric key: ``(points, superseded points)``, superseded ones included.

        Runs without points, and unknown run ids, are absent from the result. One aggregate query
        per chunk of runs: what lets a sync tell cheaply that a run has nothing new.
        """

    @abstractmethod
    def get_metric_points(self, run_id: str, keys: Sequence[str] | None = None) -> list[StoredMetricPoint]:
        """Every point of the run (only of ``keys`` when given) with its superseded flag, ordered by
        key, then in the order the points were written. Raises RunNotFound."""

    @abstractmethod
    def import_run_data(
        self,
        run_id: str,
        *,
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
        points: Sequence[StoredMetricPoint] = (),
        supersede: Sequence[tuple[StoredMetricPoint, int]] = (),
    ) -> None:
        """Write data copied from another store into a run, in one transaction, whatever the run's
        lifecycle stage (a deleted run is copied as it is; this is not logging).

        Params and tags behave as in :meth:`log_batch` (a param with another value already stored
        raises ParamConflict and nothing is written). Points keep their ``superseded`` flag. For each
        ``(point, n)`` of ``supersede``, ``n`` stored points equal to ``point`` (same key, step,
        timestamp and value, NaN equal to NaN) that are not superseded yet become superseded. Latest
        values are maintained from the points that are not superseded.

        Raises:
            RunNotFound: unknown run.
            ParamConflict: see above.
            InvalidArgument: a key or value breaks the rules of :mod:`cairn.tracking.validation`.
        """

    # -- resume leases -------------------------------------------------------------------------
    #
    # A lease keeps two processes from resuming one run at once. Each call is one atomic statement
    # (no read-then-write), so of several processes racing for a free lease exactly one wins. Expiry
    # is judged on the caller's clock: hosts sharing a store must keep their clocks closer than a ttl.

    @abstractmethod
    def acquire_run_lease(self, run_id: str, owner: str, ttl_seconds: float) -> bool:
        """Take the run's lease for ``owner`` until now + ``ttl_seconds``; return whether it was taken.

        Succeeds when the run has no lease, when its lease has expired (a crashed holder's: taken
        over), or when ``owner`` already holds it (then it is extended, keeping its acquired time).
        Returns ``False``, changing nothing, while another owner's lease is live.

        Raises:
            RunNotFound: unknown run.
            RunNotActive: the run is deleted.
            InvalidArgument: empty or over-long owner (256 characters), or a ttl that is not positive.
        """

    @abstractmethod
    def renew_run_lease(self, run_id: str, owner: str, ttl_seconds: float) -> bool:
        """Extend ``owner``'s lease to now + ``ttl_seconds``; ``False`` when ``owner`` no longer holds it
        (released, or taken over by another owner after it expired).

        Raises:
            InvalidArgument: a ttl that is not positive.
        """

    @abstractmethod
    def release_run_lease(self, run_id: str, owner: str) -> None:
        """Drop ``owner``'s lease on the run at once; no effect when ``owner`` does not hold it."""

    @abstractmethod
    def get_run_lease(self, run_id: str) -> RunLease | None:
        """The run's stored lease, expired or not (see :meth:`RunLease.expired`), or ``None``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. The store must not be used afterwards."""
