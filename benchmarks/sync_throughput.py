"""``cairn sync`` throughput: metric points per second and artifact MB per second, for a store of 1,000 runs.

The source is a SQLite store built through the store API (untimed): ``--runs`` runs (default 1,000)
in 10 experiments, each with 10 params, 5 tags, 4 metric keys x ``--steps`` steps (default 250, so
1,000 points per run and 1,000,000 in all; the last 50 steps of every tenth run superseded by a
simulated resume) and two artifact files (a 1 kB text file and a ``--artifact-kb`` binary file,
default 100 kB, so about 100 MB in all). Each measurement starts from a fresh destination:

1. **points**: ``cairn.sync(..., artifacts=False)`` into a fresh SQLite store (runs, params, tags,
   every point with its superseded flag): points/s = points copied / wall time.
2. **artifacts**: ``cairn.sync(...)`` again into that store: only the artifact files are left to
   copy; MB/s = bytes copied / wall time.
3. **full**: one ``cairn.sync`` with everything into another fresh SQLite store.
4. **no-op**: the same sync once more (nothing to copy: the idempotence check over 1,000 runs).
5. **incremental**: 100 runs gain 100 points each at the source, then a sync.
6. **PostgreSQL**: the full sync into a fresh PostgreSQL database (skipped if none is reachable at
   ``CAIRN_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``).

Reference limits on the same machine: the store's own bulk ingest of the same points into a fresh
SQLite store (``log_metric_points``, the batcher's path) and ``shutil.copytree`` of the artifact
directory.

    /work/main/.venv/bin/python benchmarks/sync_throughput.py [--quick] [--runs 1000] [--steps 250]

Appends (or replaces) its section in ``benchmarks/RESULTS.md``; ``--quick`` only prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
sys.path.insert(0, str(HERE))

from _common import write_section  # noqa: E402 - needs the path above

SECTION = "sync_throughput"
KEYS = ("loss", "accuracy", "learning_rate", "grad_norm")
T0 = 1_700_000_000_000
PG_ADMIN_URL = os.environ.get("CAIRN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def build_source(home: Path, runs: int, steps: int, artifact_kb: int) -> dict[str, Any]:
    """The source store; returns its URI, run ids and totals."""
    from cairn.artifacts import get_artifact_store
    from cairn.store._sql.store import SqlTrackingStore
    from cairn.store.base import MetricPoint
    from cairn.tracking.entities import Param, RunStatus, RunTag

    store = SqlTrackingStore(f"sqlite:///{home / 'cairn.db'}", str(home / "artifacts"))
    rng = random.Random(0)
    blob = rng.randbytes(artifact_kb * 1000)
    text = ("x" * 99 + "\n") * 10
    run_ids: list[str] = []
    points: list[MetricPoint] = []
    try:
        experiments = [store.create_experiment(f"exp-{i}") for i in range(10)]
        for index in range(runs):
            run = store.create_run(
                experiments[index % 10],
                user_id="bench",
                start_time=T0 + index,
                run_name=f"run-{index}",
                tags=[RunTag(f"tag{j}", f"value-{j}") for j in range(5)],
            )
            run_id = run.info.run_id
            run_ids.append(run_id)
            store.log_batch(run_id, params=[Param(f"p{j}", str(rng.random())) for j in range(10)])
            points.extend(
                MetricPoint(run_id, key, rng.random(), T0 + step, step) for step in range(steps) for key in KEYS
            )
            artifacts = get_artifact_store(run.info.artifact_uri)
            artifacts.put_bytes(text.encode(), "notes/summary.txt")
            artifacts.put_bytes(blob, "weights/model.bin")
            if len(points) >= 200_000:
                store.log_metric_points(points)
                points.clear()
        store.log_metric_points(points)
        for index, run_id in enumerate(run_ids):
            if index % 10 == 0:
                store.supersede_metrics_after(run_id, steps - 51)
            store.update_run_info(run_id, status=RunStatus.FINISHED, end_time=T0 + 10_000 + index)
    finally:
        store.close()
    total_bytes = sum(f.stat().st_size for f in (home / "artifacts").rglob("*") if f.is_file())
    return {
        "uri": f"sqlite:///{home / 'cairn.db'}",
        "runs": run_ids,
        "points": runs * steps * len(KEYS),
        "files": 2 * runs,
        "bytes": total_bytes,
    }


def rates(report: Any, seconds: float) -> str:
    return f"{report.metric_points / seconds:,.0f} points/s, {report.artifact_bytes / 1e6 / seconds:,.1f} MB/s"


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def ingest_limit(source: dict[str, Any], steps: int, work: Path) -> float:
    """Seconds for the store's bulk ingest of the same number of points into a fresh store."""
    from cairn.store._sql.store import SqlTrackingStore
    from cairn.store.base import MetricPoint

    store = SqlTrackingStore(f"sqlite:///{work / 'limit' / 'cairn.db'}", str(work / "limit" / "artifacts"))
    try:
        run_ids = [
            store.create_run("0", user_id="b", start_time=T0, run_name="r").info.run_id
            for _ in range(len(source["runs"]))
        ]
        rng = random.Random(1)
        batches = []
        batch: list[MetricPoint] = []
        for run_id in run_ids:
            batch.extend(MetricPoint(run_id, key, rng.random(), T0 + s, s) for s in range(steps) for key in KEYS)
            if len(batch) >= 50_000:
                batches.append(batch)
                batch = []
        batches.append(batch)
        seconds, _ = timed(lambda: [store.log_metric_points(b) for b in batches])
        return seconds
    finally:
        store.close()


