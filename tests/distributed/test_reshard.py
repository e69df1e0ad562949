"""Resharding under a real ``torchrun`` (gloo, CPU): an FSDP2 sharded checkpoint written by 1 rank restores
on 2, one written by 2 restores on 4, with model weights and optimizer state exactly the writer's at that
step (both compared unsharded), and a ResumeWarning that says what is not exact on another world size."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cairn
from cairn.checkpoint import read_manifest

from .test_ddp_resume import finish, kill_all, torchrun

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_explicit.py"


@pytest.mark.timeout(600)
def test_sharded_checkpoints_reshard_1_to_2_and_2_to_4_exactly(tmp_path: Path) -> None:
    writers = {n: (tmp_path / f"written-by-{n}", tmp_path / f"store-{n}") for n in (1, 2)}
    launched = [torchrun("reference", out, store, script=SCRIPT, nproc=n) for n, (out, store) in writers.items()]
    restores = []
    try:
        for proc in launched:
            finish(proc)
        os.environ["RESUME_STEP"] = "12"
        try:
            for n, (out, store) in writers.items():
                os.environ["RESUME_RUN"] = (out / "run_id.txt").read_text()
                restores.append(
                    torchrun("restore", tmp_path / f"restored-on-{2 * n}", store, script=SCRIPT, nproc=2 * n)
                )
        finally:
            del os.environ["RESUME_RUN"], os.environ["RESUME_STEP"]
        for proc in restores:
            finish(proc)
    finally:
        for proc in [*launched, *restores]:
            if proc.poll() is None:
                kill_all(proc)

    for n, (out, store) in writers.items():
        # the writer's checkpoint is DCP shards, one file per writing rank (1 rank: fully_shard still gives DTensors)
        cairn.set_tracking_uri(store)
        manifest = read_manifest(cairn.pytorch.checkpoint_path((out / "run_id.txt").read_text(), step=12))
        assert manifest.metadata["sharded"] == "sharded" and manifest.metadata.get("world_size", 1) == n
        assert {f for f in manifest.files if f.endswith(".distcp")} == {f"sharded/__{r}_0.distcp" for r in range(n)}

        at12 = load_file(str(out / "at12.safetensors"))
        restored_dir = tmp_path / f"restored-on-{2 * n}"
        restored = load_file(str(restored_dir / "restored.safetensors"))
        assert restored.keys() == at12.keys()
        assert any(k.endswith("exp_avg_sq") for k in at12) and any(k.endswith(".step") for k in at12)
        assert [k for k in at12 if not torch.equal(restored[k], at12[k])] == []
        for rank in range(2 * n):
            report = json.loads((restored_dir / f"rank{rank}.json").read_text())
            assert report["step"] == 12
            (warning,) = report["warnings"]  # every rank says what cannot be exact on another world size
            assert f"written by {n} rank(s), this job has {2 * n}" in warning and "RNG" in warning


@pytest.mark.timeout(300)
def test_a_sharded_checkpoint_holds_its_steps_values_while_training_mutates_them(tmp_path: Path) -> None:
    # the shard writes are delayed (scripts/fsdp_staging.py): the optimizer steps on in place meanwhile, and
    # the second checkpoint stages into the first one's buffers
    finish(torchrun("train", tmp_path / "out", tmp_path / "store", script=Path(SCRIPT).parent / "fsdp_staging.py"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for step in ("2", "5"):
        assert report[step]["differ_from_step"] == []
        assert any(k.startswith("model.") for k in report[step]["differ_from_final"])
        assert any(k.endswith("exp_avg_sq") for k in report[step]["differ_from_final"])


@pytest.mark.timeout(300)
def test_a_failed_background_shard_write_is_raised_and_leaves_no_checkpoint(tmp_path: Path) -> None:
    # rank 1's shard write of step 2 fails for real (a file size limit below its shard's size: EFBIG)
    store = tmp_path / "store"
    finish(torchrun("train", tmp_path / "out", store, script=Path(SCRIPT).parent / "fsdp_write_fails.py"))
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in ranks:
        assert report["2"] is None  # asynchronous: the training thread only staged
        assert "step-2" in report["4"] and "failed in the background, so that checkpoint does not exist" in report["4"]
        assert "ranks:dict_keys([1])" in report["4"]  # DCP names the rank whose write failed
        assert report["flush"] is None
    assert "'step-2' could not be written" in ranks[0]["6"] and "step 6 was queued nonetheless" in ranks[0]["6"]
    assert ranks[1]["6"] is None
    cairn.set_tracking_uri(store)
    run_id = ranks[0]["run_id"]
    assert [c.step for c in cairn.pytorch.list_run_checkpoints(run_id)] == [6]
    read_manifest(cairn.pytorch.checkpoint_path(run_id, step=6))
    assert list((cairn.pytorch.checkpoint_path(run_id, step=6).parent).glob(".tmp-*")) == []
