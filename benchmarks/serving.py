"""``cairn models serve`` vs ``mlflow models serve --env-manager local`` on the same cairn model directories.

Two models, saved once with cairn (``cairn.sklearn.save_model`` / ``cairn.pytorch.save_model``, signatures from
an input example) and served by both servers from the same directory (MLflow loads cairn model directories
through cairn's loader modules when cairn is installed, as it is here):

- sklearn: ``LogisticRegression`` on 8 double columns, requests as ``dataframe_split``;
- torch: an MLP 32 -> 64 -> 64 -> 2 (float32 tensor signature), requests as ``inputs``.

For each model, server and worker count (1 and 2), one server process tree at a time on 127.0.0.1:

- **batch 1 latency**: one keep-alive ``httpx`` client sends the same 1-row request back to back; p50/p99 of
  the client-side round trip (``perf_counter_ns`` around each request) after a warm-up;
- **batch 1,024 throughput**: ``clients`` threads, each with its own keep-alive ``httpx`` client and the
  pre-encoded 1,024-row body, post for a fixed time; rows/s = 200-answered requests x 1,024 / seconds.
  Clients = 2 x workers, so a worker never waits for its next request.

The load generator is the same for both servers; request bodies are encoded once before the clock starts and
responses are not parsed while timed. The server's CPU time per request (its whole process tree, from
``psutil``) is reported beside the wall-clock numbers: it is steadier than latency on a shared machine. Both
servers get the same payloads first and their answers are compared (identical predictions, to 1e-6 for
floats), so the two sides do the same work. Targets (issue 16, item 5): cairn >= 2x MLflow's rows/s at batch
1,024 and <= 1/2 of its p50 at batch 1.

    .venv/bin/python benchmarks/serving.py            # full run, a few minutes -> benchmarks/RESULTS.md
    .venv/bin/python benchmarks/serving.py --quick    # short -> benchmarks/.work/RESULTS-quick.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
QUICK_RESULTS = HERE / ".work" / "RESULTS-quick.md"
sys.path.insert(0, str(HERE))

from _common import write_section  # noqa: E402

SECTION = "serving"
BIN = Path(sys.executable).parent
TARGET_ROWS_RATIO = 2.0
TARGET_P50_RATIO = 0.5
BIG_BATCH = 1024
SKLEARN_FEATURES = 8
TORCH_FEATURES = 32


@dataclass
class Sizes:
    latency_requests: int
    throughput_seconds: float
    warmup: int


FULL = Sizes(latency_requests=600, throughput_seconds=8.0, warmup=60)
QUICK = Sizes(latency_requests=150, throughput_seconds=3.0, warmup=20)


def _log(message: str) -> None:
    print(f"[serving] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ models


def build_models(root: Path) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """Save both models under ``root``; each with its batch-1 and batch-1,024 request bodies."""
    import pandas as pd
    import torch
    from sklearn.linear_model import LogisticRegression

    import cairn

    rng = np.random.default_rng(0)
    columns = [f"f{i}" for i in range(SKLEARN_FEATURES)]
    frame = pd.DataFrame(rng.normal(size=(2000, SKLEARN_FEATURES)), columns=columns)
    target = (frame.f0 + frame.f1 - frame.f2 > 0).astype("int64")
    sklearn_dir = root / "sklearn-model"
    cairn.sklearn.save_model(LogisticRegression().fit(frame, target), sklearn_dir, input_example=frame.head(5))

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(TORCH_FEATURES, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 2),
    )
    torch_dir = root / "torch-model"
    example = rng.normal(size=(4, TORCH_FEATURES)).astype(np.float32)
    cairn.pytorch.save_model(net, torch_dir, input_example=example)

    def split(rows: int) -> dict[str, Any]:
        data = rng.normal(size=(rows, SKLEARN_FEATURES)).round(6).tolist()
        return {"dataframe_split": {"columns": columns, "data": data}}

    def inputs(rows: int) -> dict[str, Any]:
        return {"inputs": rng.normal(size=(rows, TORCH_FEATURES)).round(6).tolist()}

    return {
        "sklearn": (sklearn_dir, [split(1), split(BIG_BATCH)]),
        "torch": (torch_dir, [inputs(1), inputs(BIG_BATCH)]),
    }


# ------------------------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(side: str, model_dir: Path, port: int, workers: int) -> list[str]:
    if side == "cairn":
        return [str(BIN / "cairn"), "models", "serve", "-m", str(model_dir), "--port", str(port),
                "--workers", str(workers)]  # fmt: skip
    return [str(BIN / "mlflow"), "models", "serve", "--env-manager", "local", "-m", str(model_dir),
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]  # fmt: skip


@contextmanager
def running(side: str, model_dir: Path, workers: int, log: Path) -> Iterator[tuple[str, int]]:
    """Start one server; yields its URL and pid (the process tree's root) once ``/ping`` answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow starts `uvicorn` from PATH
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(side, model_dir, port, workers), stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{side} server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side} server did not answer /ping within 180 s:\n{log.read_text()}")
            time.sleep(0.2)
        if workers > 1:  # wait until every worker answers, not just the first one up
            time.sleep(3.0)
        yield url, process.pid
    finally:
        try:
            os.killpg(process.pid, 15)  # its own session: the server and its uvicorn workers
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


