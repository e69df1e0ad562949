"""What resume needs beyond MLflow's REST API: superseding points, forking a run, resume leases.

Mixed into :class:`~cairn.store.rest.store.RestTrackingStore`. MLflow's API cannot express these, so
against a server without them each raises :class:`~cairn.store.rest.errors.UnsupportedByServer`.
"""

from __future__ import annotations

from cairn.store.base import RunLease
from cairn.store.rest.errors import UnsupportedByServer
from cairn.tracking.entities import Run

__all__ = ["ResumeOperations"]


class ResumeOperations:
    """The resume operations of the REST store (``self.uri`` names the server)."""

    uri: str

    def _unsupported(self, method: str, why: str) -> UnsupportedByServer:
        return UnsupportedByServer(
            f"{method} is not supported by the tracking server at {self.uri}: MLflow's REST API {why}"
        )

    def supersede_metrics_after(self, run_id: str, step: int) -> int:
        raise self._unsupported("supersede_metrics_after", "cannot hide metric points (no superseded flag)")

    def fork_run(self, run_id: str, up_to_step: int, *, run_name: str | None = None, start_time: int) -> Run:
        raise self._unsupported("fork_run", "cannot fork a run")

    def acquire_run_lease(self, run_id: str, owner: str, ttl_seconds: float) -> bool:
        raise self._unsupported("acquire_run_lease", "has no run leases")

    def renew_run_lease(self, run_id: str, owner: str, ttl_seconds: float) -> bool:
        raise self._unsupported("renew_run_lease", "has no run leases")

    def release_run_lease(self, run_id: str, owner: str) -> None:
        raise self._unsupported("release_run_lease", "has no run leases")

    def get_run_lease(self, run_id: str) -> RunLease | None:
        raise self._unsupported("get_run_lease", "has no run leases")
