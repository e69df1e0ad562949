"""FSDP2 sharded checkpoints under a real ``torchrun`` (2 ranks, gloo, CPU): every rank writes its shards
through ``torch.distributed.checkpoint``; kill-and-resume is bit-identical; DCP's pickled metadata is never
unpickled beyond its own classes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cairn
from cairn.checkpoint import read_manifest, write_manifest
from cairn.checkpoint.sharded import load_sharded, read_metadata
from cairn.errors import CheckpointCorrupt, CheckpointError

from .test_ddp_resume import finish, kill_group, run_until_marker, torchrun

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_explicit.py"
AUTOLOG_SCRIPT = Path(__file__).parent / "scripts" / "fsdp_autolog.py"


@pytest.mark.timeout(400)
def test_fsdp2_sharded_kill_and_resume_is_bit_identical(tmp_path: Path) -> None:
    store, reference_store = tmp_path / "store", tmp_path / "reference-store"
    crashing = torchrun("crash", tmp_path / "crash", store, script=SCRIPT)
    reference = torchrun("reference", tmp_path / "reference", reference_store, script=SCRIPT)
    try:
        lines = run_until_marker(crashing)
        run_id = next(line.split()[1] for line in lines if line.startswith("KILL_ME"))
        kill_group(crashing)  # after step 8: the sharded checkpoint of step 6 is the newest
        finish(reference)
        os.environ["RESUME_RUN"] = reference_id = (tmp_path / "reference" / "run_id.txt").read_text()
        os.environ["RESUME_STEP"] = "12"
        fewer = torchrun("restore", tmp_path / "fewer", reference_store, script=SCRIPT, nproc=1)  # 2 -> 1 meanwhile
        os.environ["RESUME_RUN"] = run_id
        try:
            finish(torchrun("resume", tmp_path / "resumed", store, script=SCRIPT))
            finish(fewer)
        finally:
            del os.environ["RESUME_RUN"], os.environ["RESUME_STEP"]
    finally:
        for proc in (crashing, reference):
            if proc.poll() is None:
                kill_group(proc)

    ranks = [json.loads((tmp_path / "resumed" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["step"], r["epoch"]) for r in ranks] == [(6, 0)] * 2
    resumed = load_file(str(tmp_path / "resumed" / "final.safetensors"))
    wanted = load_file(str(tmp_path / "reference" / "final.safetensors"))
    assert resumed.keys() == wanted.keys()
    assert [k for k in wanted if not torch.equal(resumed[k], wanted[k])] == []

    # 2 -> 1: DCP reshards; model and optimizer state exactly the reference's at step 12, and a warning
    at12 = load_file(str(tmp_path / "reference" / "at12.safetensors"))
    restored = load_file(str(tmp_path / "fewer" / "restored.safetensors"))
    assert restored.keys() == at12.keys() and any(k.endswith("exp_avg_sq") for k in at12)
    assert [k for k in at12 if not torch.equal(restored[k], at12[k])] == []
    fewer_report = json.loads((tmp_path / "fewer" / "rank0.json").read_text())
    assert fewer_report["step"] == 12
    (warning,) = fewer_report["warnings"]
    assert "written by 2 rank(s), this job has 1" in warning

    cairn.set_tracking_uri(store)
    client = cairn.Client()
    got = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    cairn.set_tracking_uri(reference_store)
    reference_history = cairn.Client().get_metric_history(reference_id, "loss", include_superseded=True)
    want = [(m.step, m.value) for m in reference_history]  # (the 2 -> 1 restore continued it at step 12)
    assert [s for s, _ in got] == list(range(1, 17)) and got == want

    # the checkpoint: every rank's shards, DCP's metadata and each rank's RNG under one manifest
    cairn.set_tracking_uri(store)
    path = cairn.pytorch.checkpoint_path(run_id, step=12)
    manifest = read_manifest(path)
    assert {"sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp", "rank-00001.json"} <= set(
        manifest.files
    )
    assert manifest.metadata["sharded"] == "sharded" and manifest.metadata["world_size"] == 2
    read_metadata(path / "sharded" / ".metadata")  # DCP's own metadata passes the allow-list

    # a hostile .metadata (a pickle calling os.system), even with a manifest rewritten to match it, is
    # refused before anything in it is looked up
    hostile = tmp_path / "hostile"
    shutil.copytree(path, hostile)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    (hostile / "sharded" / ".metadata").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointCorrupt, match=r"damaged: sharded/\.metadata"):
        read_manifest(hostile)  # as found: the manifest no longer vouches for it
    (hostile / "manifest.json").unlink()
    write_manifest(hostile, step=12, metadata=manifest.metadata)
    with pytest.raises(CheckpointCorrupt, match=r"posix\.system|os\.system"):
        load_sharded(hostile, model=None, optimizer=None)
    assert not marker.exists()


@pytest.mark.timeout(300)
def test_fsdp2_autolog_step_checkpoints_are_sharded_and_the_run_end_one_is_reported(tmp_path: Path) -> None:
    finish(torchrun("train", tmp_path / "out", tmp_path / "store", script=AUTOLOG_SCRIPT))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["checkpoints"] == [[4, "sharded"], [8, "sharded"], [12, "sharded"]]  # keep_last=3 of 4, 8, 12
    (warning,) = report["warnings"]  # step 16 at run end: only rank 0 is there, so it is not taken, and said so
    assert "no checkpoint at run end (step 16)" in warning and "newest checkpoint is step 12" in warning


@pytest.mark.timeout(300)
def test_a_rank_killed_during_a_sharded_save_leaves_no_checkpoint(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = torchrun("killsave", tmp_path / "out", store, script=SCRIPT)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "SIGKILL" in output  # rank 1 died writing its shards; torchrun ended rank 0
    run_id = next(line.split()[1] for line in output.splitlines() if line.startswith("RUN "))
    cairn.set_tracking_uri(store)
    assert cairn.pytorch.list_run_checkpoints(run_id) == []
    with pytest.raises(CheckpointError, match="no checkpoint"):
        cairn.pytorch.checkpoint_path(run_id)
