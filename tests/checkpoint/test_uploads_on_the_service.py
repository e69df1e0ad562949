"""Checkpoint uploads, the resume lease and the weights digest run on the one background service: the run's
ordered drain waits for uploads, their failures surface through the service's error box, and the run's lease
is released after everything else of the run was drained."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cairn
from cairn import background
from cairn.background import Phase
from cairn.checkpoint.formats import NATIVE
from cairn.checkpoint.lease import acquire_resume_lease
from cairn.checkpoint.run_checkpoints import RunCheckpoints
from cairn.errors import CheckpointWriteError


def test_end_run_waits_for_the_uploads_then_releases_the_lease() -> None:
    seen: list[str] = []
    with cairn.start_run() as run:
        run_id = run.info.run_id
        client = cairn.Client()
        lease = acquire_resume_lease(client, run_id)
        checkpoints = RunCheckpoints(client, run_id, NATIVE)

        def slow_upload() -> None:
            time.sleep(0.3)  # still running when end_run starts
            held = client.store.get_run_lease(run_id)
            seen.append(f"upload done, lease held: {held is not None and held.owner == lease.owner}")

        checkpoints.submit("upload of step-1", slow_upload)
        assert lease in background.service().workers(run_id)
        assert any(w.phase is Phase.UPLOADS for w in background.service().workers(run_id))
    assert seen == ["upload done, lease held: True"]  # drained by end_run, before the lease went
    assert checkpoints.pending == 0
    assert lease.released and client.store.get_run_lease(run_id) is None
    assert lease not in background.service().workers()  # the run's workers end with it


def test_the_lease_is_released_after_every_other_worker_of_its_run() -> None:
    log: list[str] = []

    class Recorder:
        def __init__(self, name: str, phase: Phase) -> None:
            self.name, self.phase = name, phase

        def drain(self, timeout: float | None) -> bool:
            return True

        def close(self) -> None:
            log.append(self.name)

        def raise_errors(self) -> None:
            pass

    with cairn.start_run() as run:
        run_id = run.info.run_id
        lease = acquire_resume_lease(cairn.Client(), run_id)
        original_release = lease.release

        def release() -> None:
            log.append("lease")
            original_release()

        lease.release = release  # type: ignore[method-assign]
        workers = [Recorder("fsync", Phase.FSYNC), Recorder("uploads", Phase.UPLOADS)]
        for worker in workers:
            background.register(worker, run_id=run_id)
    assert log == ["uploads", "fsync", "lease"]


def test_an_upload_failure_is_raised_once_by_the_next_logging_call() -> None:
    with cairn.start_run() as run:
        checkpoints = RunCheckpoints(cairn.Client(), run.info.run_id, NATIVE)

        def fail() -> None:
            raise OSError("No space left on device")

        checkpoints.submit("upload of step-4", fail)
        assert checkpoints.drain(timeout=30)
        with pytest.raises(CheckpointWriteError, match="upload of step-4: OSError: No space left on device"):
            cairn.log_metric("loss", 1.0)
        cairn.log_metric("loss", 2.0)  # raised once
        assert checkpoints.take_error() is None  # handed out once, whoever asks
    history = cairn.Client().get_metric_history(run.info.run_id, "loss")
    assert [m.value for m in history] == [1.0, 2.0]


def test_an_upload_failure_taken_by_its_integration_is_not_raised_again() -> None:
    with cairn.start_run() as run:
        checkpoints = RunCheckpoints(cairn.Client(), run.info.run_id, NATIVE)
        checkpoints.submit("upload of step-5", lambda: 1 / 0)
        assert checkpoints.drain(timeout=30)
        error = checkpoints.take_error()  # the integration reports it its own way
        assert error is not None and "step-5" in str(error)
        cairn.log_metric("loss", 1.0)
        cairn.flush()


def test_a_closed_upload_thread_is_registered_again_when_it_gets_work() -> None:
    with cairn.start_run() as run:
        checkpoints = RunCheckpoints(cairn.Client(), run.info.run_id, NATIVE)
        checkpoints.submit("first", lambda: None)
        assert checkpoints.close(timeout=30)
        gate = threading.Event()
        done: list[int] = []
        checkpoints.submit("second", lambda: (gate.wait(10), done.append(2)))
        assert any(w.phase is Phase.UPLOADS for w in background.service().workers(run.info.run_id))
        gate.set()
    assert done == [2]


def test_the_weights_digest_is_drained_by_the_service() -> None:
    import torch

    from cairn.flavors._torch_utils import WeightsDigest

    tensors = {"w": torch.arange(1_000_000, dtype=torch.float32)}
    digest = WeightsDigest(tensors)
    assert digest in background.service().workers() or digest.done
    assert background.drain(timeout=60)
    assert digest.done


def test_a_client_ending_its_run_drains_the_run_then_releases_the_lease() -> None:
    client = cairn.Client()
    run_id = client.create_run("0").info.run_id
    lease = acquire_resume_lease(client, run_id)
    checkpoints = RunCheckpoints(client, run_id, NATIVE)
    uploaded: list[bool] = []

    def slow_upload() -> None:
        time.sleep(0.3)
        held = client.store.get_run_lease(run_id)
        uploaded.append(held is not None and held.owner == lease.owner)

    checkpoints.submit("upload of step-1", slow_upload)
    client.set_terminated(run_id)
    assert uploaded == [True]  # waited for, while the lease was still held
    assert lease.released and client.store.get_run_lease(run_id) is None  # not held until the process exits
    assert client.get_run(run_id).info.status.value == "FINISHED"


def test_a_client_logging_call_raises_an_upload_failure_once() -> None:
    client = cairn.Client()
    run_id = client.create_run("0").info.run_id
    checkpoints = RunCheckpoints(client, run_id, NATIVE)
    checkpoints.submit("upload of step-9", lambda: 1 / 0)
    assert checkpoints.drain(timeout=30)
    with pytest.raises(CheckpointWriteError, match="upload of step-9: ZeroDivisionError"):
        client.log_metric(run_id, "loss", 1.0)
    client.log_metric(run_id, "loss", 2.0)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 2.0]


UPLOAD_AT_EXIT = """
import sys, time
from pathlib import Path
import cairn
from cairn.checkpoint.formats import LIGHTNING
from cairn.checkpoint.run_checkpoints import RunCheckpoints

client = cairn.Client()
run_id = client.create_run("0").info.run_id  # no fluent run: nothing ends it before exit
checkpoints = RunCheckpoints(client, run_id, LIGHTNING)

def slow_upload():
    time.sleep(1.0)  # still running when the script ends
    Path(sys.argv[1]).write_text("uploaded")

checkpoints.submit("upload of epoch=0-step=4.ckpt", slow_upload)
"""


def test_the_exit_drain_waits_for_uploads_of_a_run_nobody_ended(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(UPLOAD_AT_EXIT)
    marker = tmp_path / "marker"
    done = subprocess.run(
        [sys.executable, str(script), str(marker)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "uploaded"  # the service's exit drain waited (no atexit of the integration's own)
    assert "exit drain stopped" not in done.stderr
