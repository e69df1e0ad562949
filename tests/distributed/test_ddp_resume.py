"""Kill-and-resume of a DDP job under a real ``torchrun`` (2 ranks, gloo, CPU): every rank restores its own
RNG and data position, so the resumed job ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

import cairn
from cairn.checkpoint import load_component

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"
STEPS = list(range(1, 25))


def torchrun(
    role: str, out: Path, store: Path, *, nproc: int = 2, run_id: str | None = None, script: Path = SCRIPT
) -> subprocess.Popen[str]:
    env = {**os.environ, "CAIRN_TRACKING_URI": str(store), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CAIRN_RUN_ID", None)
    if run_id is not None:
        env["CAIRN_RUN_ID"] = run_id
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.Popen(
        [*command, str(script), role, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the test kills torchrun and every rank at once
    )


def kill_all(proc: subprocess.Popen[str]) -> None:
    """SIGKILL torchrun and every rank (the elastic agent starts its workers in sessions of their own)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    timer = threading.Timer(timeout, kill_all, (proc,))
    timer.start()
    try:
        output, _ = proc.communicate()
    finally:
        timer.cancel()
    assert proc.returncode == 0, output[-6000:]
    return output


def run_until_marker(proc: subprocess.Popen[str], marker: str = "KILL_ME", timeout: float = 240) -> list[str]:
    lines: list[str] = []
    timer = threading.Timer(timeout, kill_all, (proc,))
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                return lines
    finally:
        timer.cancel()
    raise AssertionError(f"never reached {marker}:\n" + "".join(lines)[-6000:])


def kill_group(proc: subprocess.Popen[str]) -> None:
    kill_all(proc)
    proc.wait(timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()


def curve(store: Path, run_id: str, key: str, **kwargs: object) -> list[tuple[int, float]]:
    cairn.set_tracking_uri(store)
    return [(m.step, m.value) for m in cairn.Client().get_metric_history(run_id, key, **kwargs)]


@pytest.mark.timeout(400)
def test_ddp_kill_all_ranks_mid_epoch_then_resume_is_bit_identical(tmp_path: Path) -> None:
    store, reference_store = tmp_path / "store", tmp_path / "reference-store"
    crashing = torchrun("crash", tmp_path / "crash", store)
    reference = torchrun("reference", tmp_path / "reference", reference_store)
    try:
        run_until_marker(crashing)
        kill_group(crashing)  # torchrun and both ranks, mid-epoch 1 (step 14; checkpoint of step 12 uploaded)
        finish(reference)
        run_id = (tmp_path / "crash" / "run_id.txt").read_text()
        output = finish(torchrun("resume", tmp_path / "resumed", store, run_id=run_id))
    finally:
        for proc in (crashing, reference):
            if proc.poll() is None:
                kill_all(proc)

    ranks = [json.loads((tmp_path / "resumed" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["resumed"], r["step"], r["epoch"]) for r in ranks] == [(True, 12, 1)] * 2, output[-3000:]
    assert not [w for r in ranks for w in r["warnings"] if "Resume" in w], ranks  # same world size: exact

    resumed = load_file(str(tmp_path / "resumed" / "final.safetensors"))
    wanted = load_file(str(tmp_path / "reference" / "final.safetensors"))
    different = [k for k in wanted if not torch.equal(resumed[k], wanted[k])]
    assert different == [], f"weights differ from the uninterrupted run: {different}"

    # one run, each step once, with the uninterrupted run's values; the dead process's later points superseded
    assert (tmp_path / "resumed" / "run_id.txt").read_text() == run_id
    reference_id = (tmp_path / "reference" / "run_id.txt").read_text()
    got, want = curve(store, run_id, "loss"), curve(reference_store, reference_id, "loss")
    assert [s for s, _ in got] == STEPS
    assert got == want
    everything = [s for s, _ in curve(store, run_id, "loss", include_superseded=True)]
    assert sorted(set(everything)) == STEPS and len(everything) >= len(STEPS)

    # a step checkpoint holds each rank's own state, listed in its manifest; the final one (run end) is rank 0's
    cairn.set_tracking_uri(store)
    assert [c.step for c in cairn.pytorch.list_run_checkpoints(run_id)] == [16, 20, 24]
    path = cairn.pytorch.checkpoint_path(run_id, step=20)
    manifest = json.loads((path / "manifest.json").read_text())
    assert {"rank-00001.json", "rank-00001.safetensors"} <= set(manifest["files"])
    assert manifest["metadata"]["world_size"] == 2
    rank0_rng = load_component(path, "rng")["torch"]
    rank1 = load_component(path, "rank-00001")
    assert not torch.equal(rank1["rng"]["torch"], rank0_rng)  # its own stream
    assert rank1["dataloader"]["batch_in_epoch"] == 4
    final = json.loads((cairn.pytorch.checkpoint_path(run_id, step=24) / "manifest.json").read_text())
    assert "rank-00001.json" not in final["files"]
