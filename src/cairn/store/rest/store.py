"""``RestTrackingStore``: the :class:`~cairn.store.base.TrackingStore` contract over MLflow's REST API.

Both ``mlflow server`` and ``cairn server`` speak it, so ``CAIRN_TRACKING_URI=http(s)://host:port`` works
against either. What MLflow's API cannot express (superseding points, forking, purging, resume leases,
choosing a run id) raises :class:`~cairn.store.rest.errors.UnsupportedByServer` naming the method.

Differences from the SQL store, all forced by the API:

- A write larger than one request (log-batch: 1,000 metrics, 100 params, 100 tags, 1,000 entities, 1 MB)
  is split: params first, then tags, then metrics. Each request is atomic on the server, the whole call is
  not. :meth:`log_metric_points` sends each run's points in such requests.
- Points are never superseded (``include_superseded`` changes nothing).

Exactly once: every log-batch request carries an ``Idempotency-Key``, kept through every retry and resend (see
:mod:`cairn.store.rest.http`). The metric writer forms its batches with :meth:`RestTrackingStore.split_points`
(one request each) and gives each its key once (:meth:`RestTrackingStore.log_keyed_points`); a direct call
(``log_batch``, ``log_metric_points``) gets a fresh key per call, ``<key>/<n>`` per request. When the server
stays unreachable, the writer moves what it cannot send to :attr:`RestTrackingStore.spool` (a bounded local
directory, :mod:`cairn.store.rest.spool`) and replays it, with the same keys, when the server is back; a
terminal status set while records of the run wait there is spooled after them (``cairn sync --spool`` sends
what a process left behind).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cairn.errors import ArtifactNotFound, ExperimentNotFound, FilterSyntaxError, InvalidArgument, NotFound, RunNotFound
from cairn.store.base import MetricPoint, StoredMetricPoint, TrackingStore
from cairn.store.rest.errors import ServerUnavailable
from cairn.store.rest.http import HttpSession, encode_json
from cairn.store.rest.resume_ops import ResumeOperations
from cairn.tracking.entities import (
    Experiment,
    LifecycleStage,
    Metric,
    PagedList,
    Param,
    Run,
    RunData,
    RunInfo,
    RunStatus,
    RunTag,
    ViewType,
)

if TYPE_CHECKING:
    from cairn.store.rest.spool import Spool, SpoolRecord

logger = logging.getLogger(__name__)

__all__ = ["MAX_ENTITIES", "MAX_METRICS", "MAX_PARAMS", "MAX_REQUEST_BYTES", "MAX_TAGS", "RestTrackingStore"]

MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_TAGS = 100
MAX_ENTITIES = 1000
MAX_REQUEST_BYTES = 1_000_000
"""MLflow's log-batch limits (``mlflow/utils/validation.py``)."""
HISTORY_PAGE = 25_000
SEARCH_PAGE = 1000


