"""What resume needs beyond MLflow's REST API: superseding points, forking a run, resume leases.

Mixed into :class:`~cairn.store.rest.store.RestTrackingStore`. ``cairn server`` offers them under
``/api/2.0/cairn/`` (:mod:`cairn.server.cairn_api`). A server without them (``mlflow server`` answers 404)
makes each raise :class:`~cairn.store.rest.errors.UnsupportedByServer` saying that resuming into the same
run needs a cairn server and what to do instead.

Retries (see :mod:`cairn.store.rest.http`): the lease calls are idempotent (taking or renewing a lease one
already holds extends it, releasing twice releases once) and are retried after any failure. Superseding
and forking are sent again only when the server surely did not get them: a fork repeated would make a
second run, and a supersede repeated after its caller moved on could hide points logged meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cairn.errors import CairnError, RunNotFound
from cairn.store.base import RunLease
from cairn.store.rest.errors import UnsupportedByServer
from cairn.store.rest.http import encode_json
from cairn.tracking.entities import Run

if TYPE_CHECKING:
    from cairn.store.rest.http import HttpSession

__all__ = ["CAIRN_API", "ResumeOperations"]

CAIRN_API = "api/2.0/cairn"


class ResumeOperations:
    """The resume operations of the REST store (``self.uri`` names the server, ``self.http`` talks to it)."""

    uri: str
    http: HttpSession

    if TYPE_CHECKING:

        def get_run(self, run_id: str) -> Run: ...

    def _unsupported(self, method: str, why: str) -> UnsupportedByServer:
        return UnsupportedByServer(
            f"{method} is not supported by the tracking server at {self.uri}: MLflow's REST API {why}"
        )

    def _cairn_call(self, endpoint: str, payload: dict[str, Any], *, idempotent: bool, method: str) -> dict[str, Any]:
        """POST ``payload`` to ``/api/2.0/cairn/<endpoint>``; the decoded JSON answer.

        Raises:
            UnsupportedByServer: the server has no such endpoint (an MLflow server); the message says what to do.
        """
        response = self.http.request(
            "POST",
            f"{CAIRN_API}/{endpoint}",
            body=encode_json(payload),
            headers={"Content-Type": "application/json"},
            idempotent=idempotent,
        )
        try:
            self.http.raise_for_error(response, not_found=RunNotFound)
        except UnsupportedByServer as exc:
            raise self._needs_cairn_server(method, str(payload.get("run_id", ""))) from exc
        try:
            decoded = response.json()
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            raise CairnError(
                f"POST {self.uri}/{CAIRN_API}/{endpoint} answered {response.status_code} with a body that is not a "
                f"JSON object: {response.text[:200]!r}"
            )
        return decoded

    def _needs_cairn_server(self, method: str, run_id: str) -> UnsupportedByServer:
        return UnsupportedByServer(
            f"{method} is not supported by the tracking server at {self.uri} (it has no /{CAIRN_API}/ endpoints: "
            f"an MLflow server, or a cairn server older than them). Resuming run {run_id} (continuing it, or "
            "forking it at an older checkpoint) needs a cairn server: MLflow's REST API cannot hide the points "
            "a killed process logged after its checkpoint, fork a run, nor keep a second process from resuming it. "
            "Point CAIRN_TRACKING_URI at a `cairn server` (or at its database), or train in a new run (no "
            "resume, CAIRN_RUN_ID unset) and load the checkpoint's state yourself from "
            "cairn.pytorch.checkpoint_path(run_id)"
        )

    # -- supersede, fork -------------------------------------------------------------------------------

    def supersede_metrics_after(self, run_id: str, step: int) -> int:
        payload = {"run_id": run_id, "step": int(step)}
        js = self._cairn_call("runs/supersede-metrics", payload, idempotent=False, method="supersede_metrics_after")
        return int(js.get("superseded", 0))

    def fork_run(self, run_id: str, up_to_step: int, *, run_name: str | None = None, start_time: int) -> Run:
        payload: dict[str, Any] = {"run_id": run_id, "up_to_step": int(up_to_step), "start_time": int(start_time)}
        if run_name is not None:
            payload["run_name"] = run_name
        js = self._cairn_call("runs/fork", payload, idempotent=False, method="fork_run")
        return self.get_run(str(js["run"]["info"]["run_id"]))

    # -- resume leases ---------------------------------------------------------------------------------

    def acquire_run_lease(self, run_id: str, owner: str, ttl_seconds: float) -> bool:
        payload = {"run_id": run_id, "owner": owner, "ttl_seconds": float(ttl_seconds)}
        js = self._cairn_call("runs/lease/acquire", payload, idempotent=True, method="acquire_run_lease")
        return bool(js["acquired"])

    def renew_run_lease(self, run_id: str, owner: str, ttl_seconds: float) -> bool:
        payload = {"run_id": run_id, "owner": owner, "ttl_seconds": float(ttl_seconds)}
        js = self._cairn_call("runs/lease/renew", payload, idempotent=True, method="renew_run_lease")
        return bool(js["renewed"])

    def release_run_lease(self, run_id: str, owner: str) -> None:
        payload = {"run_id": run_id, "owner": owner}
        self._cairn_call("runs/lease/release", payload, idempotent=True, method="release_run_lease")

    def get_run_lease(self, run_id: str) -> RunLease | None:
        js = self._cairn_call("runs/lease/get", {"run_id": run_id}, idempotent=True, method="get_run_lease")
        lease = js.get("lease")
        if lease is None:
            return None
        return RunLease(
            run_id=str(lease["run_id"]),
            owner=str(lease["owner"]),
            acquired_time=int(lease["acquired_time"]),
            expires_time=int(lease["expires_time"]),
        )
