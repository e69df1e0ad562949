"""``cairn server`` vs the real ``mlflow server``: MLflow's REST API under load, side by side in one run.

Both servers run as subprocesses on free loopback ports, with the same number of workers (``--workers``,
default 1 on this 2-core machine), over the same kind of backend: a fresh SQLite file each (default) or
a fresh PostgreSQL database each (``--pg``). Both stores get the same data before the servers start:

- an experiment ``search`` with ``--runs`` runs (default 10,000), each with metrics ``m0..m9`` and
  params ``p0..p9`` (values from ``_common.run_data``). cairn's through its own store (``create_run`` +
  ``log_batch`` params + ``log_metric_points``); MLflow's through MLflow's ``SqlAlchemyStore`` (schema,
  experiment) and then bulk SQL inserts into its own ORM tables (``runs``, ``params``, ``metrics``,
  ``latest_metrics``): the same rows its REST handlers would have written, in seconds instead of minutes.
- a run ``history`` with one key of ``--history`` points (default 100,000), the same way.

On PostgreSQL both databases are then ``ANALYZE``d, as autovacuum would do within a minute on a server
that runs it (the test server here runs with ``autovacuum = off``, and without statistics the planner
picks nested loops over all 10,000 runs). Both servers get a connection pool that fits the load:
``pool_size`` = ``--clients`` plus 10 overflow (MLflow: ``MLFLOW_SQLALCHEMYSTORE_POOL_SIZE`` /
``MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW``; cairn: ``CAIRN_DB_POOL_SIZE`` / ``CAIRN_DB_MAX_OVERFLOW``). With
SQLAlchemy's default 5 + 10 and 20 clients, MLflow's requests waited 30 s for a connection and failed.

Then, measured by the same Python code against both servers (httpx, one keep-alive ``httpx.Client`` per
thread):

1. ``--clients`` threads (default 20), each on its own run, sending ``runs/log-batch`` of 10 and of 500
   metrics for ``--seconds`` each: points/s, requests/s, p50/p99 latency of the requests answered 200;
   failed requests are counted and shown. The same with ``--low-clients`` threads (default 4), where
   neither server queues requests.
2. The ``--clients`` threads sending ``runs/create``.
3. ``runs/search`` over the 10,000 runs (``metrics.m3 > 0.5``, ``order_by metrics.m7 DESC``, 100 per page)
   by one client, ``--reps`` times: p50/p99 (the issue's target is a single-client latency).
4. ``metrics/get-history`` of the 100,000-point key by one client (following ``next_page_token``).
5. Floor: ``GET /health`` from the same threads on the cairn server (what the client harness and
   uvicorn alone can do on this machine).
6. One cairn process (a subprocess) logging through HTTP: ``cairn.set_tracking_uri(http://cairn-server)``,
   ``cairn.log_metric`` in a loop of ``--points`` calls (4 keys), rate = points / (first call ->
   ``cairn.flush()`` returned), per-call p99 from ``perf_counter_ns`` around each call; the server's
   history is then checked to hold every point.

The load generator shares the 2 cores with the server it measures: every rate is what this machine
does with client and server on it, for both servers alike.

    .venv/bin/python benchmarks/server.py [--quick] [--pg] [--workers 1] [--clients 20] [--low-clients 4]

Writes its section of ``benchmarks/RESULTS.md`` (``--quick`` only prints).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
sys.path.insert(0, str(HERE))

from _common import SEARCH_FILTER, SEARCH_ORDER_BY, SEARCH_PAGE, run_data, write_section  # noqa: E402

SECTION = "server"
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("CAIRN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SEARCH_KEYS = 10  # metrics m0..m9 and params p0..p9 per run (the filter uses m3, the order m7)
T0 = 1_700_000_000_000
TARGET_LOG_BATCH_RATIO = 10.0
TARGET_SEARCH_P50_MS = 100.0
TARGET_ONE_PROCESS_RATE = 50_000.0
TARGET_ONE_PROCESS_P99_US = 50.0
API = "/api/2.0/mlflow"
POOL_OVERFLOW = 10  # connections each server's pool opens beyond ``pool_size`` (= clients) under a burst


def _log(message: str) -> None:
    print(f"[server] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- stores


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_database(tag: str) -> Iterator[str]:
    """A fresh PostgreSQL database (``postgresql://...``), dropped afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
    )
    name = f"cairn_bench_server_{tag}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def analyze(uri: str) -> None:
    """``ANALYZE`` a PostgreSQL database: the statistics autovacuum would have gathered by now."""
    import sqlalchemy as sa

    engine = sa.create_engine(uri.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def postgres_setting(name: str) -> str:
    """A setting of the PostgreSQL server (``SHOW name``)."""
    import sqlalchemy as sa

    engine = sa.create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        value = str(conn.exec_driver_sql(f"SHOW {name}").scalar())
    engine.dispose()
    return value


def populate_cairn(uri: str, artifact_root: str, runs: int, history: int) -> dict[str, Any]:
    """The search experiment and the history run in cairn's store; returns their ids and the build time."""
    from cairn.store._sql.store import SqlTrackingStore
    from cairn.store.base import MetricPoint
    from cairn.tracking.entities import Param

    started = time.perf_counter()
    store = SqlTrackingStore(uri, artifact_root)
    try:
        experiment_id = store.create_experiment("search")
        points: list[MetricPoint] = []
        for i in range(runs):
            metrics, params = run_data(i)
            run_id = store.create_run(
                experiment_id, user_id="bench", start_time=T0 + i, run_name=f"run-{i}"
            ).info.run_id
            store.log_batch(run_id, params=[Param(k, v) for k, v in params[:SEARCH_KEYS]])
            points.extend(MetricPoint(run_id, k, v, T0 + i, 0) for k, v in metrics[:SEARCH_KEYS])
            if len(points) >= 50_000:
                store.log_metric_points(points)
                points = []
        store.log_metric_points(points)
        history_experiment = store.create_experiment("history")
        history_run = store.create_run(history_experiment, user_id="bench", start_time=T0, run_name="history")
        history_id = history_run.info.run_id
        for start in range(0, history, 50_000):
            store.log_metric_points(
                [
                    MetricPoint(history_id, "loss", 1.0 / (s + 1), T0 + s, s)
                    for s in range(start, min(history, start + 50_000))
                ]
            )
        load_experiment = store.create_experiment("load")
    finally:
        store.close()
    return {
        "search_experiment": experiment_id,
        "history_run": history_id,
        "load_experiment": load_experiment,
        "build_s": time.perf_counter() - started,
    }


def populate_mlflow(uri: str, artifact_root: str, runs: int, history: int) -> dict[str, Any]:
    """The same data in MLflow's schema: SqlAlchemyStore for schema and experiments, bulk inserts for rows."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    started = time.perf_counter()
    store = SqlAlchemyStore(uri, artifact_root)
    experiment_id = store.create_experiment("search")
    history_experiment = store.create_experiment("history")
    load_experiment = store.create_experiment("load")

    def run_row(run_id: str, experiment: str, name: str, start_time: int) -> dict[str, Any]:
        return {
            "run_uuid": run_id,
            "name": name,
            "source_type": "LOCAL",
            "source_name": "",
            "entry_point_name": "",
            "user_id": "bench",
            "status": "FINISHED",
            "start_time": start_time,
            "end_time": start_time + 1,
            "deleted_time": None,
            "source_version": "",
            "lifecycle_stage": "active",
            "artifact_uri": f"{artifact_root}/{experiment}/{run_id}/artifacts",
            "experiment_id": int(experiment),
        }

    run_rows, param_rows, metric_rows = [], [], []
    for i in range(runs):
        metrics, params = run_data(i)
        run_id = uuid.uuid4().hex
        run_rows.append(run_row(run_id, experiment_id, f"run-{i}", T0 + i))
        param_rows.extend({"key": k, "value": v, "run_uuid": run_id} for k, v in params[:SEARCH_KEYS])
        metric_rows.extend(
            {"key": k, "value": v, "timestamp": T0 + i, "step": 0, "is_nan": False, "run_uuid": run_id}
            for k, v in metrics[:SEARCH_KEYS]
        )
    history_id = uuid.uuid4().hex
    run_rows.append(run_row(history_id, history_experiment, "history", T0))
    history_rows = [
        {"key": "loss", "value": 1.0 / (s + 1), "timestamp": T0 + s, "step": s, "is_nan": False, "run_uuid": history_id}
        for s in range(history)
    ]
    engine = store.engine
    with engine.begin() as conn:
        conn.execute(sa.insert(SqlRun.__table__), run_rows)
        conn.execute(sa.insert(SqlParam.__table__), param_rows)
        conn.execute(sa.insert(SqlMetric.__table__), metric_rows)
        conn.execute(sa.insert(SqlLatestMetric.__table__), metric_rows)
        conn.execute(sa.insert(SqlMetric.__table__), history_rows)
        conn.execute(sa.insert(SqlLatestMetric.__table__), [history_rows[-1]])
    engine.dispose()
    return {
        "search_experiment": experiment_id,
        "history_run": history_id,
        "load_experiment": load_experiment,
        "build_s": time.perf_counter() - started,
    }


@contextmanager
def running(command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start a server subprocess, wait for ``/health``, yield its URL, stop it."""
    import httpx

    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited ({process.returncode}): {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def cairn_command(uri: str, artifact_root: str, port: int, workers: int) -> list[str]:
    command = [str(BIN / "cairn"), "--store", uri, "--artifact-root", artifact_root, "server"]
    return [*command, "--port", str(port), "--workers", str(workers)]


def cairn_env(clients: int) -> dict[str, str]:
    return {**os.environ, "CAIRN_DB_POOL_SIZE": str(clients), "CAIRN_DB_MAX_OVERFLOW": str(POOL_OVERFLOW)}


def mlflow_env(clients: int) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(clients),
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(POOL_OVERFLOW),
    }


def mlflow_command(uri: str, artifact_root: str, port: int, workers: int) -> list[str]:
    if uri.startswith("postgresql://"):
        uri = uri.replace("postgresql://", "postgresql+psycopg://", 1)
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", uri, "--default-artifact-root", artifact_root]
    return [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]


# ------------------------------------------------------------------------------------------------ load


@dataclass
class Load:
    """Requests answered 200 by all clients in ``seconds``, with their latencies, and the failed ones."""

    requests: int
    seconds: float
    latencies_ns: list[int]
    units_per_request: int = 1
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def units_rate(self) -> float:
        return self.requests * self.units_per_request / self.seconds

    def pct_ms(self, q: float) -> float:
        if not self.latencies_ns:
            return 0.0
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def run_load(
    url: str, clients: int, seconds: float, make: Callable[[Any, int], Callable[[], Any]], units: int = 1
) -> Load:
    """``clients`` threads, each calling its own request function (``make(client, index)``) for ``seconds``."""
    import httpx

    barrier = threading.Barrier(clients + 1)
    latencies: list[list[int]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = [0.0]

    def worker(index: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            request = make(client, index)
            mine = latencies[index]
            barrier.wait()
            while time.perf_counter() < stop_at[0]:
                started = time.perf_counter_ns()
                response = request()
                took = time.perf_counter_ns() - started
                if response.status_code == 200:
                    mine.append(took)
                else:
                    errors[index] += 1
                    if errors[index] == 1:
                        _log(f"error {response.status_code}: {response.text[:300]}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 3600
    barrier.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [x for per in latencies for x in per]
    return Load(len(flat), elapsed, flat, units, sum(errors))


def log_batch_load(url: str, experiment_id: str, clients: int, seconds: float, size: int) -> Load:
    def make(client: Any, index: int) -> Callable[[], Any]:
        run = client.post(f"{API}/runs/create", json={"experiment_id": experiment_id, "start_time": T0})
        run.raise_for_status()
        run_id = run.json()["run"]["info"]["run_id"]
        keys = [f"k{j}" for j in range(min(size, 10))]
        per_step = len(keys)
        step = [0]

        def request() -> Any:
            base = step[0]
            step[0] += size // per_step
            metrics = [
                {"key": keys[j % per_step], "value": 0.5, "timestamp": T0 + base, "step": base + j // per_step}
                for j in range(size)
            ]
            return client.post(f"{API}/runs/log-batch", json={"run_id": run_id, "metrics": metrics})

        return request

    return run_load(url, clients, seconds, make, units=size)


def create_run_load(url: str, experiment_id: str, clients: int, seconds: float) -> Load:
    def make(client: Any, index: int) -> Callable[[], Any]:
        body = {"experiment_id": experiment_id, "start_time": T0, "run_name": f"c{index}"}
        return lambda: client.post(f"{API}/runs/create", json=body)

    return run_load(url, clients, seconds, make)


def health_load(url: str, clients: int, seconds: float) -> Load:
    return run_load(url, clients, seconds, lambda client, index: lambda: client.get("/health"))


def sequential(reps: int, call: Callable[[], Any]) -> Load:
    call()  # warm-up (connection, caches, first-query planning)
    latencies = []
    began = time.perf_counter()
    for _ in range(reps):
        started = time.perf_counter_ns()
        call()
        latencies.append(time.perf_counter_ns() - started)
    return Load(reps, time.perf_counter() - began, latencies)


def search_load(url: str, experiment_id: str, reps: int) -> tuple[Load, int]:
    import httpx

    found = [0]
    body = {
        "experiment_ids": [experiment_id],
        "filter": SEARCH_FILTER,
        "order_by": SEARCH_ORDER_BY,
        "max_results": SEARCH_PAGE,
    }
    with httpx.Client(base_url=url, timeout=300) as client:

        def call() -> None:
            response = client.post(f"{API}/runs/search", json=body)
            response.raise_for_status()
            found[0] = len(response.json().get("runs", []))

        return sequential(reps, call), found[0]


def history_points(client: Any, run_id: str, key: str = "loss") -> int:
    """How many points ``metrics/get-history`` returns for ``key``, following ``next_page_token``."""
    total, token = 0, None
    while True:
        params = {"run_id": run_id, "metric_key": key}
        if token:
            params["page_token"] = token
        response = client.get(f"{API}/metrics/get-history", params=params)
        response.raise_for_status()
        data = response.json()
        total += len(data.get("metrics", []))
        token = data.get("next_page_token")
        if not token:
            return total


def history_load(url: str, run_id: str, reps: int) -> tuple[Load, int]:
    import httpx

    count = [0]
    with httpx.Client(base_url=url, timeout=600) as client:

        def call() -> None:
            count[0] = history_points(client, run_id)

        return sequential(reps, call), count[0]


KEYS = ("loss", "accuracy", "learning_rate", "grad_norm")
ONE_PROCESS = r"""
import json, sys, time
import cairn
url, n = sys.argv[1], int(sys.argv[2])
keys = ("loss", "accuracy", "learning_rate", "grad_norm")
cairn.set_tracking_uri(url)
cairn.set_experiment("one-process")
lat = [0] * n
clock = time.perf_counter_ns
with cairn.start_run() as run:
    began = time.perf_counter()
    for i in range(n):
        t = clock()
        cairn.log_metric(keys[i & 3], 0.5, step=i >> 2)
        lat[i] = clock() - t
    cairn.flush()
    elapsed = time.perf_counter() - began
lat.sort()
print("RESULT " + json.dumps({"run_id": run.info.run_id, "seconds": elapsed, "p50_us": lat[n // 2] / 1000,
      "p99_us": lat[(99 * n) // 100] / 1000}))
"""


def one_process(url: str, points: int) -> dict[str, Any]:
    import httpx

    done = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS, url, str(points)], capture_output=True, text=True, timeout=900
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"one-process logger failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1][7:])
    with httpx.Client(base_url=url, timeout=300) as client:
        result["arrived"] = sum(history_points(client, result["run_id"], key) for key in KEYS)
    result["rate"] = points / result["seconds"]
    return result


# ---------------------------------------------------------------------------------------------- report


@dataclass
class Sizes:
    runs: int = 10_000
    history: int = 100_000
    clients: int = 20
    low_clients: int = 4
    seconds: float = 8.0
    search_reps: int = 20
    history_reps: int = 5
    points: int = 200_000


@dataclass
class Side:
    name: str
    build: dict[str, Any] = field(default_factory=dict)
    loads: dict[str, Load] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)


def measure(side: Side, url: str, sizes: Sizes) -> None:
    build = side.build
    _log(f"{side.name}: search-runs x{sizes.search_reps}")
    side.loads["search"], side.found["search"] = search_load(url, build["search_experiment"], sizes.search_reps)
    _log(f"{side.name}: get-history x{sizes.history_reps}")
    side.loads["history"], side.found["history"] = history_load(url, build["history_run"], sizes.history_reps)
    for size in (10, 500):
        for clients, suffix in ((sizes.clients, ""), (sizes.low_clients, "-low")):
            _log(f"{side.name}: log-batch of {size}, {clients} clients, {sizes.seconds:g} s")
            load = log_batch_load(url, build["load_experiment"], clients, sizes.seconds, size)
            side.loads[f"batch{size}{suffix}"] = load
    _log(f"{side.name}: create-run, {sizes.clients} clients")
    side.loads["create"] = create_run_load(url, build["load_experiment"], sizes.clients, sizes.seconds)


def run_backend(backend: str, sizes: Sizes, workers: int, work: Path, skip_mlflow: bool) -> dict[str, Any]:
    """Both sides on one backend kind; returns the figures."""
    cairn_side, mlflow_side = Side("cairn"), Side("MLflow")
    out: dict[str, Any] = {"cairn": cairn_side, "mlflow": None if skip_mlflow else mlflow_side}
    with _store(backend, "cairn", work) as (uri, artifacts):
        _log(f"cairn: populating {sizes.runs:,} runs + {sizes.history:,} history points ({backend})")
        cairn_side.build = populate_cairn(uri, artifacts, sizes.runs, sizes.history)
        if backend == "postgresql":
            analyze(uri)
        port = _free_port()
        command, env = cairn_command(uri, artifacts, port, workers), cairn_env(sizes.clients)
        with running(command, port, work / "cairn-server.log", env) as url:
            measure(cairn_side, url, sizes)
            _log(f"cairn: /health floor, {sizes.clients} clients")
            out["health"] = health_load(url, sizes.clients, sizes.seconds)
            _log(f"cairn: one process logging {sizes.points:,} points through HTTP")
            out["one"] = one_process(url, sizes.points)
    if not skip_mlflow:
        with _store(backend, "mlflow", work) as (uri, artifacts):
            _log(f"MLflow: populating {sizes.runs:,} runs + {sizes.history:,} history points ({backend})")
            mlflow_side.build = populate_mlflow(uri, artifacts, sizes.runs, sizes.history)
            if backend == "postgresql":
                analyze(uri)
            port = _free_port()
            command, env = mlflow_command(uri, artifacts, port, workers), mlflow_env(sizes.clients)
            with running(command, port, work / "mlflow-server.log", env) as url:
                measure(mlflow_side, url, sizes)
    return out


@contextmanager
def _store(backend: str, tag: str, work: Path) -> Iterator[tuple[str, str]]:
    home = work / tag
    home.mkdir(parents=True, exist_ok=True)
    artifacts = str(home / "artifacts")
    if backend == "sqlite":
        yield f"sqlite:///{home / 'store.db'}", artifacts
    else:
        with postgres_database(tag) as url:
            yield url, artifacts


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _ratio(ours: float, theirs: float, higher_is_better: bool = True) -> str:
    if not theirs or not ours:
        return "—"
    factor = ours / theirs if higher_is_better else theirs / ours
    return f"{factor:,.1f}x"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _batch_verdict(ours: Load, theirs: Load | None, is_pg: bool) -> str:
    """Whether a log-batch row meets the 10x target; a row where either side failed requests is no comparison."""
    if theirs is None:
        return "—"
    if ours.errors or theirs.errors:
        return f"no comparison: {ours.errors:,} / {theirs.errors:,} requests failed"
    ratio = ours.units_rate / theirs.units_rate if theirs.units_rate else 0.0
    return _met(ratio >= TARGET_LOG_BATCH_RATIO) if is_pg else f"({ratio:.1f}x here)"


def table(backend: str, out: dict[str, Any], sizes: Sizes, workers: int) -> str:
    ours: Side = out["cairn"]
    theirs: Side | None = out["mlflow"]
    health: Load = out["health"]
    lines = [
        f"### {backend}: {workers} worker(s) each, {sizes.clients} and {sizes.low_clients} concurrent clients, "
        f"{sizes.seconds:g} s per load",
        "",
        "| measure | cairn server | mlflow server | floor (GET /health) | cairn vs MLflow | target | met? |",
        "|---|---:|---:|---:|---:|---|---|",
    ]

    def row(measure: str, a: str, b: str, floor: str, ratio: str, target: str = "—", met: str = "—") -> None:
        lines.append(f"| {measure} | {a} | {b} | {floor} | {ratio} | {target} | {met} |")

    def get(side: Side | None, key: str) -> Load | None:
        return side.loads.get(key) if side else None

    is_pg = backend == "PostgreSQL"
    for size in (10, 500):
        for clients, suffix in ((sizes.clients, ""), (sizes.low_clients, "-low")):
            a, b = ours.loads[f"batch{size}{suffix}"], get(theirs, f"batch{size}{suffix}")
            label = f"log-batch of {size}, {clients} clients"
            row(
                f"{label}: points/s",
                _n(a.units_rate),
                _n(b.units_rate) if b else "—",
                "—",
                _ratio(a.units_rate, b.units_rate) if b else "—",
                f">= {TARGET_LOG_BATCH_RATIO:.0f}x MLflow" + ("" if is_pg else " (on PostgreSQL)"),
                _batch_verdict(a, b, is_pg),
            )
            row(
                f"{label}: requests/s (failed)",
                f"{_n(a.rate)} ({a.errors:,})",
                f"{_n(b.rate)} ({b.errors:,})" if b else "—",
                _n(health.rate),
                _ratio(a.rate, b.rate) if b else "—",
            )
            row(
                f"{label}: p50 / p99 ms",
                f"{_ms(a.pct_ms(0.5))} / {_ms(a.pct_ms(0.99))}",
                f"{_ms(b.pct_ms(0.5))} / {_ms(b.pct_ms(0.99))}" if b else "—",
                f"{_ms(health.pct_ms(0.5))} / {_ms(health.pct_ms(0.99))}",
                _ratio(a.pct_ms(0.5), b.pct_ms(0.5), higher_is_better=False) if b else "—",
            )
    a, b = ours.loads["create"], get(theirs, "create")
    row(
        f"create-run, {sizes.clients} clients: runs/s (failed)",
        f"{_n(a.rate)} ({a.errors:,})",
        f"{_n(b.rate)} ({b.errors:,})" if b else "—",
        _n(health.rate),
        _ratio(a.rate, b.rate) if b else "—",
    )
    row(
        "create-run: p50 / p99 ms",
        f"{_ms(a.pct_ms(0.5))} / {_ms(a.pct_ms(0.99))}",
        f"{_ms(b.pct_ms(0.5))} / {_ms(b.pct_ms(0.99))}" if b else "—",
        "—",
        _ratio(a.pct_ms(0.5), b.pct_ms(0.5), higher_is_better=False) if b else "—",
    )
    a, b = ours.loads["search"], get(theirs, "search")
    row(
        f"search-runs, {sizes.runs:,} runs, 1 client: p50 ms",
        _ms(a.pct_ms(0.5)),
        _ms(b.pct_ms(0.5)) if b else "—",
        "—",
        _ratio(a.pct_ms(0.5), b.pct_ms(0.5), higher_is_better=False) if b else "—",
        f"<= {TARGET_SEARCH_P50_MS:.0f} ms at 10,000 runs",
        _met(a.pct_ms(0.5) <= TARGET_SEARCH_P50_MS)
        if sizes.runs >= 10_000
        else f"(not measured at 10,000: {sizes.runs:,})",
    )
    row(
        f"search-runs: p99 ms (of {sizes.search_reps} calls)",
        _ms(a.pct_ms(0.99)),
        _ms(b.pct_ms(0.99)) if b else "—",
        "—",
        _ratio(a.pct_ms(0.99), b.pct_ms(0.99), higher_is_better=False) if b else "—",
    )
    a, b = ours.loads["history"], get(theirs, "history")
    row(
        f"get-history, {sizes.history:,} points, 1 client: p50 / p99 ms (of {sizes.history_reps} calls)",
        f"{_ms(a.pct_ms(0.5))} / {_ms(a.pct_ms(0.99))}",
        f"{_ms(b.pct_ms(0.5))} / {_ms(b.pct_ms(0.99))}" if b else "—",
        "—",
        _ratio(a.pct_ms(0.5), b.pct_ms(0.5), higher_is_better=False) if b else "—",
    )
    row(
        "get-history: points/s",
        _n(sizes.history / (a.pct_ms(0.5) / 1000)),
        _n(sizes.history / (b.pct_ms(0.5) / 1000)) if b else "—",
        "—",
        "—",
    )
    one = out["one"]
    row(
        f"one cairn process via HTTP, {sizes.points:,} `log_metric` calls: points/s",
        _n(one["rate"]),
        "—",
        "—",
        "—",
        f">= {TARGET_ONE_PROCESS_RATE:,.0f}",
        _met(one["rate"] >= TARGET_ONE_PROCESS_RATE),
    )
    row(
        "one cairn process: caller p50 / p99 µs per call",
        f"{one['p50_us']:.1f} / {one['p99_us']:.1f}",
        "—",
        "—",
        "—",
        f"p99 <= {TARGET_ONE_PROCESS_P99_US:.0f} µs",
        _met(one["p99_us"] <= TARGET_ONE_PROCESS_P99_US),
    )
    notes = [
        f"- Store build (untimed for the measures): cairn {ours.build['build_s']:.1f} s through its store API"
        + (f"; MLflow {theirs.build['build_s']:.1f} s by bulk insert into its own tables" if theirs else "")
        + ". Search pages returned "
        + f"{ours.found['search']}"
        + (f" / {theirs.found['search']}" if theirs else "")
        + " runs; get-history returned "
        + f"{ours.found['history']:,}"
        + (f" / {theirs.found['history']:,}" if theirs else "")
        + " points.",
        f"- One process: {one['arrived']:,} of {sizes.points:,} points were in the server's history afterwards.",
        "- Failed requests (non-200, left out of the rates): "
        + (
            ", ".join(
                f"{side.name} {key} {load.errors}"
                for side in (ours, theirs)
                if side
                for key, load in side.loads.items()
                if load.errors
            )
            or "none"
        )
        + ".",
    ]
    return "\n".join([*lines, "", *notes, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds, print only")
    parser.add_argument("--pg", action="store_true", help="also run on PostgreSQL (CAIRN_TEST_POSTGRES_URL)")
    parser.add_argument("--pg-only", action="store_true", help="PostgreSQL only")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, help="concurrent clients of the main loads (default 20)")
    parser.add_argument("--low-clients", type=int, help="concurrent clients of the low-concurrency loads (default 4)")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--history", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--points", type=int)
    args = parser.parse_args()
    sizes = Sizes(
        runs=200, history=2_000, clients=4, low_clients=2, seconds=0.5, search_reps=3, history_reps=2, points=2_000
    )
    if not args.quick:
        sizes = Sizes()
    for name in ("clients", "low_clients", "runs", "history", "seconds", "points"):
        if getattr(args, name) is not None:
            setattr(sizes, name, getattr(args, name))
    backends = ["PostgreSQL"] if args.pg_only else ["SQLite", *(["PostgreSQL"] if args.pg else [])]
    load_start = os.getloadavg()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = []
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    try:
        for backend in backends:
            out = run_backend(backend.lower(), sizes, args.workers, work / backend.lower(), args.skip_mlflow)
            text = table(backend, out, sizes, args.workers)
            sections.append(text)
            header = _header(stamp, load_start, sizes, args.workers, backends)
            if args.quick:
                print((header + "\n" if len(sections) == 1 else "") + text, flush=True)
            else:  # after each backend, so a run stopped during PostgreSQL keeps SQLite's table
                print(text, flush=True)
                write_section(RESULTS, SECTION, header + "\n" + "\n".join(sections))
                _log(f"wrote the {SECTION} section of {RESULTS}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _header(stamp: str, load_start: tuple[float, float, float], sizes: Sizes, workers: int, backends: list[str]) -> str:
    from importlib.metadata import version

    load_end = os.getloadavg()
    postgres = ""
    if "PostgreSQL" in backends:
        postgres = (
            f" PostgreSQL {postgres_setting('server_version')} with autovacuum {postgres_setting('autovacuum')}: "
            "each database is `ANALYZE`d once after its build, as autovacuum would have done on a server running it."
        )
    return (
        f"## `cairn server` vs `mlflow server` (`benchmarks/server.py`)\n\n"
        f"Run of {stamp} on {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"mlflow {version('mlflow')}; load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at "
        f"the end. Both servers: {workers} worker(s) (uvicorn), loopback, started as subprocesses; the client "
        "threads (httpx, keep-alive, one run each) run in the benchmark's process on the same cores. "
        f"Connection pools sized for the load on both sides: {sizes.clients} + {POOL_OVERFLOW} overflow per worker "
        f"(MLflow: `MLFLOW_SQLALCHEMYSTORE_POOL_SIZE={sizes.clients}`, `MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW="
        f"{POOL_OVERFLOW}`, job execution off; cairn: `CAIRN_DB_POOL_SIZE={sizes.clients}`, "
        f"`CAIRN_DB_MAX_OVERFLOW={POOL_OVERFLOW}`). Loads of {sizes.clients} and of {sizes.low_clients} concurrent "
        "clients; rates and latencies count the requests answered 200, failed ones are shown beside them."
        f"{postgres} Ratios are within this run.\n"
    )


if __name__ == "__main__":
    main()
