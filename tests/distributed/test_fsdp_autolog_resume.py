"""``autolog(resume=True)`` restores a sharded (FSDP2) checkpoint as it does a DDP one: every rank loads its
shards of model and optimizer (DCP) before the model's first forward, and its own RNG and data position.
Under a real ``torchrun --max-restarts=1`` (2 ranks, gloo, CPU): rank 1 dies mid-epoch after the sharded
checkpoint of step 12; the restarted workers resume from it, and the job ends bit-identical to an
uninterrupted one, each step logged once, its later step checkpoints sharded too."""

from __future__ import annotations

from pathlib import Path

import pytest

import cairn

from .test_elastic import check_resumed_exactly, run_to_the_end


@pytest.fixture(scope="module")
def fsdp_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fsdp-reference")
    run_to_the_end("reference", root / "out", root / "store", FSDP="1")
    return root / "out", root / "store"


def check_sharded_checkpoints(store: Path, run_id: str) -> None:
    cairn.set_tracking_uri(store)  # the resumed attempt's step checkpoints are sharded too (step 24: run end)
    assert [(c.step, c.metadata.get("sharded")) for c in cairn.pytorch.list_run_checkpoints(run_id)] == [
        (12, "sharded"),
        (16, "sharded"),
        (20, "sharded"),
    ]


@pytest.mark.timeout(400)
def test_fsdp2_autolog_resume_restores_the_sharded_checkpoint_exactly(
    tmp_path: Path, fsdp_reference: tuple[Path, Path]
) -> None:
    store = tmp_path / "store"
    output = run_to_the_end("elastic", tmp_path / "out", store, FSDP="1")
    run_id = (tmp_path / "out" / "run_id.txt").read_text()
    check_resumed_exactly(tmp_path / "out", store, run_id, fsdp_reference, output)
    check_sharded_checkpoints(store, run_id)


@pytest.mark.timeout(400)
def test_fsdp2_explicit_resume_with_autolog_on_counts_no_step_for_dcp(
    tmp_path: Path, fsdp_reference: tuple[Path, Path]
) -> None:
    """``cairn.pytorch.resume(model=, optimizer=)`` with autolog on: DCP's optimizer-state initialisation (a
    zero-gradient ``optimizer.step()``) is not a training step, so autolog's later checkpoints are still
    sharded and its step count is not shifted."""
    store = tmp_path / "store"
    cairn.set_tracking_uri(store)
    run_id = cairn.Client().create_run("0").info.run_id
    output = run_to_the_end("elastic", tmp_path / "out", store, FSDP="1", EXPLICIT="1", CAIRN_RUN_ID=run_id)
    check_resumed_exactly(tmp_path / "out", store, run_id, fsdp_reference, output)
    check_sharded_checkpoints(store, run_id)
    assert "cannot be stored in a checkpoint" not in output