def copy_with_fsync(source: Path, dest: Path) -> None:
    """Copy a tree, fsyncing every file and then its directory (what a durable artifact write costs)."""
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        with path.open("rb") as reader, target.open("wb") as writer:
            shutil.copyfileobj(reader, writer)
            writer.flush()
            os.fsync(writer.fileno())
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@contextmanager
def postgres_database() -> Iterator[str | None]:
    import sqlalchemy as sa

    admin = sa.create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
    )
    name = f"cairn_bench_sync_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        print(f"[sync_throughput] PostgreSQL not reachable, skipped: {exc}", file=sys.stderr)
        admin.dispose()
        yield None
        return
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 runs, print only")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--artifact-kb", type=int, default=100)
    args = parser.parse_args()
    runs = 100 if args.quick else args.runs

    import cairn.sync
    from cairn.store._sql.store import SqlTrackingStore
    from cairn.store.base import MetricPoint

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cairn-bench-sync-") as tmp:
        work = Path(tmp)
        build_seconds, source = timed(lambda: build_source(work / "source", runs, args.steps, args.artifact_kb))
        print(f"[sync_throughput] source built in {build_seconds:.1f} s", file=sys.stderr)
        mb = source["bytes"] / 1e6
        rows: list[tuple[str, float, str]] = []

        def sync(dest: str, **kwargs: Any) -> tuple[float, Any]:
            return timed(lambda: cairn.sync(source["uri"], dest, progress=False, **kwargs))

        dest_a = f"sqlite:///{work / 'a' / 'cairn.db'}"
        seconds, report = sync(dest_a, artifacts=False)
        assert report.metric_points == source["points"], report.counts
        rows.append(
            (
                "points only (`artifacts=False`), SQLite -> SQLite",
                seconds,
                f"{report.metric_points / seconds:,.0f} points/s",
            )
        )
        seconds, report = sync(dest_a)
        assert report.artifact_files == source["files"] and report.metric_points == 0, report.counts
        rows.append(
            (
                "artifacts only (metadata already there), local -> local",
                seconds,
                f"{report.artifact_bytes / 1e6 / seconds:,.1f} MB/s",
            )
        )

        dest_b = f"sqlite:///{work / 'b' / 'cairn.db'}"
        seconds, report = sync(dest_b)
        assert report.runs_created == runs
        rows.append(
            (
                "full sync, SQLite -> SQLite",
                seconds,
                f"{rates(report, seconds)}, {runs / seconds:,.0f} runs/s",
            )
        )
        seconds, report = sync(dest_b)
        assert report.total == 0, report.counts
        rows.append(("no-op re-sync (nothing new)", seconds, f"{runs / seconds:,.0f} runs/s checked"))

        store = SqlTrackingStore(source["uri"], str(work / "source" / "artifacts"))
        try:
            store.log_metric_points(
                [
                    MetricPoint(run_id, "loss", 0.1, T0 + 100_000 + s, args.steps + s)
                    for run_id in source["runs"][:100]
                    for s in range(100)
                ]
            )
        finally:
            store.close()
        seconds, report = sync(dest_b)
        assert report.metric_points == 100 * min(100, runs) and report.runs_updated == min(100, runs), report.counts
        rows.append(
            ("incremental: 100 runs gained 100 points each", seconds, f"{report.metric_points:,} points copied")
        )

        with postgres_database() as pg_url:
            if pg_url is not None:
                seconds, report = sync(pg_url, destination_artifact_root=str(work / "pg-artifacts"))
                rows.append(
                    (
                        "full sync, SQLite -> PostgreSQL",
                        seconds,
                        rates(report, seconds),
                    )
                )
                seconds, report = sync(pg_url, destination_artifact_root=str(work / "pg-artifacts"))
                assert report.total == 0
                rows.append(("no-op re-sync into PostgreSQL", seconds, f"{runs / seconds:,.0f} runs/s checked"))

        limit_points = ingest_limit(source, args.steps, work)
        copy_seconds, _ = timed(lambda: shutil.copytree(work / "source" / "artifacts", work / "copytree"))
        fsync_seconds, _ = timed(lambda: copy_with_fsync(work / "source" / "artifacts", work / "copy-fsync"))

    lines = [
        "## `cairn sync` throughput: a store of "
        f"{runs:,} runs ({source['points']:,} metric points, {source['files']:,} artifact files, {mb:,.0f} MB)",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average at start "
        f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; {os.cpu_count()} CPUs",
        f"- Python {platform.python_version()}; command: `{sys.executable} benchmarks/sync_throughput.py"
        f"{' --quick' if args.quick else ''}`",
        f"- Source: {runs:,} runs in 10 experiments, 10 params + 5 tags each, {len(KEYS)} keys x {args.steps} steps "
        f"(every tenth run with its last 50 steps superseded), a 1 kB and a {args.artifact_kb} kB artifact per run; "
        f"built through the store API in {build_seconds:.1f} s (untimed). One wall-clock measurement per row, "
        "each into a fresh destination unless it says otherwise. See the docstring of `sync_throughput.py`.",
        "",
        "| sync | seconds | throughput |",
        "|---|---:|---|",
        *[f"| {name} | {seconds:,.2f} | {rate} |" for name, seconds, rate in rows],
        "",
        "Reference limits on this machine:",
        "",
        f"- the store's own bulk ingest of {source['points']:,} points (`log_metric_points`, 50k per call) "
        f"into a fresh SQLite store: {limit_points:.2f} s = {source['points'] / limit_points:,.0f} points/s;",
        f"- `shutil.copytree` of the {mb:,.0f} MB artifact directory: {copy_seconds:.2f} s = "
        f"{mb / copy_seconds:,.1f} MB/s (no fsync);",
        f"- the same copy with each file and its directory fsynced, as cairn's local artifact store writes "
        f"(durable once written): {fsync_seconds:.2f} s = {mb / fsync_seconds:,.1f} MB/s.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        write_section(RESULTS, SECTION, text)
        print(f"[sync_throughput] section written to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
