"""A sync killed with SIGKILL half-way, then run again, leaves exactly one copy of each point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import cairn.sync
from cairn.tracking.entities import Metric
from tests.conftest import PgServer
from tests.sync.conftest import T0, SourceStore, build_source, open_store, snapshot

BATCH = 500

# Runs the sync in a child process that SIGKILLs itself on the N-th metric batch: either inside the
# open transaction (rows inserted, not committed) or right after the commit.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from cairn.store._sql import points
    from cairn.store._sql.store import SqlTrackingStore

    where, after, source, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    calls = 0
    owner, name = (points, "advance_latest") if where == "in-transaction" else (SqlTrackingStore, "import_run_data")
    original = getattr(owner, name)

    def patched(*args, **kwargs):
        global calls
        original(*args, **kwargs)
        calls += 1
        if calls == after:
            os.kill(os.getpid(), signal.SIGKILL)

    setattr(owner, name, patched)
    import cairn.sync

    cairn.sync(source, dest, batch_size=int(sys.argv[5]), progress=False)
    print("not killed")
    """
)


@pytest.fixture
def big_source(tmp_path: Path) -> SourceStore:
    """The usual source plus runs of a few thousand points each (many batches per run)."""
    built = build_source(tmp_path / "source", with_model=False)
    store = open_store(built.uri, str(built.home / "artifacts"))
    try:
        experiment = store.create_experiment("long")
        for index in range(3):
            run = store.create_run(experiment, user_id="u", start_time=T0 + index, run_name=f"long-{index}")
            points = [Metric(key, s * 0.5, T0 + s, s) for key in ("a", "b") for s in range(1500)]
            points += [Metric("a", 7.0, T0, 3)] * 3  # legitimately repeated points
            store.log_batch(run.info.run_id, metrics=points)
            store.supersede_metrics_after(run.info.run_id, 1200)
    finally:
        store.close()
    return built


@pytest.fixture(params=["sqlite", "postgresql"])
def dest_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dest' / 'cairn.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    with server.new_database("cairn_sync_kill") as url:
        yield url


def _points(uri: str) -> int:
    snap = snapshot(uri)
    return sum(len(run["points"]) for run in snap["runs"].values())


@pytest.mark.parametrize("where", ["in-transaction", "after-commit"])
def test_killed_sync_resumes_with_exactly_one_copy_of_each_point(
    big_source: SourceStore, dest_uri: str, tmp_path: Path, where: str
) -> None:
    expected = snapshot(big_source.uri)
    total = sum(len(run["points"]) for run in expected["runs"].values())
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, where, "7", big_source.uri, dest_uri, str(BATCH)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CAIRN_ARTIFACT_ROOT": str(tmp_path / "dest-artifacts")},
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert "not killed" not in child.stdout

    committed = _points(dest_uri)
    assert 0 < committed < total  # killed half-way through the long runs

    resumed = cairn.sync(big_source.uri, dest_uri, destination_artifact_root=str(tmp_path / "dest-artifacts"))
    assert resumed.metric_points == total - committed
    assert snapshot(dest_uri) == expected  # every point once: counts per (key, step, time, value) match
    assert cairn.sync(big_source.uri, dest_uri, destination_artifact_root=str(tmp_path / "x")).total == 0
