"""``autolog(resume=True)`` restores a sharded (FSDP2) checkpoint as it does a DDP one: every rank loads its
shards of model and optimizer (DCP) before the model's first forward, and its own RNG and data position.
Under a real ``torchrun --max-restarts=1`` (2 ranks, gloo, CPU): rank 1 dies mid-epoch after the sharded
checkpoint of step 12; the restarted workers resume from it with autolog alone, and the job ends
bit-identical to an uninterrupted one, each step logged once."""

from __future__ import annotations

from pathlib import Path

import pytest

import cairn

from .test_elastic import check_resumed_exactly, run_to_the_end


@pytest.mark.timeout(400)
def test_fsdp2_autolog_resume_restores_the_sharded_checkpoint_exactly(tmp_path: Path) -> None:
    reference = (tmp_path / "reference", tmp_path / "reference-store")
    run_to_the_end("reference", *reference, FSDP="1")
    store = tmp_path / "store"
    output = run_to_the_end("elastic", tmp_path / "out", store, FSDP="1")
    run_id = (tmp_path / "out" / "run_id.txt").read_text()
    check_resumed_exactly(tmp_path / "out", store, run_id, reference, output)
    cairn.set_tracking_uri(store)  # the resumed attempt's step checkpoints are sharded too (step 24: run end)
    assert [(c.step, c.metadata.get("sharded")) for c in cairn.pytorch.list_run_checkpoints(run_id)] == [
        (12, "sharded"),
        (16, "sharded"),
        (20, "sharded"),
    ]
