"""The background service: one ordered drain at end_run, errors raised once, the exit and SIGTERM drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import cairn
from cairn import background
from cairn.background import BackgroundTaskError, Phase
from cairn.errors import CheckpointWriteError


class _Recorder:
    """A worker that notes when it is drained and closed."""

    def __init__(self, name: str, phase: Phase, log: list[str]) -> None:
        self.name = name
        self.phase = phase
        self._log = log
        self.closed = False

    def drain(self, timeout: float | None) -> bool:
        self._log.append(self.name)
        return True

    def close(self) -> None:
        self.closed = True

    def raise_errors(self) -> None:
        pass


def test_end_run_drains_the_workers_in_the_documented_order() -> None:
    log: list[str] = []
    with cairn.start_run() as run:
        # registered in an order unlike the drain order, with one worker of another run
        workers = [
            _Recorder("fsync", Phase.FSYNC, log),
            _Recorder("uploads", Phase.UPLOADS, log),
            _Recorder("metrics", Phase.METRICS, log),
            _Recorder("checkpoints", Phase.CHECKPOINTS, log),
            _Recorder("autolog", Phase.AUTOLOG, log),
            _Recorder("system", Phase.SYSTEM_METRICS, log),
        ]
        other = _Recorder("other run", Phase.SYSTEM_METRICS, log)
        for worker in workers:
            background.register(worker, run_id=run.info.run_id if worker.name != "fsync" else None)
        background.register(other, run_id="another-run")
        background.submit(lambda: log.append("task"), what="a task")
    assert log == ["system", "task", "autolog", "checkpoints", "metrics", "uploads", "fsync"]
    assert all(w.closed for w in workers if w.name != "fsync")  # the run's workers end with it
    assert not workers[0].closed and not other.closed
    assert workers[0] in background.service().workers() and other in background.service().workers()
    assert workers[1] not in background.service().workers()


def test_a_failed_task_is_raised_once_by_the_next_logging_call() -> None:
    gate = threading.Event()

    def failing() -> None:
        gate.wait(10)
        raise OSError("disk on fire")

    with cairn.start_run() as run:
        background.submit(failing, what="logging the model summary")
        cairn.log_metric("loss", 1.0)  # nothing failed yet
        gate.set()
        assert background.drain(timeout=30)
        with pytest.raises(BackgroundTaskError, match=r"logging the model summary failed.*disk on fire"):
            cairn.log_metric("loss", 2.0)
        cairn.log_metric("loss", 3.0)  # raised once
    history = cairn.Client().get_metric_history(run.info.run_id, "loss")
    assert [m.value for m in history] == [1.0, 2.0, 3.0]  # the call that raised still logged its point


def test_a_background_failure_is_raised_by_end_run_and_the_run_ends() -> None:
    run = cairn.start_run()
    background.submit(lambda: 1 / 0, what="uploading checkpoint step-3")
    with pytest.raises(BackgroundTaskError, match=r"uploading checkpoint step-3 failed.*ZeroDivisionError"):
        cairn.end_run()
    assert cairn.get_run(run.info.run_id).info.status.value == "FINISHED"
    cairn.log_metric("after", 1.0)  # raised once: a new run logs normally
    cairn.end_run()


def test_flush_raises_a_deferred_failure() -> None:
    with cairn.start_run():
        background.submit(lambda: 1 / 0, what="a task")
        background.drain(timeout=30)
        with pytest.raises(BackgroundTaskError):
            cairn.flush()
        cairn.flush()


def test_a_worker_error_surfaces_at_end_run(tmp_path: Path) -> None:
    import torch

    from cairn.checkpoint import AsyncCheckpointWriter, snapshot_state

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the checkpoint directory should be")
    writer = AsyncCheckpointWriter(blocked / "checkpoints")
    run = cairn.start_run()
    writer.submit(snapshot_state({"model": {"w": torch.ones(3)}}, step=1, epoch=0))
    with pytest.raises(CheckpointWriteError, match="step-1"):
        cairn.end_run()
    assert cairn.get_run(run.info.run_id).info.status.value == "FINISHED"
    writer.close()  # raised once: nothing left


EXIT_SCRIPT = """
import signal, sys, time, torch
import cairn
from cairn.checkpoint import AsyncCheckpointWriter, snapshot_state, state_tree

real = state_tree._write_tensors
def slow(tensors, path):
    time.sleep(0.5)  # the checkpoint is still being written when the script ends
    real(tensors, path)
state_tree._write_tensors = slow

run = cairn.start_run()
writer = AsyncCheckpointWriter(sys.argv[1])
for step in range(20_000):
    cairn.log_metric("loss", step, step=step)
writer.submit(snapshot_state({"model": {"w": torch.ones(100)}}, step=7, epoch=0))
cairn.log_metric("after_checkpoint", 1.0)
if sys.argv[2] == "sigterm":
    print("ready", flush=True)
    time.sleep(60)
