"""The proof: training killed with SIGKILL in the middle of an epoch, right after a checkpoint, and restarted
with resume ends bit-identical to an uninterrupted run, in one run whose curves are continuous.

Two variants of scripts/train_resume.py: ``explicit`` (log_checkpoint + cairn.pytorch.resume, Adam,
ResumableLoader) and ``autolog`` (autolog(checkpoint_every_n_steps=5, resume=True), SGD momentum, plain
DataLoader). The killed and restarted processes are real subprocesses (both variants run side by side);
the uninterrupted reference runs in this process meanwhile (same code, one thread, same seeds).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file

import cairn
from cairn.checkpoint import runs

SCRIPT = Path(__file__).resolve().parent / "scripts" / "train_resume.py"
MODES = ("explicit", "autolog")
KILL_AFTER = 10  # epoch 1 runs steps 9..16: the checkpoint of step 10 is two batches into it
TOTAL_STEPS = 24


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cairn_train_resume_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch(mode: str, out: Path, store: Path, *args: str, run_id: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env["CAIRN_TRACKING_URI"] = str(store)
    if run_id is not None:
        env["CAIRN_RUN_ID"] = run_id
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, str(out), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(proc: subprocess.Popen[str], marker: str) -> list[str]:
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line.strip())
        if line.strip() == marker:
            return seen
    proc.wait(timeout=60)
    stderr = proc.stderr.read() if proc.stderr else ""
    pytest.fail(f"the script ended before printing {marker} (saw {seen}); stderr:\n{stderr[-3000:]}")


def _finish(proc: subprocess.Popen[str]) -> None:
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]


def _curves(store: Path, run_id: str, keys: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    cairn.set_tracking_uri(store)
    client = cairn.Client()
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def test_sigkill_mid_epoch_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    killed = {m: _launch(m, tmp_path / m / "resumed", tmp_path / m / "store", str(KILL_AFTER)) for m in MODES}

    # The uninterrupted reference, in this process while the subprocesses train.
    script = _script()
    threads = torch.get_num_threads()
    reference_ids = {}
    try:
        for mode in MODES:
            cairn.set_tracking_uri(tmp_path / mode / "reference-store")
            train = script.train_explicit if mode == "explicit" else script.train_autolog
            reference_ids[mode] = train(tmp_path / mode / "reference")
    finally:
        torch.set_num_threads(threads)

    for proc in killed.values():
        lines = _wait_for(proc, "READY")
        assert "CHECKPOINTED" in lines
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL

    run_ids = {}
    for mode in MODES:
        cairn.set_tracking_uri(tmp_path / mode / "store")
        [run] = cairn.search_runs(output_format="list", search_all_experiments=True)
        run_ids[mode] = run.info.run_id
        steps = [i.step for i in runs.list_run_checkpoints(run.info.run_id)]
        assert steps == [5, 10]  # the dead process got as far as the checkpoint of step 10
    restarted = {m: _launch(m, tmp_path / m / "resumed", tmp_path / m / "store", run_id=run_ids[m]) for m in MODES}
    for proc in restarted.values():
        _finish(proc)

    for mode in MODES:
        # 1. bit-identical final weights
        resumed_file = tmp_path / mode / "resumed" / "final.safetensors"
        reference_file = tmp_path / mode / "reference" / "final.safetensors"
        resumed, reference = load_file(str(resumed_file)), load_file(str(reference_file))
        assert resumed.keys() == reference.keys()
        for key in reference:
            assert torch.equal(resumed[key], reference[key]), f"{mode}: {key} differs"
        assert resumed_file.read_bytes() == reference_file.read_bytes()
        # 2. one run: the restart continued the run the killed process had
        cairn.set_tracking_uri(tmp_path / mode / "store")
        runs_in_store = cairn.search_runs(output_format="list", search_all_experiments=True)
        assert [r.info.run_id for r in runs_in_store] == [run_ids[mode]]
        assert (tmp_path / mode / "resumed" / "run_id.txt").read_text() == run_ids[mode]
        assert runs_in_store[0].info.status.value == "FINISHED"
        # 3. continuous curves equal to the uninterrupted run's, step by step
        keys = ("loss",) if mode == "explicit" else ("loss", "lr")
        got = _curves(tmp_path / mode / "store", run_ids[mode], keys)
        want = _curves(tmp_path / mode / "reference-store", reference_ids[mode], keys)
        for key in keys:
            steps = [s for s, _ in got[key]]
            assert steps == list(range(1, TOTAL_STEPS + 1)), f"{mode}/{key}: {steps}"
            assert got[key] == want[key], f"{mode}/{key} differs from the uninterrupted run"
        # the dead process's points after the checkpoint are kept, flagged, hidden
        cairn.set_tracking_uri(tmp_path / mode / "store")
        client = cairn.Client()
        everything = [m.step for m in client.get_metric_history(run_ids[mode], "loss", include_superseded=True)]
        assert everything.count(KILL_AFTER + 1) == 2 and everything.count(KILL_AFTER + 2) == 2