# ------------------------------------------------------------------------------------------------ load

HEADERS = {"Content-Type": "application/json"}


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server's process tree so far (the uvicorn workers included)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def latency(url: str, pid: int, body: bytes, sizes: Sizes) -> dict[str, float]:
    with httpx.Client(timeout=60) as client:
        for _ in range(sizes.warmup):
            client.post(f"{url}/invocations", content=body, headers=HEADERS).raise_for_status()
        samples = []
        cpu_before = server_cpu_seconds(pid)
        for _ in range(sizes.latency_requests):
            start = time.perf_counter_ns()
            answer = client.post(f"{url}/invocations", content=body, headers=HEADERS)
            samples.append(time.perf_counter_ns() - start)
            if answer.status_code != 200:
                raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:500]}")
        cpu_ms = (server_cpu_seconds(pid) - cpu_before) / len(samples) * 1e3
    samples.sort()
    n = len(samples)
    return {
        "p50_ms": samples[n // 2] / 1e6,
        "p99_ms": samples[min(n - 1, (99 * n) // 100)] / 1e6,
        "cpu_ms_batch1": cpu_ms,
    }


def throughput(url: str, pid: int, body: bytes, rows: int, clients: int, sizes: Sizes) -> dict[str, float]:
    counts = [0] * clients
    errors = [0] * clients
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client_loop(index: int) -> None:
        with httpx.Client(timeout=120) as client:
            for _ in range(3):  # warm this connection (and its worker)
                client.post(f"{url}/invocations", content=body, headers=HEADERS)
            start_gate.wait()
            while time.perf_counter() < stop_at[0]:
                answer = client.post(f"{url}/invocations", content=body, headers=HEADERS)
                if answer.status_code == 200:
                    counts[index] += 1
                else:
                    errors[index] += 1

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 3600
    start_gate.wait()
    cpu_before = server_cpu_seconds(pid)
    client_before = time.process_time()
    began = time.perf_counter()
    stop_at[0] = began + sizes.throughput_seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began  # includes the requests in flight at the deadline
    cpu_ms = (server_cpu_seconds(pid) - cpu_before) / max(sum(counts), 1) * 1e3
    client_ms = (time.process_time() - client_before) / max(sum(counts), 1) * 1e3
    if sum(errors):
        raise RuntimeError(f"{url}: {sum(errors)} requests failed under load")
    return {
        "rows_per_s": sum(counts) * rows / elapsed,
        "requests": float(sum(counts)),
        "cpu_ms_big": cpu_ms,
        "client_cpu_ms_big": client_ms,
    }


def predictions(url: str, body: bytes) -> Any:
    answer = httpx.post(f"{url}/invocations", content=body, headers=HEADERS, timeout=60)
    if answer.status_code != 200:
        raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:500]}")
    return answer.json()["predictions"]


def same_predictions(ours: Any, theirs: Any) -> bool:
    try:
        return bool(np.allclose(np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float), rtol=1e-6, atol=1e-7))
    except (TypeError, ValueError):
        return bool(ours == theirs)


# ------------------------------------------------------------------------------------------------ main


def measure(side: str, model_dir: Path, bodies: list[bytes], workers: int, sizes: Sizes, work: Path) -> dict[str, Any]:
    log = work / f"{side}-{model_dir.name}-{workers}w.log"
    started = time.perf_counter()
    with running(side, model_dir, workers, log) as (url, pid):
        startup = time.perf_counter() - started
        result: dict[str, Any] = {"startup_s": startup}
        result["answers"] = [predictions(url, body) for body in bodies]
        result.update(latency(url, pid, bodies[0], sizes))
        result.update(throughput(url, pid, bodies[1], BIG_BATCH, 2 * workers, sizes))
    _log(
        f"{side:6} {model_dir.name:13} {workers}w: batch 1 p50 {result['p50_ms']:.2f} ms "
        f"p99 {result['p99_ms']:.2f} ms; batch {BIG_BATCH} {result['rows_per_s']:,.0f} rows/s "
        f"(startup {startup:.1f} s; CPU per 1,024-row request: server {result['cpu_ms_big']:.2f} ms, load generator "
        f"{result['client_cpu_ms_big']:.2f} ms)"
    )
    return result


