"""What resume needs beyond MLflow's REST API, under ``/api/2.0/cairn/``: supersede, fork, resume leases.

MLflow's API cannot hide the points a killed process logged after its checkpoint, fork a run at a step, or
let one process lease a run while it resumes it. These endpoints expose the store's methods for that
(:meth:`~cairn.store.base.TrackingStore.supersede_metrics_after`, ``fork_run``, ``acquire/renew/release/
get_run_lease``) as JSON, with MLflow's error shape; :mod:`cairn.store.rest.resume_ops` is their client.
The server adds no state of its own: a lease lives in the store like any other row, so several server
processes on one database agree on it, and expiry is judged on the server's clock.

Every endpoint except ``GET capabilities`` is a POST whose JSON body names the run as ``run_id`` (what an
authorization layer checks: these are writes to the run). Bodies are checked strictly: unknown fields,
wrong types and out-of-range numbers are ``INVALID_PARAMETER_VALUE`` (400) and change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cairn.server.protocol import ServerContext, endpoint_not_found, error_response, invalid, read_json
from cairn.server.tracking_api import run_json
from cairn.store.base import RunLease
from cairn.tracking import validation

__all__ = ["CAPABILITIES", "PREFIX", "routes"]

PREFIX = "/api/2.0/cairn/"
CAPABILITIES = {"resume": True}
"""What ``GET /api/2.0/cairn/capabilities`` answers: a server without the endpoint is not a cairn server."""
MAX_BODY_BYTES = 64 * 1024
MAX_OWNER_LENGTH = 256
MAX_TTL_SECONDS = 7 * 24 * 3600.0
_INT64 = (-(2**63), 2**63 - 1)
_ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

Args = dict[str, Any]
Operation = Callable[[ServerContext, Args], dict[str, Any]]


# -- strict arguments ------------------------------------------------------------------------------


def _fields(args: Args, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(args) - set(required) - set(optional))
    if unknown:
        raise invalid(f"Unknown field(s) {', '.join(map(repr, unknown))}; expected {', '.join(required + optional)}.")
    missing = [name for name in required if args.get(name) is None]
    if missing:
        raise invalid(f"Missing value for required parameter '{missing[0]}'.")


def _text(args: Args, name: str, *, max_length: int) -> str:
    value = args[name]
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"Invalid value {value!r} for parameter '{name}': expected a non-empty string.")
    if len(value) > max_length:
        raise invalid(f"Parameter '{name}' is {len(value)} characters long; the limit is {max_length}.")
    return value


def _run_id(args: Args) -> str:
    return _text(args, "run_id", max_length=256)


def _integer(args: Args, name: str, *, low: int = _INT64[0], high: int = _INT64[1]) -> int:
    value = args[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"Invalid value {value!r} for parameter '{name}': expected an integer.")
    if not low <= value <= high:
        raise invalid(f"Invalid value {value} for parameter '{name}': must be between {low} and {high}.")
    return value


def _ttl(args: Args) -> float:
    value = args["ttl_seconds"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(f"Invalid value {value!r} for parameter 'ttl_seconds': expected a number of seconds.")
    if not 0 < value <= MAX_TTL_SECONDS:
        raise invalid(f"Invalid value {value} for parameter 'ttl_seconds': must be in (0, {MAX_TTL_SECONDS:g}].")
    return float(value)


def _owner(args: Args) -> str:
    return _text(args, "owner", max_length=MAX_OWNER_LENGTH)


# -- operations ------------------------------------------------------------------------------------


def supersede_metrics(ctx: ServerContext, args: Args) -> dict[str, Any]:
    """Hide (keep, flag) every point of the run logged at a step above ``step``."""
    _fields(args, ("run_id", "step"))
    return {"superseded": ctx.client.store.supersede_metrics_after(_run_id(args), _integer(args, "step"))}


def fork(ctx: ServerContext, args: Args) -> dict[str, Any]:
    """A new run carrying the run's params, tags and visible points up to ``up_to_step``."""
    _fields(args, ("run_id", "up_to_step", "start_time"), ("run_name",))
    run_id, up_to_step = _run_id(args), _integer(args, "up_to_step")
    start_time = _integer(args, "start_time", low=0)
    name = args.get("run_name")
    run_name = validation.run_name(_text(args, "run_name", max_length=validation.MAX_RUN_NAME_LENGTH)) if name else None
    store = ctx.client.store
    run = store.fork_run(run_id, up_to_step, run_name=run_name, start_time=start_time)
    latest = store.latest_metrics([run.info.run_id]).get(run.info.run_id)
    return {"run": run_json(ctx, run, latest)}


def acquire_lease(ctx: ServerContext, args: Args) -> dict[str, Any]:
    _fields(args, ("run_id", "owner", "ttl_seconds"))
    return {"acquired": ctx.client.store.acquire_run_lease(_run_id(args), _owner(args), _ttl(args))}


def renew_lease(ctx: ServerContext, args: Args) -> dict[str, Any]:
    _fields(args, ("run_id", "owner", "ttl_seconds"))
    return {"renewed": ctx.client.store.renew_run_lease(_run_id(args), _owner(args), _ttl(args))}


def release_lease(ctx: ServerContext, args: Args) -> dict[str, Any]:
    _fields(args, ("run_id", "owner"))
    ctx.client.store.release_run_lease(_run_id(args), _owner(args))
    return {}


def get_lease(ctx: ServerContext, args: Args) -> dict[str, Any]:
    _fields(args, ("run_id",))
    lease = ctx.client.store.get_run_lease(_run_id(args))
    return {"lease": None if lease is None else lease_json(lease)}


def lease_json(lease: RunLease) -> dict[str, Any]:
    return {
        "run_id": lease.run_id,
        "owner": lease.owner,
        "acquired_time": lease.acquired_time,
        "expires_time": lease.expires_time,
    }


# -- routes ----------------------------------------------------------------------------------------


def _guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # every error becomes MLflow's error body (protocol.error_response)
            return error_response(exc)

    return endpoint


def _endpoint(ctx: ServerContext, operation: Operation) -> Callable[[Request], Awaitable[Response]]:
    async def handler(request: Request) -> Response:
        args = await read_json(request, max_bytes=MAX_BODY_BYTES)
        return JSONResponse(await run_in_threadpool(operation, ctx, args))

    return _guarded(handler)


async def _capabilities(request: Request) -> Response:
    return JSONResponse(CAPABILITIES)


_ENDPOINTS: list[tuple[str, Operation]] = [
    ("runs/supersede-metrics", supersede_metrics),
    ("runs/fork", fork),
    ("runs/lease/acquire", acquire_lease),
    ("runs/lease/renew", renew_lease),
    ("runs/lease/release", release_lease),
    ("runs/lease/get", get_lease),
]


def routes(ctx: ServerContext) -> list[BaseRoute]:
    """The cairn endpoints (POST, JSON) and ``GET capabilities``; any other path under the prefix answers
    MLflow's ``ENDPOINT_NOT_FOUND``."""
    result: list[BaseRoute] = [Route(PREFIX + path, _endpoint(ctx, op), methods=["POST"]) for path, op in _ENDPOINTS]
    result.append(Route(PREFIX + "capabilities", _guarded(_capabilities), methods=["GET"]))
    result.append(Route(PREFIX.rstrip("/") + "{rest:path}", endpoint_not_found, methods=_ANY_METHOD))
    return result
