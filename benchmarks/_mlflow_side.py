"""MLflow's half of the benchmarks, run by benchmarks/.venv-mlflow/bin/python (never by cairn's venv).

Usage (the parent script calls these; each prints one ``BENCH-RESULT {json}`` line):

    python _mlflow_side.py ingest --mode sync|async --n 2000 --dir /tmp/x
    python _mlflow_side.py search --runs 10000 --fallback-runs 2000 --budget-s 300 --reps 5 --dir /tmp/x
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _common import (
    INGEST_KEYS,
    SEARCH_FILTER,
    SEARCH_ORDER_BY,
    SEARCH_PAGE,
    emit,
    ingest_values,
    latency_summary,
    run_data,
)


def _setup(workdir: Path) -> str:
    import mlflow

    os.chdir(workdir)  # MLflow puts ./mlruns artifact folders in the working directory
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


def ingest(n: int, workdir: Path, mode: str) -> dict[str, Any]:
    """``n`` fluent ``mlflow.log_metric`` calls into one run; async mode waits for the queue to drain."""
    import mlflow
    from mlflow.tracking import MlflowClient

    _setup(workdir)
    mlflow.set_experiment("ingest")  # creates the database (migrations) outside the timing
    values = ingest_values(n)
    keys = INGEST_KEYS
    latencies = [0] * n
    synchronous = mode == "sync"
    log = mlflow.log_metric
    clock = time.perf_counter_ns
    with mlflow.start_run() as run:
        log("warmup", 0.0, step=0, synchronous=synchronous)  # first-call setup stays out of the timing
        if not synchronous:
            mlflow.flush_async_logging()
        start = time.perf_counter()
        for i in range(n):
            t0 = clock()
            log(keys[i & 3], values[i], step=i >> 2, synchronous=synchronous)
            latencies[i] = clock() - t0
        caller_s = time.perf_counter() - start
        if not synchronous:
            mlflow.flush_async_logging()
        total_s = time.perf_counter() - start
    client = MlflowClient()
    stored = sum(len(client.get_metric_history(run.info.run_id, key)) for key in keys)
    return {
        "version": mlflow.__version__,
        "mode": mode,
        "n": n,
        "stored": stored,
        "caller_s": caller_s,
        "total_s": total_s,
        "points_per_s": n / total_s,
        **latency_summary(latencies),
    }


def search(runs: int, fallback_runs: int, budget_s: float, reps: int, workdir: Path) -> dict[str, Any]:
    """Build ``runs`` runs with MlflowClient.log_batch (fewer if that would exceed the budget), then time search."""
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = _setup(workdir)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("search")
    base_ms = int(time.time() * 1000) - runs * 1000
    target = runs
    probe = min(200, runs)
    start = time.perf_counter()
    i = 0
    while i < target:
        metrics, params = run_data(i)
        ts = base_ms + i * 1000
        run = client.create_run(experiment_id, start_time=ts, run_name=f"run-{i}")
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, ts, 0) for k, v in metrics],
            params=[Param(k, v) for k, v in params],
            synchronous=True,
        )
        i += 1
        if i == probe and target > max(fallback_runs, probe):
            projected = (time.perf_counter() - start) / probe * target
            if projected > budget_s:
                target = fallback_runs
    build_s = time.perf_counter() - start

    def timed(**kwargs: Any) -> tuple[float, int]:
        times = []
        count = 0
        for _ in range(reps):
            t0 = time.perf_counter()
            found = mlflow.search_runs(
                experiment_ids=[experiment_id], max_results=SEARCH_PAGE, output_format="list", **kwargs
            )
            times.append(time.perf_counter() - t0)
            count = len(found)
        return statistics.median(times) * 1000, count

    filtered_ms, filtered_count = timed(filter_string=SEARCH_FILTER, order_by=SEARCH_ORDER_BY)
    plain_ms, plain_count = timed()
    return {
        "version": mlflow.__version__,
        "runs": i,
        "requested_runs": runs,
        "build_s": build_s,
        "filtered_ms": filtered_ms,
        "filtered_count": filtered_count,
        "plain_ms": plain_ms,
        "plain_count": plain_count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_ingest = sub.add_parser("ingest")
    p_ingest.add_argument("--mode", choices=["sync", "async"], required=True)
    p_ingest.add_argument("--n", type=int, required=True)
    p_ingest.add_argument("--dir", type=Path, required=True)
    p_search = sub.add_parser("search")
    p_search.add_argument("--runs", type=int, required=True)
    p_search.add_argument("--fallback-runs", type=int, required=True)
    p_search.add_argument("--budget-s", type=float, required=True)
    p_search.add_argument("--reps", type=int, default=5)
    p_search.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "ingest":
        emit(ingest(args.n, args.dir.resolve(), args.mode))
    else:
        emit(search(args.runs, args.fallback_runs, args.budget_s, args.reps, args.dir.resolve()))


if __name__ == "__main__":
    main()