# exits without end_run, close or flush
"""


def _finished_script(tmp_path: Path, mode: str) -> int:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    args = [sys.executable, str(script), str(tmp_path / "checkpoints"), mode]
    if mode == "exit":
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=dict(os.environ))
        assert done.returncode == 0, done.stderr
        return done.returncode
    child = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    return child.wait(timeout=120)


@pytest.mark.parametrize("mode", ["exit", "sigterm"])
def test_the_exit_drain_keeps_every_point_and_checkpoint(tmp_path: Path, mode: str) -> None:
    from cairn.checkpoint import scan_checkpoints

    code = _finished_script(tmp_path, mode)
    assert code == (0 if mode == "exit" else -signal.SIGTERM)
    run = cairn.search_runs(output_format="list")[0]
    assert run.info.status.value == ("FINISHED" if mode == "exit" else "KILLED")
    client = cairn.Client()
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 20_000
    assert len(client.get_metric_history(run.info.run_id, "after_checkpoint")) == 1
    assert [c.step for c in scan_checkpoints(tmp_path / "checkpoints")] == [7]


def test_end_run_stops_system_metrics_with_a_final_sample_written_with_the_run() -> None:
    from cairn.autolog.system_metrics import SystemMetricsMonitor
    from cairn.tracking import config

    with cairn.start_run() as run:
        batcher = config.get_batcher(cairn.Client().store)
        monitor = SystemMetricsMonitor(run.info.run_id, batcher.add, interval=3600, step_source=lambda: 42)
        monitor.start()
        assert monitor in background.service().workers()
    # the run's drain stopped sampling (no sample in an hour otherwise) and wrote the final sample's points
    assert monitor.samples == 1 and monitor not in background.service().workers()
    history = cairn.Client().get_metric_history(run.info.run_id, "system/cpu_percent")
    assert [m.step for m in history] == [42]


def test_a_point_the_writer_dropped_is_raised_once_by_the_next_logging_call() -> None:
    from cairn.errors import InvalidArgument
    from cairn.store.base import MetricPoint
    from cairn.tracking import config

    with cairn.start_run() as run:
        batcher = config.get_batcher(cairn.Client().store)
        batcher.add(MetricPoint(run.info.run_id, "x", 2.0, 1, 2**63))  # past the call's checks
        assert background.drain(timeout=30)  # the writer drops it: nothing raised yet
        with pytest.raises(InvalidArgument, match=r"key 'x', step 9223372036854775808"):
            cairn.log_metric("y", 1.0)
        cairn.log_metric("y", 2.0)
        cairn.flush()  # raised once
    assert [m.value for m in cairn.Client().get_metric_history(run.info.run_id, "y")] == [1.0, 2.0]


def test_points_logged_by_a_user_exit_handler_are_drained_too(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import atexit
            import cairn

            ids = []
            atexit.register(lambda: cairn.log_metric("at_exit", 1.0, run_id=ids[0]))  # before any run exists
            ids.append(cairn.start_run().info.run_id)
            cairn.log_metric("loss", 0.5)
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run = cairn.search_runs(output_format="list")[0]
    assert run.data.metrics == {"loss": 0.5, "at_exit": 1.0}
    assert run.info.status.value == "FINISHED"


def test_a_process_that_goes_on_after_sigterm_still_gets_its_points_written(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import signal, time
            import cairn

            stop = []
            signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))  # stops training gracefully
            run = cairn.start_run()  # cairn's SIGTERM handler chains to the one above
            cairn.log_metric("before", 1.0)
            print("ready", flush=True)
            while not stop:
                time.sleep(0.01)
            cairn.log_metric("after_sigterm", 2.0, run_id=run.info.run_id)  # e.g. a last validation figure
            """
        )
    )
    child = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=120) == 0
    run = cairn.search_runs(output_format="list")[0]
    assert run.info.status.value == "KILLED"
    assert run.data.metrics == {"before": 1.0, "after_sigterm": 2.0}


def test_the_service_holds_workers_weakly(tmp_path: Path) -> None:
    import gc
    import weakref

    from cairn.checkpoint import AsyncCheckpointWriter

    writer = AsyncCheckpointWriter(tmp_path / "checkpoints")
    assert writer in background.service().workers()
    collected = weakref.ref(writer)
    del writer
    gc.collect()
    assert collected() is None  # an idle writer nobody references is not kept alive (with its buffers)
    assert all(type(w).__name__ != "AsyncCheckpointWriter" for w in background.service().workers())


def test_background_task_error_lives_in_errors_and_is_re_exported() -> None:
    from cairn import errors

    assert BackgroundTaskError is errors.BackgroundTaskError
    assert issubclass(BackgroundTaskError, errors.CairnError)


def test_an_exit_hook_can_be_removed_and_is_not_kept_referenced() -> None:
    import gc
    import weakref

    class Integration:
        def at_exit(self) -> None:
            pass

    integration = Integration()
    background.add_exit_hook(integration.at_exit)
    background.remove_exit_hook(integration.at_exit)
    background.remove_exit_hook(integration.at_exit)  # no error when absent
    collected = weakref.ref(integration)
    del integration
    gc.collect()
    assert collected() is None


