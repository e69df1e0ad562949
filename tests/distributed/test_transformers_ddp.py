"""HF ``Trainer`` DDP under a real ``torchrun`` (2 ranks, gloo, CPU) with ``CairnCallback``: one run, metrics and
``checkpoint-N`` uploads from the main process only, each uploaded checkpoint complete (every rank's
``rng_state_<rank>.pth``), and a kill of every rank mid-epoch resumed with ``trainer.train(resume_from_checkpoint=
cairn.transformers.checkpoint_path(run_id))`` into the same run, ending bit-identical to an uninterrupted job."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'cairn[transformers]')")

import torch
from safetensors.torch import load_file

import cairn
from tests.distributed.test_ddp_resume import curve, finish, kill_all, kill_group, run_until_marker, torchrun

SCRIPT = Path(__file__).parent / "scripts" / "transformers_ddp.py"
CHECKPOINT_FILES = {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"}


def uploaded(store: Path, run_id: str) -> dict[str, set[str]]:
    """The files of each ``checkpoints/checkpoint-N`` in the run."""
    cairn.set_tracking_uri(store)
    client = cairn.Client()
    return {
        Path(folder.path).name: {Path(f.path).name for f in client.list_artifacts(run_id, folder.path)}
        for folder in client.list_artifacts(run_id, "checkpoints")
        if folder.is_dir
    }


@pytest.mark.timeout(400)
def test_hf_trainer_ddp_one_run_main_process_uploads_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store, reference_store = tmp_path / "store", tmp_path / "reference-store"
    crashing = torchrun("crash", tmp_path / "crash", store, script=SCRIPT)
    reference = torchrun("reference", tmp_path / "reference", reference_store, script=SCRIPT)
    try:
        run_until_marker(crashing)  # checkpoint-6 committed in the run, every rank at step 8
        kill_group(crashing)
        finish(reference)
        run_id = (tmp_path / "crash" / "run_id.txt").read_text()
        output = finish(torchrun("resume", tmp_path / "resumed", store, run_id=run_id, script=SCRIPT))
    finally:
        for proc in (crashing, reference):
            if proc.poll() is None:
                kill_all(proc)
    assert os.environ["HF_HUB_OFFLINE"] == "1"

    ranks = [json.loads((tmp_path / "resumed" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["step"], r["resumed_from"]) for r in ranks] == [(12, "checkpoint-6")] * 2, output[-3000:]
    assert set(ranks[1]["files"]) >= CHECKPOINT_FILES  # each rank resumed with its own RNG file

    # one run per store, continued by the resumed job
    cairn.set_tracking_uri(store)
    assert [r.info.run_id for r in cairn.search_runs(search_all_experiments=True, output_format="list")] == [run_id]
    assert (tmp_path / "resumed" / "run_id.txt").read_text() == run_id
    cairn.set_tracking_uri(reference_store)
    reference_runs = cairn.search_runs(search_all_experiments=True, output_format="list")
    assert len(reference_runs) == 1
    reference_id = reference_runs[0].info.run_id

    # every checkpoint uploaded once by the main process, complete: the other rank's RNG file is in it
    for path, rid in ((store, run_id), (reference_store, reference_id)):
        checkpoints = uploaded(path, rid)
        assert sorted(checkpoints) == ["checkpoint-12", "checkpoint-3", "checkpoint-6", "checkpoint-9"]
        for name, files in checkpoints.items():
            assert CHECKPOINT_FILES | {"manifest.json"} <= files, (name, sorted(files))

    # each step logged once, the uninterrupted run's curve; the same final weights, bit for bit
    got, want = curve(store, run_id, "loss"), curve(reference_store, reference_id, "loss")
    assert [s for s, _ in want] == list(range(1, 13))
    assert got == want
    resumed = load_file(str(tmp_path / "resumed" / "final.safetensors"))
    wanted = load_file(str(tmp_path / "reference" / "final.safetensors"))
    assert [k for k in wanted if not torch.equal(resumed[k], wanted[k])] == []


@pytest.mark.timeout(200)
def test_hf_trainer_ddp_checkpoint_missing_a_ranks_rng_file_is_reported(tmp_path: Path) -> None:
    """Ranks writing to output_dirs of their own (nodes without a shared filesystem): the main process's
    ``checkpoint-N`` lacks the other rank's RNG file; it is uploaded, and cairn says what is missing."""
    store = tmp_path / "store"
    finish(torchrun("unshared", tmp_path / "out", store, script=SCRIPT))
    report = json.loads((tmp_path / "out" / "rank0.json").read_text())
    told = [w for w in report["warnings"] if "checkpoint-3 lacks" in w]
    assert len(told) == 1 and "rng_state_1.pth" in told[0] and "shared filesystem" in told[0], report["warnings"]
    run_id = (tmp_path / "out" / "run_id.txt").read_text()
    assert "rng_state_1.pth" not in uploaded(store, run_id)["checkpoint-3"]
