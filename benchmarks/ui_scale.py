"""How fast `cairn ui` answers at scale: 10,000 runs in one experiment and a 1,000,000-point metric.

    .venv/bin/python benchmarks/ui_scale.py            # builds the store once in benchmarks/.work/ui-scale
    .venv/bin/python benchmarks/ui_scale.py --rebuild  # start from an empty store
    .venv/bin/python benchmarks/ui_scale.py --quick    # 2,000 runs and 200,000 points

The store is built through the store API (create_run, log_batch, log_metric_points) and served by
the real app under uvicorn on a loopback port; every request is timed over HTTP with urllib (cold =
first request after start, then the median of 5). It prints a table; targets: an experiment's first
page of runs under 1 s, and a metric series of at most 2,000 points whatever the number stored.
Not a test: the machine is shared, so the figures move with its load (printed at the top).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

WORK = Path(__file__).resolve().parent / ".work" / "ui-scale"
N_METRICS = 20
N_PARAMS = 20
PAGE = 50
MAX_POINTS = 2000


def _build(home: Path, runs: int, points: int) -> dict[str, str]:
    from cairn.store.base import MetricPoint
    from cairn.tracking.client import Client
    from cairn.tracking.entities import Param

    store = Client(str(home)).store
    experiment_id = store.create_experiment("scale")
    base_ms = int(time.time() * 1000) - runs * 1000
    started = time.perf_counter()
    batch: list[MetricPoint] = []
    for i in range(runs):
        rng = random.Random(i)
        run_id = store.create_run(experiment_id, user_id="bench", start_time=base_ms + i * 1000, run_name=f"run-{i}")
        run_id = run_id.info.run_id
        store.log_batch(run_id, params=[Param(f"p{j}", f"value-{rng.randrange(1000)}") for j in range(N_PARAMS)])
        batch.extend(MetricPoint(run_id, f"m{j}", rng.random(), base_ms + i * 1000, 0) for j in range(N_METRICS))
        if len(batch) >= 50_000:
            store.log_metric_points(batch)
            batch = []
        if i % 2000 == 1999:
            print(f"  built {i + 1} runs ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if batch:
        store.log_metric_points(batch)
    big = store.create_run(experiment_id, user_id="bench", start_time=base_ms + runs * 1000, run_name="long-run")
    big_id = big.info.run_id
    rng = random.Random(1)
    value = 0.0
    chunk: list[MetricPoint] = []
    for step in range(points):
        value += rng.gauss(0, 1)
        chunk.append(MetricPoint(big_id, "loss", value, base_ms + step, step))
        if len(chunk) == 100_000:
            store.log_metric_points(chunk)
            chunk = []
    if chunk:
        store.log_metric_points(chunk)
    print(f"  built the store in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    meta = {"experiment_id": experiment_id, "long_run": big_id, "runs": str(runs), "points": str(points)}
    (home / "bench.json").write_text(json.dumps(meta))
    return meta


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(home: Path) -> tuple[str, Any]:
    import uvicorn

    from cairn.tracking.client import Client
    from cairn.ui.app import create_app

    port = _free_port()
    app = create_app(Client(str(home)), host="127.0.0.1", port=port)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def _get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    return (time.perf_counter() - started) * 1000, body


def _measure(url: str, reps: int = 5) -> dict[str, Any]:
    cold, body = _get(url)
    warm = [_get(url)[0] for _ in range(reps)]
    return {"cold_ms": cold, "median_ms": statistics.median(warm), "bytes": len(body), "body": json.loads(body)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 runs and 200,000 points")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the store even if one is cached")
    args = parser.parse_args(argv)
    runs, points = (2_000, 200_000) if args.quick else (10_000, 1_000_000)
    home = WORK / f"{runs}-{points}"
    if args.rebuild and home.exists():
        shutil.rmtree(home)
    if (home / "bench.json").exists():
        meta = json.loads((home / "bench.json").read_text())
    else:
        print(f"building {runs:,} runs x {N_METRICS} metrics x {N_PARAMS} params + one {points:,}-point metric ...")
        home.mkdir(parents=True, exist_ok=True)
        meta = _build(home, runs, points)
    base, server = _serve(home)
    exp = meta["experiment_id"]
    runs_url = f"{base}/api/experiments/{exp}/runs"
    query = urllib.parse.urlencode
    rows: list[tuple[str, dict[str, Any], str]] = []
    try:
        rows.append(("experiments list (with run counts)", _measure(f"{base}/api/experiments"), ""))
        rows.append(("experiment: param and metric keys", _measure(f"{base}/api/experiments/{exp}"), ""))
        first = _measure(f"{runs_url}?{query({'max_results': PAGE})}")
        rows.append((f"runs: first page of {PAGE}", first, f"total {first['body']['total']:,}"))
        filtered = _measure(
            f"{runs_url}?{query({'max_results': PAGE, 'filter': 'metrics.m3 > 0.5', 'order_by': 'metrics.m7 DESC'})}"
        )
        rows.append(("runs: filter m3 > 0.5, order by m7 DESC", filtered, f"total {filtered['body']['total']:,}"))
        by_param = _measure(f"{runs_url}?{query({'max_results': PAGE, 'order_by': 'params.p1 ASC'})}")
        rows.append(("runs: order by param p1", by_param, ""))
        from cairn.store._sql.search import encode_page_token

        deep = _measure(
            f"{runs_url}?{query({'max_results': PAGE, 'page_token': encode_page_token(int(meta['runs']) // 2)})}"
        )
        rows.append((f"runs: page at offset {int(meta['runs']) // 2:,}", deep, ""))
        series_url = f"{base}/api/runs/{meta['long_run']}/metric?{query({'key': 'loss', 'max_points': MAX_POINTS})}"
        series = _measure(series_url)
        body = series["body"]
        rows.append(
            (
                f"metric of {int(meta['points']):,} points, max_points={MAX_POINTS}",
                series,
                f"{len(body['values']):,} points sent (cold = computed in SQL; then cached)",
            )
        )
        by_time = _measure(series_url + "&x=time")
        rows.append(("same, buckets along wall time", by_time, f"{len(by_time['body']['values']):,} points sent"))
    finally:
        server.should_exit = True

    from cairn.tracking.client import Client

    client = Client(str(home))
    started = time.perf_counter()
    history = client.get_metric_history(meta["long_run"], "loss")
    naive_ms = (time.perf_counter() - started) * 1000
    naive_bytes = len(json.dumps([[m.step, m.timestamp, m.value] for m in history]))

    print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; store {home}\n")
    print("| request | cold (ms) | median of 5 (ms) | response | note |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, result, note in rows:
        size = f"{result['bytes'] / 1024:.0f} kB"
        print(f"| {name} | {result['cold_ms']:.0f} | {result['median_ms']:.0f} | {size} | {note} |")
    print(
        f"| for contrast: get_metric_history of all {len(history):,} points in Python | {naive_ms:.0f} | | "
        f"{naive_bytes / 1024 / 1024:.0f} MB as JSON | what a UI without down-sampling would ship |"
    )
    page_ok = first["cold_ms"] < 1000 and filtered["cold_ms"] < 1000
    print(
        f"\nfirst page under 1 s: {'yes' if page_ok else 'NO'}; series within {MAX_POINTS} points: "
        f"{'yes' if len(body['values']) <= MAX_POINTS else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
