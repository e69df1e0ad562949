"""The proof for loops without a DataLoader: a nanoGPT-style loop (scripts/train_nanogpt_style.py) killed with
SIGKILL after a checkpoint and restarted with ``CAIRN_RUN_ID`` + ``autolog(resume=True)`` + ``track_state``
ends bit-identical to an uninterrupted run, in one run whose loss curve has each step exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import cairn
from cairn.checkpoint import runs

from .test_resume_proof import _curves, _finish, _wait_for

SCRIPT = Path(__file__).resolve().parent / "scripts" / "train_nanogpt_style.py"
KILL_AFTER = 10
TOTAL_STEPS = 20


def _launch(out: Path, store: Path, *args: str, run_id: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env["CAIRN_TRACKING_URI"] = str(store)
    if run_id is not None:
        env["CAIRN_RUN_ID"] = run_id
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_nanogpt_style_loop_killed_and_resumed_is_bit_identical(tmp_path: Path) -> None:
    killed = _launch(tmp_path / "resumed", tmp_path / "store", str(KILL_AFTER))
    reference = _launch(tmp_path / "reference", tmp_path / "reference-store")
    lines = _wait_for(killed, "READY")
    assert "CHECKPOINTED" in lines
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    _finish(reference)

    cairn.set_tracking_uri(tmp_path / "store")
    [run] = cairn.search_runs(output_format="list", search_all_experiments=True)
    run_id = run.info.run_id
    assert [i.step for i in runs.list_run_checkpoints(run_id)] == [5, 10]
    restarted = _launch(tmp_path / "resumed", tmp_path / "store", run_id=run_id)
    _finish(restarted)

    resumed_w = load_file(str(tmp_path / "resumed" / "final.safetensors"))
    reference_w = load_file(str(tmp_path / "reference" / "final.safetensors"))
    assert resumed_w.keys() == reference_w.keys()
    for key in reference_w:
        assert torch.equal(resumed_w[key], reference_w[key]), f"{key} differs"
    assert (tmp_path / "resumed" / "run_id.txt").read_text() == run_id
    assert (tmp_path / "resumed" / "best_val_loss.txt").read_text() == (
        tmp_path / "reference" / "best_val_loss.txt"
    ).read_text()
    reference_id = (tmp_path / "reference" / "run_id.txt").read_text()
    got = _curves(tmp_path / "store", run_id, ("loss", "lr"))
    want = _curves(tmp_path / "reference-store", reference_id, ("loss", "lr"))
    for key in ("loss", "lr"):
        assert [s for s, _ in got[key]] == list(range(1, TOTAL_STEPS + 1)), key
        assert got[key] == want[key], key
    cairn.set_tracking_uri(tmp_path / "store")
    assert [i.step for i in runs.list_run_checkpoints(run_id)][-1] == TOTAL_STEPS  # the final checkpoint