def table(results: dict[tuple[str, int], dict[str, dict[str, Any]]]) -> tuple[str, list[bool]]:
    lines = [
        "| model | workers | measure | cairn | MLflow | cairn vs MLflow | target | met? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    met: list[bool] = []
    for (model, workers), sides in results.items():
        ours, theirs = sides["cairn"], sides["mlflow"]
        p50_ratio = ours["p50_ms"] / theirs["p50_ms"]
        rows_ratio = ours["rows_per_s"] / theirs["rows_per_s"]
        ok_p50, ok_rows = p50_ratio <= TARGET_P50_RATIO, rows_ratio >= TARGET_ROWS_RATIO
        met += [ok_p50, ok_rows]
        lines += [
            f"| {model} | {workers} | p50 latency, batch 1 | {ours['p50_ms']:.2f} ms | {theirs['p50_ms']:.2f} ms | "
            f"{p50_ratio:.2f}x | <= 0.5x | {'yes' if ok_p50 else 'no'} |",
            f"| {model} | {workers} | p99 latency, batch 1 | {ours['p99_ms']:.2f} ms | {theirs['p99_ms']:.2f} ms | "
            f"{ours['p99_ms'] / theirs['p99_ms']:.2f}x | - | - |",
            f"| {model} | {workers} | rows/s, batch {BIG_BATCH:,} | {ours['rows_per_s']:,.0f} | "
            f"{theirs['rows_per_s']:,.0f} | {rows_ratio:.2f}x | >= 2x | {'yes' if ok_rows else 'no'} |",
            f"| {model} | {workers} | server CPU per request, batch 1 | {ours['cpu_ms_batch1']:.2f} ms | "
            f"{theirs['cpu_ms_batch1']:.2f} ms | {ours['cpu_ms_batch1'] / theirs['cpu_ms_batch1']:.2f}x | - | - |",
            f"| {model} | {workers} | server CPU per request, batch {BIG_BATCH:,} | {ours['cpu_ms_big']:.2f} ms | "
            f"{theirs['cpu_ms_big']:.2f} ms | {ours['cpu_ms_big'] / theirs['cpu_ms_big']:.2f}x | - | - |",
            f"| {model} | {workers} | startup to first /ping | {ours['startup_s']:.1f} s | "
            f"{theirs['startup_s']:.1f} s | {ours['startup_s'] / theirs['startup_s']:.2f}x | - | - |",
        ]
    return "\n".join(lines), met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs; results to benchmarks/.work/")
    parser.add_argument("--models", default="sklearn,torch", help="comma-separated: sklearn, torch")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="cairn-bench-serving-"))
    try:
        models = build_models(work)
        results: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        mismatches: list[str] = []
        for name in args.models.split(","):
            model_dir, payloads = models[name]
            bodies = [json.dumps(p).encode() for p in payloads]
            for workers in (int(w) for w in args.workers.split(",")):
                sides = {side: measure(side, model_dir, bodies, workers, sizes, work) for side in ("cairn", "mlflow")}
                for ours, theirs in zip(sides["cairn"]["answers"], sides["mlflow"]["answers"], strict=True):
                    if not same_predictions(ours, theirs):
                        mismatches.append(f"{name}: cairn {str(ours)[:200]} vs MLflow {str(theirs)[:200]}")
                results[(name, workers)] = sides
        load_end = os.getloadavg()
        text, met = table(results)
        same = "identical on every payload" if not mismatches else "DIFFERENT: " + "; ".join(mismatches)
        section = (
            f"## `cairn models serve` vs `mlflow models serve` (`benchmarks/serving.py`)\n\n"
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
            f"mlflow {version('mlflow')}, uvicorn {version('uvicorn')} (h11, no uvloop/httptools installed: the same "
            f"for both), load average {load_start[0]:.2f} at the start and {load_end[0]:.2f} at the end. "
            f"{'Quick run. ' if args.quick else ''}"
            f"Batch 1: {sizes.latency_requests} sequential requests on one keep-alive connection; batch {BIG_BATCH:,}: "
            f"2 x workers client threads for {sizes.throughput_seconds:.0f} s. The same cairn model directory is "
            f"served by both; predictions of both servers on the same payloads: {same}. "
            f"Targets met: {sum(met)} of {len(met)}.\n\n{text}\n"
        )
        print(section)
        target = QUICK_RESULTS if args.quick else RESULTS
        write_section(target, SECTION, section)
        _log(f"wrote the {SECTION} section of {target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