def _encode_value(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float(value)


def _decode_value(value: Any) -> float:
    if isinstance(value, str):
        return float({"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}.get(value, value))
    return float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _experiment(js: dict[str, Any]) -> Experiment:
    return Experiment(
        experiment_id=str(js["experiment_id"]),
        name=str(js.get("name", "")),
        artifact_location=str(js.get("artifact_location", "")),
        lifecycle_stage=LifecycleStage(js.get("lifecycle_stage", "active")),
        tags={t["key"]: t.get("value", "") for t in js.get("tags", [])},
        creation_time=_opt_int(js.get("creation_time")),
        last_update_time=_opt_int(js.get("last_update_time")),
    )


def _run_info(js: dict[str, Any], tags: dict[str, str] | None = None) -> RunInfo:
    run_id = str(js.get("run_id") or js["run_uuid"])
    return RunInfo(
        run_id=run_id,
        experiment_id=str(js["experiment_id"]),
        run_name=str(js.get("run_name") or (tags or {}).get("mlflow.runName", "")),
        user_id=str(js.get("user_id", "")),
        status=RunStatus.parse(js.get("status", "RUNNING")),
        start_time=int(js.get("start_time") or 0),
        end_time=_opt_int(js.get("end_time")),
        artifact_uri=str(js.get("artifact_uri", "")),
        lifecycle_stage=LifecycleStage(js.get("lifecycle_stage", "active")),
    )


def _run(js: dict[str, Any]) -> Run:
    data = js.get("data") or {}
    tags = {t["key"]: t.get("value", "") for t in data.get("tags", [])}
    return Run(
        info=_run_info(js["info"], tags),
        data=RunData(
            metrics={m["key"]: _decode_value(m["value"]) for m in data.get("metrics", [])},
            params={p["key"]: p.get("value", "") for p in data.get("params", [])},
            tags=tags,
        ),
    )


def _metric(js: dict[str, Any]) -> Metric:
    return Metric(js["key"], _decode_value(js["value"]), int(js.get("timestamp") or 0), int(js.get("step") or 0))


def _metric_js(key: str, value: float, timestamp: int, step: int) -> dict[str, Any]:
    return {"key": key, "value": _encode_value(value), "timestamp": int(timestamp), "step": int(step)}


class RestTrackingStore(ResumeOperations, TrackingStore):
    """A tracking store served by an MLflow-compatible tracking server.

    Args:
        uri: ``http(s)://host[:port][/prefix]``.
        **session_options: passed to :class:`~cairn.store.rest.http.HttpSession` (timeouts, retries, transport).
    """

    def __init__(self, uri: str, **session_options: Any) -> None:
        self.http = HttpSession(uri, **session_options)
        self.uri = self.http.base_url
        self._spool: Spool | None = None
        self._spool_lock = threading.Lock()

    @property
    def spool(self) -> Spool:
        """This server's local spool (:mod:`cairn.store.rest.spool`), opened on first use."""
        with self._spool_lock:
            if self._spool is None:
                from cairn.store.rest.spool import Spool

                self._spool = Spool(self.uri)
            return self._spool

    @property
    def spool_if_open(self) -> Spool | None:
        """The spool if this process has used it (no directory is looked at otherwise)."""
        return self._spool

    def __repr__(self) -> str:
        return f"RestTrackingStore({self.uri!r})"

    def close(self) -> None:
        self.http.close()

    # -- experiments -------------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        if not name or not name.strip():
            raise InvalidArgument("experiment name must not be empty")
        payload: dict[str, Any] = {"name": name, "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}
        if artifact_location:
            payload["artifact_location"] = artifact_location
        return str(self.http.call("POST", "experiments/create", payload)["experiment_id"])

    def get_experiment(self, experiment_id: str) -> Experiment:
        js = self.http.call(
            "GET", "experiments/get", {"experiment_id": str(experiment_id)}, not_found=ExperimentNotFound
        )
        return _experiment(js["experiment"])

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        try:
            js = self.http.call(
                "GET", "experiments/get-by-name", {"experiment_name": name}, not_found=ExperimentNotFound
            )
        except NotFound:
            return None
        return _experiment(js["experiment"])

    def search_experiments(
        self,
        view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        name_like: str | None = None,
    ) -> list[Experiment]:
        found: list[Experiment] = []
        token: str | None = None
        while len(found) < max_results:
            payload: dict[str, Any] = {
                "view_type": view_type.name,
                "max_results": min(SEARCH_PAGE, max_results - len(found)),
                "order_by": ["experiment_id ASC"],
            }
            if name_like is not None:
                payload["filter"] = "name LIKE '{}'".format(name_like.replace("'", "\\'"))
            if token:
                payload["page_token"] = token
            js = self.http.call("POST", "experiments/search", payload, idempotent=True)
            found += [_experiment(e) for e in js.get("experiments", [])]
            token = js.get("next_page_token") or None
            if not token:
                break
        found.sort(key=lambda e: int(e.experiment_id) if e.experiment_id.isdigit() else 0)
        return found[:max_results]

    def delete_experiment(self, experiment_id: str) -> None:
        self._experiment_call("experiments/delete", {"experiment_id": str(experiment_id)})

    def restore_experiment(self, experiment_id: str) -> None:
        self._experiment_call("experiments/restore", {"experiment_id": str(experiment_id)})

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        self._experiment_call("experiments/update", {"experiment_id": str(experiment_id), "new_name": new_name})

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        payload = {"experiment_id": str(experiment_id), "key": key, "value": value}
        self._experiment_call("experiments/set-experiment-tag", payload)

    def _experiment_call(self, endpoint: str, payload: dict[str, Any]) -> None:
        self.http.call("POST", endpoint, payload, idempotent=True, not_found=ExperimentNotFound)

    # -- runs ----------------------------------------------------------------------------------

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
        if run_id is not None:
            raise self._unsupported("create_run(run_id=...)", "cannot choose a run's id")
        payload = {
            "experiment_id": str(experiment_id),
            "user_id": user_id,
            "start_time": int(start_time),
            "run_name": run_name,
            "tags": [{"key": t.key, "value": t.value} for t in tags],
        }
        js = self.http.call("POST", "runs/create", payload, not_found=ExperimentNotFound)
        return _run(js["run"])

    def get_run(self, run_id: str) -> Run:
        js = self.http.call("GET", "runs/get", {"run_id": run_id}, not_found=RunNotFound)
        return _run(js["run"])

    def update_run_info(
        self,
        run_id: str,
        *,
        status: RunStatus | None = None,
        end_time: int | None = None,
        run_name: str | None = None,
    ) -> RunInfo:
        """A terminal status is spooled, after the run's spooled records, when records of the run wait in the
        spool, or when the server stays unreachable; the returned info then holds only what was asked."""
        parsed = RunStatus.parse(status) if status is not None else None
        terminal = parsed if parsed is not None and parsed.is_terminated and run_name is None else None
        spool = self._spool
        if terminal is not None and spool is not None and spool.pending(run_id):
            return self._spool_status(run_id, terminal, end_time, because="records of the run wait there")
        try:
            return self.update_run_info_now(run_id, status=parsed, end_time=end_time, run_name=run_name)
        except ServerUnavailable as exc:
            if terminal is None:
                raise
            return self._spool_status(run_id, terminal, end_time, because=str(exc))

    def _spool_status(self, run_id: str, status: RunStatus, end_time: int | None, *, because: str) -> RunInfo:
        spool = self.spool
        spool.append_status(run_id, status.value, end_time)
        logger.info("cairn: the status %s of run %s is spooled (%s)", status.value, run_id, because)
        announce_spool(spool, run_id)
        return RunInfo(
            run_id=run_id,
            experiment_id="",
            run_name="",
            user_id="",
            status=status,
            start_time=0,
            end_time=end_time,
            artifact_uri="",
            lifecycle_stage=LifecycleStage.ACTIVE,
        )

    def update_run_info_now(
        self,
        run_id: str,
        *,
        status: RunStatus | None = None,
        end_time: int | None = None,
        run_name: str | None = None,
        retries: int | None = None,
    ) -> RunInfo:
        """:meth:`update_run_info` sent to the server now, never spooled."""
        payload: dict[str, Any] = {"run_id": run_id}
        if status is not None:
            payload["status"] = RunStatus.parse(status).value
        if end_time is not None:
            payload["end_time"] = int(end_time)
        if run_name is not None:
            payload["run_name"] = run_name
        js = self.http.call("POST", "runs/update", payload, idempotent=True, not_found=RunNotFound, retries=retries)
        info = _run_info(js["run_info"])
        if status is not None and RunStatus.parse(status) is RunStatus.RUNNING:
            info.end_time = None
        return info

    def delete_run(self, run_id: str) -> None:
        self.http.call("POST", "runs/delete", {"run_id": run_id}, idempotent=True, not_found=RunNotFound)

    def restore_run(self, run_id: str) -> None:
        self.http.call("POST", "runs/restore", {"run_id": run_id}, idempotent=True, not_found=RunNotFound)

    def purge_run(self, run_id: str) -> None:
        raise self._unsupported("purge_run", "has no endpoint to purge a run (run `mlflow gc` on the server)")

    def deleted_run_ids(self, older_than: int | None = None) -> list[str]:
        if older_than is not None:
            raise self._unsupported("deleted_run_ids(older_than=...)", "does not say when a run was deleted")
        ids = [e.experiment_id for e in self.search_experiments(ViewType.ALL, 50_000)]
        found: list[str] = []
        for start in range(0, len(ids), 100):
            token: str | None = None
            while True:
                page = self.search_runs(ids[start : start + 100], "", ViewType.DELETED_ONLY, SEARCH_PAGE, None, token)
                found += [run.info.run_id for run in page.items]
                token = page.next_page_token
                if not token:
                    break
        return found

    # -- run data ------------------------------------------------------------------------------

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
        # A caller's key is passed on per request (a batch may take several): "<key>/<n>".
        self._send_batch(
            run_id,
            [_metric_js(m.key, m.value, m.timestamp, m.step) for m in metrics],
            [{"key": p.key, "value": p.value} for p in params],
            [{"key": t.key, "value": t.value} for t in tags],
            key_prefix=idempotency_key,
        )

    def log_metric_points(self, points: Sequence[MetricPoint], *, idempotency_key: str | None = None) -> None:
        """Each run's points in as few log-batch requests as fit; ``<key>/<run>/<n>`` keys them (a fresh key
        per call unless given)."""
        key = idempotency_key or uuid.uuid4().hex
        by_run: dict[str, list[dict[str, Any]]] = {}
        for run_id, name, value, timestamp, step in points:
            by_run.setdefault(run_id, []).append(_metric_js(name, value, timestamp, step))
        for number, (run_id, metrics) in enumerate(by_run.items()):
            self._send_batch(run_id, metrics, [], [], key_prefix=f"{key}/{number}")

    @staticmethod
    def split_points(points: Sequence[MetricPoint]) -> list[list[MetricPoint]]:
        """``points`` as the log-batch requests they take: one run each, at most ``MAX_METRICS`` points, in order
        of each run's first point (a key longer than the API allows makes a request too large: the server
        says so)."""
        by_run: dict[str, list[MetricPoint]] = {}
        for point in points:
            by_run.setdefault(point.run_id, []).append(point)
        return [
            run_points[start : start + MAX_METRICS]
            for run_points in by_run.values()
            for start in range(0, len(run_points), MAX_METRICS)
        ]

    def log_keyed_points(self, points: Sequence[MetricPoint], key: str, *, retries: int | None = None) -> None:
        """Send the points of one request of :meth:`split_points` with its ``Idempotency-Key``.

        The same ``key`` with the same points is stored once by the cairn server, however often it is sent.
        Points of one run only; more than one request holds (over a limit) are sent as ``<key>/<n>``.
        """
        run_ids = {point.run_id for point in points}
        if len(run_ids) != 1:
            raise InvalidArgument(f"log_keyed_points takes the points of one run, got {len(run_ids)} runs")
        metrics = [_metric_js(p.key, p.value, p.timestamp, p.step) for p in points]
        payload: dict[str, Any] = {"run_id": points[0].run_id, "metrics": metrics, "params": [], "tags": []}
        body = encode_json(payload)
        if len(metrics) <= MAX_METRICS and len(body) <= MAX_REQUEST_BYTES:
            self._post_batch(payload, body, key, retries=retries)
        else:
            self._send_batch(points[0].run_id, metrics, [], [], key_prefix=key)

    def answers(self) -> bool:
        """Whether the server answers now: one ``GET /health``, no retry (any answer but 429/5xx counts)."""
        try:
            response = self.http.request("GET", "health", idempotent=True, retries=0)
        except ServerUnavailable:
            return False
        response.close()
        return response.status_code < 500 and response.status_code != 429

    def send_spooled(self, record: SpoolRecord, *, spool: Spool | None = None, retries: int | None = None) -> None:
        """Deliver one record of a spool (default: this server's) to this server: points with their key, a
        checkpoint (its files from ``spool``), the run's status.

        Raises:
            ServerUnavailable: the server is still unreachable (the record stays in the spool).
        """
        try:
            self._send_spooled(record, spool=spool, retries=retries)
        except (KeyError, TypeError, ValueError) as exc:  # a spool file is input: a malformed record is refused
            raise InvalidArgument(f"malformed {record.kind or 'unknown'} record in the spool: {exc!r}") from exc

    def _send_spooled(self, record: SpoolRecord, *, spool: Spool | None, retries: int | None) -> None:
        from cairn.store.rest.spool import record_points

        if record.kind == "points":
            self.log_keyed_points(record_points(record), str(record.data["key"]), retries=retries)
        elif record.kind == "status":
            status = RunStatus.parse(str(record.data["status"]))
            end = record.data.get("end_time")
            self.update_run_info_now(
                str(record.data["run_id"]), status=status, end_time=None if end is None else int(end), retries=retries
            )
        elif record.kind == "checkpoint":
            self._send_spooled_checkpoint(record, spool or self.spool)
        else:
            raise InvalidArgument(f"unknown spool record kind {record.kind!r} (written by a newer cairn?)")

    def _send_spooled_checkpoint(self, record: SpoolRecord, spool: Spool) -> None:
        from cairn.artifacts import get_artifact_store
        from cairn.artifacts.mlflow_artifacts import is_proxy_uri
        from cairn.checkpoint.manifest import MANIFEST_NAME

        directory, files = spool.checkpoint_files(record)
        root = self.get_run(str(record.data["run_id"])).info.artifact_uri
        store = get_artifact_store(root, tracking_uri=self.uri) if is_proxy_uri(root) else get_artifact_store(root)
        base = str(record.data["base"])
        with contextlib.suppress(ArtifactNotFound):  # an older copy of the same name: invalid from now on
            store.delete(f"{base}/{MANIFEST_NAME}")
        for relpath in files:
            parent = relpath.rsplit("/", 1)[0] if "/" in relpath else ""
            store.put_file(directory / relpath, f"{base}/{parent}" if parent else base)
        store.put_bytes((directory / MANIFEST_NAME).read_bytes(), f"{base}/{MANIFEST_NAME}")

    def _send_batch(
        self,
        run_id: str,
        metrics: list[dict[str, Any]],
        params: list[dict[str, Any]],
        tags: list[dict[str, Any]],
        *,
        key_prefix: str | None = None,
    ) -> None:
        """One log-batch request when everything fits, else params, tags, then metrics in as few as fit."""
        pieces = itertools.count()
        prefix = key_prefix or uuid.uuid4().hex

        def key(payload: dict[str, Any], body: bytes) -> str:
            """The request's ``Idempotency-Key``: ``<prefix>/<n>``, the same for every retry of the request and
            for every resend of the call with the same prefix (the split is deterministic); a call without a
            prefix gets a fresh one, so equal points or tags logged twice on purpose are written twice."""
            del payload, body
            return f"{prefix}/{next(pieces)}"

        if (
            len(metrics) <= MAX_METRICS
            and len(params) <= MAX_PARAMS
            and len(tags) <= MAX_TAGS
            and len(metrics) + len(params) + len(tags) <= MAX_ENTITIES
        ):
            payload = {"run_id": run_id, "metrics": metrics, "params": params, "tags": tags}
            body = encode_json(payload)
            if len(body) <= MAX_REQUEST_BYTES:
                if metrics or params or tags:
                    self._post_batch(payload, body, key(payload, body))
                return
        for field, items, count in (
            ("params", params, MAX_PARAMS),
            ("tags", tags, MAX_TAGS),
            ("metrics", metrics, MAX_METRICS),
        ):
            for start in range(0, len(items), count):
                self._post_piece(run_id, field, items[start : start + count], key)

    def _post_piece(
        self, run_id: str, field: str, items: list[dict[str, Any]], key: Callable[[dict[str, Any], bytes], str]
    ) -> None:
        """Send ``items`` of one field, halving the piece while its JSON is over the request size limit."""
        payload = {"run_id": run_id, field: items}
        body = encode_json(payload)
        if len(body) <= MAX_REQUEST_BYTES or len(items) == 1:  # one oversized item: the server says why
            self._post_batch(payload, body, key(payload, body))
            return
        middle = len(items) // 2
        self._post_piece(run_id, field, items[:middle], key)
        self._post_piece(run_id, field, items[middle:], key)

    def _post_batch(self, payload: dict[str, Any], body: bytes, key: str, *, retries: int | None = None) -> None:
        """One log-batch request; retried even when it may have arrived (see :mod:`cairn.store.rest.http`).

        Every retry of the request carries the same ``key``, which the cairn server records with the batch
        to write it once."""
        self.http.call(
            "POST",
            "runs/log-batch",
            payload,
            idempotent=True,
            not_found=RunNotFound,
            headers={"Idempotency-Key": key},
            encoded=body,
            retries=retries,
        )

    def delete_tag(self, run_id: str, key: str) -> None:
        self.http.call("POST", "runs/delete-tag", {"run_id": run_id, "key": key}, idempotent=True)

    def get_metric_history(self, run_id: str, key: str, *, include_superseded: bool = False) -> list[Metric]:
        if include_superseded:  # never answer with the visible points only as if they were all
            raise self._unsupported(
                "get_metric_history(include_superseded=True)",
                "returns only the points a run shows (no superseded flag)",
            )
        points: list[Metric] = []
        token: str | None = None
        while True:
            payload = {"run_id": run_id, "metric_key": key, "max_results": HISTORY_PAGE, "page_token": token}
            js = self.http.call("GET", "metrics/get-history", payload, not_found=RunNotFound)
            points += [_metric(m) for m in js.get("metrics", [])]
            token = js.get("next_page_token") or None
            if not token:
                break
        points.sort(key=lambda m: (m.step, m.timestamp))
        return points

    def search_runs(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        run_view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Run]:
        payload: dict[str, Any] = {
            "experiment_ids": [str(e) for e in experiment_ids],
            "filter": filter_string or "",
            "run_view_type": run_view_type.name,
            "max_results": int(max_results),
        }
        if order_by:
            payload["order_by"] = list(order_by)
        if page_token:
            payload["page_token"] = page_token
        try:
            js = self.http.call("POST", "runs/search", payload, idempotent=True, not_found=ExperimentNotFound)
        except InvalidArgument as exc:
            if isinstance(exc, FilterSyntaxError):
                raise
            raise FilterSyntaxError(str(exc), text=filter_string) from exc
        return PagedList([_run(r) for r in js.get("runs", [])], js.get("next_page_token") or None)

    # -- copying runs between stores -----------------------------------------------------------

    def metric_point_counts(self, run_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int]]]:
        """One get-run plus one get-history per metric of each run (the API has no aggregate)."""
        counts: dict[str, dict[str, tuple[int, int]]] = {}
        for run_id in run_ids:
            try:
                keys = sorted(self.get_run(run_id).data.metrics)
            except RunNotFound:
                continue
            per_key = {key: (len(self.get_metric_history(run_id, key)), 0) for key in keys}
            if per_key:
                counts[run_id] = per_key
        return counts

    def get_metric_points(self, run_id: str, keys: Sequence[str] | None = None) -> list[StoredMetricPoint]:
        wanted = sorted(keys) if keys is not None else sorted(self.get_run(run_id).data.metrics)
        points: list[StoredMetricPoint] = []
        for key in wanted:
            points += [
                StoredMetricPoint(m.key, m.value, m.timestamp, m.step) for m in self.get_metric_history(run_id, key)
            ]
        return points

    def import_run_data(
        self,
        run_id: str,
        *,
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
        points: Sequence[StoredMetricPoint] = (),
        supersede: Sequence[tuple[StoredMetricPoint, int]] = (),
    ) -> None:
        """Written as log-batch requests (not one transaction); superseded points cannot be expressed."""
        if supersede or any(point.superseded for point in points):
            raise self._unsupported("import_run_data (superseded points)", "has no superseded flag")
        self._send_batch(
            run_id,
            [_metric_js(p.key, p.value, p.timestamp, p.step) for p in points],
            [{"key": p.key, "value": p.value} for p in params],
            [{"key": t.key, "value": t.value} for t in tags],
        )


def announce_spool(spool: Spool, run_id: str) -> None:
    """Say on stderr what of ``run_id`` waits in the spool and how to send it (once per distinct content)."""
    summary = spool.summary(run_id)
    if summary.empty:
        return
    text = summary.describe()
    if spool.announced.get(run_id) == text:
        return
    spool.announced[run_id] = text
    sys.stderr.write(
        f"cairn: {text} of run {run_id} are spooled at {spool.run(run_id).path}; send them with: cairn sync --spool\n"
    )
    sys.stderr.flush()
