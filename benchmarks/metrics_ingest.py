"""Foundation benchmark: metric ingest, import time and search_runs — cairn vs MLflow vs the limit.

Run with cairn's interpreter; MLflow runs in its own virtualenv (``bash benchmarks/setup_mlflow_env.sh``)
through ``_mlflow_side.py`` in a subprocess. Every figure comes from one run on this machine, every
measurement from fresh temporary directories. Not a test: CI does not run it.

    /work/main/.venv/bin/python benchmarks/metrics_ingest.py [--quick] [--skip-mlflow]

Writes its section of ``benchmarks/RESULTS.md`` (or of ``--output``), keeping the others, and prints the same tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402 - needs the path above
    INGEST_KEYS,
    RESULT_MARKER,
    SEARCH_FILTER,
    SEARCH_ORDER_BY,
    SEARCH_PAGE,
    ingest_values,
    latency_summary,
    run_data,
    write_section,
)

SECTION = "metrics_ingest"
DEFAULT_MLFLOW_PYTHON = HERE / ".venv-mlflow" / "bin" / "python"
HEAVY_MODULES = ("torch", "transformers", "lightning", "sklearn", "onnx", "pandas", "sqlalchemy")
RAW_BATCH = 50_000

# Targets from the issue.
TARGET_VS_MLFLOW = 100.0
TARGET_VS_LIMIT = 0.30
TARGET_P99_US = 50.0
TARGET_IMPORT_MS = 200.0
TARGET_SEARCH_MS = 200.0


@dataclass
class Sizes:
    points: int = 200_000
    mlflow_sync_n: int = 2_000
    mlflow_async_n: int = 2_000
    import_reps: int = 7
    search_runs: int = 10_000
    mlflow_search_fallback: int = 2_000
    mlflow_search_budget_s: float = 300.0
    search_reps: int = 5

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            points=20_000,
            mlflow_sync_n=300,
            mlflow_async_n=300,
            import_reps=3,
            search_runs=1_000,
            mlflow_search_fallback=300,
            mlflow_search_budget_s=60.0,
            search_reps=3,
        )


@dataclass
class Row:
    measure: str
    cairn: str
    mlflow: str = "—"
    limit: str = "—"
    ratio: str = "—"
    target: str = "—"
    met: str = "—"


@dataclass
class Section:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- formatting -------------------------------------------------------------------------------------


def _int(x: float) -> str:
    return f"{x:,.0f}"


def _num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _times(x: float) -> str:
    return f"{_num(x)}x"


def _met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def _table(section: Section) -> str:
    head = "| measure | cairn | MLflow | limit | ratio | target | met? |\n|---|---:|---:|---:|---:|---|---|\n"
    body = "".join(
        f"| {r.measure} | {r.cairn} | {r.mlflow} | {r.limit} | {r.ratio} | {r.target} | {r.met} |\n"
        for r in section.rows
    )
    notes = "".join(f"\n- {n}" for n in section.notes)
    return f"### {section.title}\n\n{head}{body}{notes}\n"


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- MLflow subprocess ----------------------------------------------------------------------------


def _mlflow(python: Path, *args: str, timeout: float) -> dict[str, Any]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", PYTHONPATH=str(HERE))
    proc = subprocess.run(
        [str(python), str(HERE / "_mlflow_side.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=HERE,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    raise RuntimeError(f"MLflow side {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# -- 1. ingest --------------------------------------------------------------------------------------


def cairn_ingest(n: int, workdir: Path, *, timed_calls: bool) -> dict[str, Any]:
    """``n`` fluent log_metric calls into one run; the rate counts up to the return of ``flush()``."""
    import cairn

    cairn.set_tracking_uri(str(workdir))
    values = ingest_values(n)
    keys = INGEST_KEYS
    run = cairn.start_run()
    log = cairn.log_metric
    log("warmup", 0.0, step=0)  # starts the writer thread outside the timing
    cairn.flush()
    latencies = [0] * n
    clock = time.perf_counter_ns
    gc_pauses: list[int] = []
    gc_started = [0]

    def on_gc(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = clock()
        else:
            gc_pauses.append(clock() - gc_started[0])

    gc.callbacks.append(on_gc)
    start = time.perf_counter()
    if timed_calls:
        for i in range(n):
            t0 = clock()
            log(keys[i & 3], values[i], step=i >> 2)
            latencies[i] = clock() - t0
    else:
        for i in range(n):
            log(keys[i & 3], values[i], step=i >> 2)
    caller_s = time.perf_counter() - start
    cairn.flush()
    total_s = time.perf_counter() - start
    gc.callbacks.remove(on_gc)
    cairn.end_run()
    client = cairn.Client(str(workdir))
    stored = sum(len(client.get_metric_history(run.info.run_id, key)) for key in keys)
    result: dict[str, Any] = {
        "n": n,
        "stored": stored,
        "caller_s": caller_s,
        "total_s": total_s,
        "points_per_s": n / total_s,
    }
    if timed_calls:
        result.update(latency_summary(latencies))
        result["gc_max_ms"] = max(gc_pauses, default=0) / 1e6
        result["gc_slow"] = sum(1 for p in gc_pauses if p > 1_000_000)
    return result


def raw_sqlite_ingest(n: int, workdir: Path) -> dict[str, Any]:
    """Physical limit: python sqlite3 inserting the same rows into a bare copy of cairn's metrics table."""
    conn = sqlite3.connect(workdir / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE metrics (id INTEGER PRIMARY KEY, run_uuid VARCHAR(32) NOT NULL, key VARCHAR(250) NOT NULL,"
        " value FLOAT, is_nan BOOLEAN NOT NULL, step BIGINT NOT NULL, timestamp BIGINT NOT NULL,"
        " superseded BOOLEAN NOT NULL DEFAULT 0)"
    )
    conn.execute("CREATE INDEX ix_metrics_run_uuid_key_step ON metrics (run_uuid, key, step)")
    run_id = "0" * 32
    ts = int(time.time() * 1000)
    keys = INGEST_KEYS
    rows = [(run_id, keys[i & 3], v, 0, i >> 2, ts, 0) for i, v in enumerate(ingest_values(n))]
    sql = "INSERT INTO metrics (run_uuid, key, value, is_nan, step, timestamp, superseded) VALUES (?, ?, ?, ?, ?, ?, ?)"
    start = time.perf_counter()
    for lo in range(0, n, RAW_BATCH):
        conn.execute("BEGIN")
        conn.executemany(sql, rows[lo : lo + RAW_BATCH])
        conn.execute("COMMIT")
    total_s = time.perf_counter() - start
    stored = conn.execute("SELECT count(*) FROM metrics").fetchone()[0]
    conn.close()
    return {"n": n, "stored": stored, "total_s": total_s, "points_per_s": n / total_s}


def section_ingest(sizes: Sizes, mlflow_python: Path | None) -> Section:
    section = Section(f"1. Metric ingest: {sizes.points:,} `log_metric` calls into one run, SQLite")
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as d:
        _log("raw sqlite3 limit ...")
        raw = raw_sqlite_ingest(sizes.points, Path(d))
    with tempfile.TemporaryDirectory(prefix="bench-cairn-") as d:
        _log("cairn ingest (throughput) ...")
        ours = cairn_ingest(sizes.points, Path(d), timed_calls=False)
    with tempfile.TemporaryDirectory(prefix="bench-cairn-") as d:
        _log("cairn ingest (per-call latency) ...")
        lat = cairn_ingest(sizes.points, Path(d), timed_calls=True)
    sync = asyn = None
    if mlflow_python:
        with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as d:
            _log(f"MLflow synchronous ingest, N={sizes.mlflow_sync_n} ...")
            sync = _mlflow(
                mlflow_python, "ingest", "--mode", "sync", "--n", str(sizes.mlflow_sync_n), "--dir", d, timeout=3600
            )
        with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as d:
            _log(f"MLflow async ingest (synchronous=False), N={sizes.mlflow_async_n} ...")
            asyn = _mlflow(
                mlflow_python, "ingest", "--mode", "async", "--n", str(sizes.mlflow_async_n), "--dir", d, timeout=3600
            )

    rate = ours["points_per_s"]
    limit = raw["points_per_s"]
    rows = section.rows
    if sync:
        vs = rate / sync["points_per_s"]
        rows.append(
            Row(
                f"points/s vs MLflow sync (cairn N={sizes.points:,}; MLflow `mlflow.log_metric` N={sync['n']:,})",
                _int(rate),
                _int(sync["points_per_s"]),
                _int(limit),
                f"{_times(vs)} MLflow",
                f">= {TARGET_VS_MLFLOW:.0f}x MLflow",
                _met(vs >= TARGET_VS_MLFLOW),
            )
        )
    share = rate / limit
    rows.append(
        Row(
            "points/s vs raw-SQLite limit (sqlite3 executemany, 50k rows/transaction, WAL, synchronous=NORMAL)",
            _int(rate),
            "—",
            _int(limit),
            f"{share:.0%} of limit",
            f">= {TARGET_VS_LIMIT:.0%} of limit",
            _met(share >= TARGET_VS_LIMIT),
        )
    )
    if asyn:
        rows.append(
            Row(
                f"points/s vs MLflow async (`synchronous=False` + `flush_async_logging()`, N={asyn['n']:,})",
                _int(rate),
                _int(asyn["points_per_s"]),
                "—",
                f"{_times(rate / asyn['points_per_s'])} MLflow",
            )
        )
    for pct in ("p50", "p99"):
        key = f"{pct}_us"
        target = f"<= {TARGET_P99_US:.0f} µs" if pct == "p99" else "—"
        met = _met(lat[key] <= TARGET_P99_US) if pct == "p99" else "—"
        if sync:
            rows.append(
                Row(
                    f"caller latency {pct}, µs per call (MLflow sync)",
                    _num(lat[key]),
                    _num(sync[key]),
                    "—",
                    f"{_times(sync[key] / lat[key])} lower",
                    target,
                    met,
                )
            )
        else:
            rows.append(Row(f"caller latency {pct}, µs per call", _num(lat[key]), target=target, met=met))
        if asyn:
            rows.append(
                Row(
                    f"caller latency {pct}, µs per call (MLflow async)",
                    _num(lat[key]),
                    _num(asyn[key]),
                    "—",
                    f"{_times(asyn[key] / lat[key])} lower",
                )
            )
    section.notes += [
        f"cairn: {ours['n']:,} calls took {ours['caller_s']:.3f} s on the caller's thread, then `cairn.flush()` "
        f"waited {ours['total_s'] - ours['caller_s']:.3f} s for the writer; rate = N / (first call → flush "
        f"returned). {ours['stored']:,} points read back.",
        f"Latency comes from a second fresh run with `time.perf_counter_ns()` around each call "
        f"(that run: {lat['points_per_s']:,.0f} points/s). Tail: p99.9 {lat['p999_us']:,.1f} µs, max "
        f"{lat['max_us']:,.0f} µs. Python's garbage collector stopped both threads for over 1 ms "
        f"{lat['gc_slow']} time(s) during that run, the longest for {lat['gc_max_ms']:.1f} ms; a call that "
        "coincides with such a pause waits it out, which is where the max comes from when it is in the ms.",
        f"Raw limit: {raw['stored']:,} precomputed rows into one table with cairn's `metrics` columns and "
        f"index `(run_uuid, key, step)`, no foreign key, in {raw['total_s']:.3f} s.",
    ]
    if sync and asyn:
        section.notes.append(
            f"MLflow {sync['version']}: sync {sync['stored']:,}/{sync['n']:,} and async {asyn['stored']:,}/"
            f"{asyn['n']:,} points read back; async callers spent {asyn['caller_s']:.2f} s queuing and "
            f"{asyn['total_s'] - asyn['caller_s']:.2f} s waiting for `flush_async_logging()`."
        )
    return section


# -- 2. import time ---------------------------------------------------------------------------------


def _median_startup(python: str, code: str, reps: int) -> float:
    subprocess.run([python, "-c", code], check=True, capture_output=True)  # warm the .pyc and page caches
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def import_ms(python: str, module: str, reps: int) -> float:
    """Median wall time of ``python -c "import module"`` minus that of ``python -c "pass"``, in ms."""
    return _median_startup(python, f"import {module}", reps) - _median_startup(python, "pass", reps)


def heavy_modules_after(python: str, module: str) -> list[str]:
    code = (
        f"import sys, json; import {module}; "
        f"heavy = {list(HEAVY_MODULES)!r}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))"
    )
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    return list(json.loads(out.strip().splitlines()[-1]))


def section_import(sizes: Sizes, mlflow_python: Path | None) -> Section:
    section = Section(f"2. Import time (median of {sizes.import_reps} fresh interpreters, minus `python -c pass`)")
    _log("import time ...")
    ours = import_ms(sys.executable, "cairn", sizes.import_reps)
    heavy = heavy_modules_after(sys.executable, "cairn")
    theirs = theirs_heavy = None
    if mlflow_python:
        theirs = import_ms(str(mlflow_python), "mlflow", sizes.import_reps)
        theirs_heavy = heavy_modules_after(str(mlflow_python), "mlflow")
    print(f"sys.modules check: `import cairn` loaded {heavy or 'none'} of {', '.join(HEAVY_MODULES)}")
    if theirs_heavy is not None:
        print(f"sys.modules check: `import mlflow` loaded {theirs_heavy or 'none'}")
    section.rows.append(
        Row(
            "`import cairn` / `import mlflow`, ms",
            _num(ours),
            _num(theirs) if theirs is not None else "—",
            "—",
            f"{_times(theirs / ours)} faster" if theirs and ours > 0 else "—",
            f"<= {TARGET_IMPORT_MS:.0f} ms",
            _met(ours <= TARGET_IMPORT_MS),
        )
    )
    section.rows.append(
        Row(
            f"heavy modules in `sys.modules` after the import ({', '.join(HEAVY_MODULES)})",
            ", ".join(heavy) or "none",
            (", ".join(theirs_heavy) or "none") if theirs_heavy is not None else "—",
            target="none",
            met=_met(not heavy),
        )
    )
    return section


# -- 3. search_runs ---------------------------------------------------------------------------------


def cairn_search(runs: int, reps: int, workdir: Path) -> dict[str, Any]:
    """Bulk-build ``runs`` runs x 20 metrics x 20 params through the store, then time fluent search_runs."""
    import cairn
    from cairn.store.base import MetricPoint
    from cairn.tracking.entities import Param

    store = cairn.Client(str(workdir)).store
    experiment_id = store.create_experiment("search")
    base_ms = int(time.time() * 1000) - runs * 1000
    start = time.perf_counter()
    points: list[MetricPoint] = []
    for i in range(runs):
        metrics, params = run_data(i)
        ts = base_ms + i * 1000
        run = store.create_run(experiment_id, user_id="bench", start_time=ts, run_name=f"run-{i}")
        run_id = run.info.run_id
        store.log_batch(run_id, params=[Param(k, v) for k, v in params])
        points.extend(MetricPoint(run_id, k, v, ts, 0) for k, v in metrics)
        if len(points) >= RAW_BATCH:
            store.log_metric_points(points)
            points = []
    if points:
        store.log_metric_points(points)
    build_s = time.perf_counter() - start

    cairn.set_tracking_uri(str(workdir))

    def timed(**kwargs: Any) -> tuple[float, int]:
        times = []
        count = 0
        for _ in range(reps):
            t0 = time.perf_counter()
            found = cairn.search_runs(
                experiment_ids=[experiment_id], max_results=SEARCH_PAGE, output_format="list", **kwargs
            )
            times.append(time.perf_counter() - t0)
            count = len(found)
        return statistics.median(times) * 1000, count

    filtered_ms, filtered_count = timed(filter_string=SEARCH_FILTER, order_by=SEARCH_ORDER_BY)
    plain_ms, plain_count = timed()
    return {
        "runs": runs,
        "build_s": build_s,
        "filtered_ms": filtered_ms,
        "filtered_count": filtered_count,
        "plain_ms": plain_ms,
        "plain_count": plain_count,
    }


def section_search(sizes: Sizes, mlflow_python: Path | None) -> Section:
    section = Section(
        f"3. `search_runs` first page of {SEARCH_PAGE} (runs x 20 metrics x 20 params, one experiment; "
        f"median of {sizes.search_reps})"
    )
    with tempfile.TemporaryDirectory(prefix="bench-cairn-") as d:
        _log(f"cairn search store, {sizes.search_runs:,} runs ...")
        ours = cairn_search(sizes.search_runs, sizes.search_reps, Path(d))
    theirs = None
    if mlflow_python:
        with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as d:
            budget = sizes.mlflow_search_budget_s
            _log(f"MLflow search store, up to {sizes.search_runs:,} runs (build budget {budget:.0f} s) ...")
            theirs = _mlflow(
                mlflow_python,
                "search",
                "--runs",
                str(sizes.search_runs),
                "--fallback-runs",
                str(sizes.mlflow_search_fallback),
                "--budget-s",
                str(sizes.mlflow_search_budget_s),
                "--reps",
                str(sizes.search_reps),
                "--dir",
                d,
                timeout=7200,
            )
    rows = section.rows
    rows.append(
        Row(
            "runs in the store",
            _int(ours["runs"]),
            _int(theirs["runs"]) if theirs else "—",
        )
    )
    for key, label in (
        ("filtered_ms", f'`filter_string="{SEARCH_FILTER}"`, `order_by={SEARCH_ORDER_BY}`, ms'),
        ("plain_ms", "no filter (default order), ms"),
    ):
        rows.append(
            Row(
                label,
                _num(ours[key]),
                _num(theirs[key]) if theirs else "—",
                "—",
                f"{_times(theirs[key] / ours[key])} faster" if theirs else "—",
                f"<= {TARGET_SEARCH_MS:.0f} ms",
                _met(ours[key] <= TARGET_SEARCH_MS),
            )
        )
    section.notes.append(
        f"cairn built its store in {ours['build_s']:.1f} s (`create_run` + `log_batch` params per run, metrics via "
        f"`log_metric_points` in 50k batches); pages returned {ours['filtered_count']} / {ours['plain_count']} runs."
    )
    if theirs:
        fallback = (
            f" Building {theirs['requested_runs']:,} would have taken over {sizes.mlflow_search_budget_s:.0f} s, so "
            f"MLflow's store has {theirs['runs']:,} runs: its figures are for a smaller store (favouring MLflow)."
            if theirs["runs"] < theirs["requested_runs"]
            else ""
        )
        section.notes.append(
            f"MLflow built its store in {theirs['build_s']:.1f} s (`MlflowClient.create_run` + `log_batch`); pages "
            f"returned {theirs['filtered_count']} / {theirs['plain_count']} runs.{fallback}"
        )
    return section


# -- main -------------------------------------------------------------------------------------------


def _machine(mlflow_python: Path | None) -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cairn

    mlflow_version = "not measured"
    if mlflow_python:
        mlflow_version = subprocess.run(
            [str(mlflow_python), "-c", "import importlib.metadata as m; print(m.version('mlflow'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, load average at "
        f"start {load}",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, cairn {cairn.__version__}, "
        f"MLflow {mlflow_version}",
        f"- Command: `{shlex.join([sys.executable, *sys.argv])}`",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a minute or two), for checking the script")
    parser.add_argument("--skip-mlflow", action="store_true", help="measure cairn and the limit only")
    parser.add_argument("--mlflow-python", type=Path, default=DEFAULT_MLFLOW_PYTHON, help="python of the MLflow venv")
    parser.add_argument(
        "--output", type=Path, help="markdown file to write (default RESULTS.md; .work/RESULTS-quick.md with --quick)"
    )
    parser.add_argument(
        "--only", choices=["ingest", "import", "search"], action="append", help="run only these groups (repeatable)"
    )
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    output: Path = args.output or (HERE / ".work" / "RESULTS-quick.md" if args.quick else HERE / "RESULTS.md")

    mlflow_python: Path | None = None
    if not args.skip_mlflow:
        if not args.mlflow_python.exists():
            parser.error(f"{args.mlflow_python} not found: run `bash benchmarks/setup_mlflow_env.sh` or --skip-mlflow")
        mlflow_python = args.mlflow_python

    header = _machine(mlflow_python)
    groups = args.only or ["ingest", "import", "search"]
    sections = []
    if "ingest" in groups:
        sections.append(section_ingest(sizes, mlflow_python))
    if "import" in groups:
        sections.append(section_import(sizes, mlflow_python))
    if "search" in groups:
        sections.append(section_search(sizes, mlflow_python))

    text = (
        "## Metric ingest, import time, search_runs\n\n"
        + "\n".join(header)
        + "\n\nAll figures come from this one run on this machine; ratios compare figures of the same run. "
        "Not a CI test. How each figure is measured: see `benchmarks/README.md`.\n\n"
        + "\n".join(_table(s) for s in sections)
    )
    write_section(output, SECTION, text)
    print(text)
    _log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
