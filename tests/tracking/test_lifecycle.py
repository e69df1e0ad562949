"""Process-level behaviour: exit, crash, SIGTERM, CAIRN_RUN_ID and the background writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import cairn


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "train.py"
    path.write_text("import cairn, sys, time\n" + textwrap.dedent(body))
    return path


def _run(script: Path, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=script.parent,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,  # type: ignore[call-overload]
    )


def _only_run() -> cairn.Run:
    runs = cairn.search_runs(output_format="list")
    assert len(runs) == 1
    return runs[0]


def test_exit_without_end_run_finishes_and_flushes(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        cairn.start_run()
        for i in range(5000):
            cairn.log_metric("loss", i, step=i)
        """,
    )
    assert _run(script).returncode == 0
    run = _only_run()
    assert run.info.status.value == "FINISHED"
    assert len(cairn.Client().get_metric_history(run.info.run_id, "loss")) == 5000


def test_uncaught_exception_marks_failed(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        cairn.start_run()
        cairn.log_metric("loss", 1.0)
        raise ValueError("diverged")
        """,
    )
    done = _run(script)
    assert done.returncode == 1 and "diverged" in done.stderr
    run = _only_run()
    assert run.info.status.value == "FAILED"
    assert run.data.metrics == {"loss": 1.0}


def test_sigterm_marks_killed_and_flushes(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        cairn.start_run()
        for i in range(1000):
            cairn.log_metric("loss", i, step=i)
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    child = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == -signal.SIGTERM
    run = _only_run()
    assert run.info.status.value == "KILLED"
    assert len(cairn.Client().get_metric_history(run.info.run_id, "loss")) == 1000


def test_sigkill_mid_logging_keeps_flushed_points(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        run = cairn.start_run()
        step = 0
        while True:
            for _ in range(100):
                cairn.log_metric("loss", step, step=step)
                step += 1
            cairn.flush()
            print(step, flush=True)
        """,
    )
    child = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    flushed = 0
    while flushed < 2000:
        flushed = int(child.stdout.readline())
    child.kill()
    child.wait(timeout=30)
    run = _only_run()
    assert run.info.status.value == "RUNNING"  # nobody could mark it: the process was SIGKILLed
    steps = [m.step for m in cairn.Client().get_metric_history(run.info.run_id, "loss")]
    assert len(steps) >= flushed
    assert steps == list(range(len(steps)))  # no gap, no duplicate: batches are atomic


def test_cairn_run_id_attaches_a_child_process(tmp_path: Path) -> None:
    with cairn.start_run() as run:
        cairn.log_param("origin", "parent")
    script = _script(
        tmp_path,
        """
        cairn.log_metric("from_child", 42.0)
        cairn.log_param("child", "yes")
        """,
    )
    done = _run(script, env={"CAIRN_RUN_ID": run.info.run_id})
    assert done.returncode == 0, done.stderr
    stored = cairn.get_run(run.info.run_id)
    assert stored.data.metrics == {"from_child": 42.0}
    assert stored.data.params == {"origin": "parent", "child": "yes"}
    assert len(cairn.search_runs(output_format="list")) == 1


def test_git_commit_and_dirty_flag_are_tagged(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=a@b.c", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    script = repo / "train.py"
    script.write_text("import cairn\nwith cairn.start_run():\n    pass\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    env = {"CAIRN_TRACKING_URI": str(tmp_path / "cairn-runs")}
    assert _run(script, env=env).returncode == 0
    script.write_text(script.read_text() + "# edited\n")
    assert _run(script, env=env).returncode == 0
    runs = cairn.search_runs(output_format="list", order_by=["attributes.start_time ASC"])
    assert [r.data.tags["mlflow.source.git.commit"] for r in runs] == [commit, commit]
    assert [r.data.tags["cairn.source.git.dirty"] for r in runs] == ["false", "true"]
    assert runs[0].data.tags["mlflow.source.name"] == str(script.resolve())


def test_metric_calls_do_no_io_on_the_caller_thread() -> None:
    """The caller only queues: while the writer is blocked, log_metric still returns at once."""
    from cairn.tracking import config

    with cairn.start_run() as run:
        client = cairn.Client()
        batcher = config.get_batcher(client.store)
        with batcher._write_lock:  # hold the writer: any I/O on the caller's thread would block here
            started = time.perf_counter()
            for i in range(20_000):
                cairn.log_metric("m", i, step=i)
            elapsed = time.perf_counter() - started
            assert batcher.pending == 20_000
        assert elapsed < 10  # generous: it must not have waited for the lock (which it would forever)
        client.flush()
        assert batcher.pending == 0
        assert len(client.get_metric_history(run.info.run_id, "m")) == 20_000


def test_synchronous_metric_is_written_before_return() -> None:
    from cairn.tracking import config

    with cairn.start_run() as run:
        batcher = config.get_batcher(cairn.Client().store)
        with batcher._write_lock:
            cairn.log_metric("sync", 1.0, synchronous=True)
            assert batcher.pending == 0
        assert cairn.Client().store.get_run(run.info.run_id).data.metrics == {"sync": 1.0}


@pytest.mark.parametrize("processes", [4])
def test_four_processes_log_into_one_sqlite_file(tmp_path: Path, processes: int) -> None:
    with cairn.start_run() as run:
        pass
    script = _script(
        tmp_path,
        """
        import os
        rank = int(os.environ["RANK"])
        for i in range(3000):
            cairn.log_metric(f"m{rank}", i, step=i)
            if i % 500 == 0:
                cairn.log_metric("shared", rank, step=rank * 10_000 + i)
        """,
    )
    children = [
        subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env={**os.environ, "CAIRN_RUN_ID": run.info.run_id, "RANK": str(rank)},
        )
        for rank in range(processes)
    ]
    assert [c.wait(timeout=180) for c in children] == [0] * processes
    client = cairn.Client()
    for rank in range(processes):
        assert [m.step for m in client.get_metric_history(run.info.run_id, f"m{rank}")] == list(range(3000))
    assert len(client.get_metric_history(run.info.run_id, "shared")) == processes * 6
