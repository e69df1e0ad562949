"""The explicit API under a real ``torchrun`` (gloo, CPU): ``log_checkpoint`` and ``resume`` on every rank.

Same world size (2 -> 2): bit-identical to the uninterrupted run, the run id broadcast from rank 0. Another
world size (2 -> 1): the replicated state is restored exactly, and a warning says what cannot be exact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cairn
from cairn.checkpoint import load_component

from .test_ddp_resume import finish, torchrun

SCRIPT = Path(__file__).parent / "scripts" / "ddp_explicit.py"


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(400)
def test_explicit_checkpoint_on_every_rank_resumes_exactly_and_warns_on_another_world_size(tmp_path: Path) -> None:
    store = tmp_path / "store"
    finish(torchrun("train", tmp_path / "train", store, script=SCRIPT))
    run_id = (tmp_path / "train" / "run_id.txt").read_text()
    os.environ["RESUME_RUN"] = run_id
    try:
        finish(torchrun("resume", tmp_path / "same", store, script=SCRIPT))
        finish(torchrun("resume", tmp_path / "fewer", store, script=SCRIPT, nproc=1))
    finally:
        del os.environ["RESUME_RUN"]

    # 2 -> 2: every rank resumed the run rank 0 named (no CAIRN_RUN_ID), exactly, without a warning
    same_ranks = [json.loads((tmp_path / "same" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["step"], r["epoch"], r["warnings"]) for r in same_ranks] == [(6, 0, [])] * 2
    assert same_ranks[1]["run_id"] == run_id
    final = {name: load_file(str(tmp_path / name / "final.safetensors")) for name in ("same", "train")}
    assert same(final["same"], final["train"])

    # 2 -> 1: weights restored exactly; the warning names the world sizes and what cairn does instead
    cairn.set_tracking_uri(store)
    path = cairn.pytorch.checkpoint_path(run_id, step=6)
    assert same(load_file(str(tmp_path / "fewer" / "restored.safetensors")), load_component(path, "model"))
    (fewer,) = [json.loads((tmp_path / "fewer" / "rank0.json").read_text())]
    assert fewer["step"] == 6
    (warning,) = fewer["warnings"]
    assert "written by 2 rank(s), this job has 1" in warning
    assert "rank 0 restores the RNG state rank 0 saved" in warning
    assert "epoch 0 restarts from its beginning" in warning


@pytest.mark.timeout(300)
def test_a_rank_that_cannot_capture_its_state_is_named_and_nobody_hangs(tmp_path: Path) -> None:
    store = tmp_path / "store"
    finish(torchrun("badpeer", tmp_path / "out", store, script=SCRIPT))
    errors = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text())["error"] for r in (0, 1)]
    assert errors[0].startswith("CheckpointError: rank 1 could not capture its state for the checkpoint")
    assert "InvalidArgument" in errors[0] and errors[1].startswith("InvalidArgument: loader= needs")
    cairn.set_tracking_uri(store)
    run_id = (tmp_path / "out" / "run_id.txt").read_text()
    assert [c.step for c in cairn.pytorch.list_run_checkpoints(run_id)] == [8]  # no step 6 without rank 1's state