HUNG_UPLOAD_SCRIPT = """
import sys, time
from pathlib import Path
import cairn
from cairn.artifacts.local import LocalArtifactStore
from cairn.checkpoint.formats import NATIVE
from cairn.checkpoint.run_checkpoints import RunCheckpoints

def unreachable(self, *args, **kwargs):
    time.sleep(600)  # an artifact store that never answers
LocalArtifactStore.put_file = LocalArtifactStore.put_dir = unreachable

run = cairn.start_run()
checkpoints = RunCheckpoints(cairn.Client(), run.info.run_id, NATIVE)
local = Path(sys.argv[1])
local.mkdir()
(local / "model.safetensors").write_bytes(b"weights")
checkpoints.submit("upload of step-3", lambda: checkpoints.upload_dir(local, "step-3", manifest=b"{}"))
cairn.log_metric("loss", 0.25, step=3)
print(run.info.run_id, flush=True)
if sys.argv[2] == "sigterm":
    time.sleep(60)
# exits with the upload hung
"""


@pytest.mark.parametrize("mode", ["exit", "sigterm"])
def test_a_hung_upload_does_not_hang_exit_past_the_bound(tmp_path: Path, mode: str) -> None:
    import time

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(HUNG_UPLOAD_SCRIPT))
    env = dict(os.environ, CAIRN_EXIT_DRAIN_TIMEOUT="2")
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "step-3"), mode],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    run_id = child.stdout.readline().strip()
    if mode == "sigterm":
        child.send_signal(signal.SIGTERM)
    code = child.wait(timeout=60)
    stderr = child.stderr.read()
    assert time.monotonic() - started < 40  # bounded: the upload sleeps 600 s
    assert code == (0 if mode == "exit" else -signal.SIGTERM), stderr
    assert "exit drain stopped after 2 s (CAIRN_EXIT_DRAIN_TIMEOUT)" in stderr
    assert f"the checkpoint uploads (run {run_id}): 1 checkpoint upload job(s) not finished" in stderr
    assert f"{run_id}/checkpoints" in stderr or "staging directory" in stderr
    run = cairn.get_run(run_id)
    assert run.info.status.value == ("FINISHED" if mode == "exit" else "KILLED")
    assert run.data.metrics == {"loss": 0.25}  # the metric points were drained before the uploads


NATIVE_HUNG_SCRIPT = """
import time, torch
import cairn
from cairn.artifacts.local import LocalArtifactStore

def unreachable(self, *args, **kwargs):
    time.sleep(600)  # an artifact store that never answers
LocalArtifactStore.put_file = LocalArtifactStore.put_dir = LocalArtifactStore.put_bytes = unreachable

run = cairn.start_run()
cairn.pytorch.log_checkpoint(model=torch.nn.Linear(3, 2), step=3)  # written, then uploaded by the writer
cairn.log_metric("loss", 0.25, step=3)
print(run.info.run_id, flush=True)
# exits: the run's end waits for the checkpoint's upload, which never returns
"""


def test_a_native_checkpoint_whose_upload_hangs_ends_the_run_within_the_bound(tmp_path: Path) -> None:
    import time

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(NATIVE_HUNG_SCRIPT))
    env = dict(os.environ, CAIRN_EXIT_DRAIN_TIMEOUT="2")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )
    assert time.monotonic() - started < 40  # the end-of-run wait shares the 2 s bound, not the 600 s upload
    run_id = done.stdout.strip()
    assert f"run {run_id}: 1 checkpoint(s) still being written or uploaded" in done.stderr, done.stderr
    assert f"staging/{run_id}/checkpoints" in done.stderr  # where the written checkpoint is
    assert "exit drain stopped after 2 s (CAIRN_EXIT_DRAIN_TIMEOUT)" in done.stderr
    cairn.set_tracking_uri(tmp_path / "cairn-runs")
    run = cairn.get_run(run_id)
    assert run.info.status.value != "RUNNING"
    assert run.data.metrics == {"loss": 0.25}


BLOCKING_HOOK_SCRIPT = """
import time
import cairn
from cairn.tracking import fluent

fluent.add_end_run_hook(lambda run_id, status: time.sleep(600))  # a wait the service cannot bound
run = cairn.start_run()
print(run.info.run_id, flush=True)
"""


def test_an_exit_blocked_outside_the_service_is_ended_after_the_bound(tmp_path: Path) -> None:
    import time

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(BLOCKING_HOOK_SCRIPT))
    env = dict(os.environ, CAIRN_EXIT_DRAIN_TIMEOUT="2")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )
    assert time.monotonic() - started < 60  # 2 s, then the grace period, not the hook's 600 s
    assert done.returncode == 1, done.stderr  # the interpreter's exit was cut short
    assert "did not return either: the process is ended now" in done.stderr
