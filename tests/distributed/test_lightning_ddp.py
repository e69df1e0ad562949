"""Lightning's DDP strategy under a real ``torchrun`` (2 ranks, gloo, CPU) with ``CairnLogger`` and
``CairnCheckpointCallback``: one run, metrics and checkpoint uploads from global rank 0 only, and a kill of
every rank mid-epoch resumed with ``trainer.fit(ckpt_path=cairn.lightning.checkpoint_path(run_id, "last"))``
into the same run, ending bit-identical to an uninterrupted job (per-rank dropout: every rank's RNG counts)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cairn
from cairn.errors import ArtifactNotFound
from tests.distributed.test_ddp_resume import curve, finish, kill_all, kill_group, run_until_marker, torchrun

SCRIPT = Path(__file__).parent / "scripts" / "lightning_ddp.py"
FILES = {f"epoch={e}-step={s}.ckpt" for e, s in ((0, 3), (0, 6), (1, 9), (1, 12), (1, 15))} | {"last.ckpt"}


def index(store: Path, run_id: str) -> dict[str, object]:
    cairn.set_tracking_uri(store)
    path = cairn.Client().download_artifacts(run_id, "lightning_checkpoints/index.json")
    return json.loads(Path(path).read_text())  # type: ignore[no-any-return]


def wait_for_upload(store: Path, run_id: str, global_step: int, timeout: float = 60) -> None:
    """Until the step's ``ModelCheckpoint`` file and ``last.ckpt`` are in the run (uploads are in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            entries = index(store, run_id)["checkpoints"]
        except Exception:  # the index is not uploaded yet
            entries = []
        if sum(1 for e in entries if e["global_step"] == global_step) >= 2:  # type: ignore[index,union-attr]
            return
        time.sleep(0.2)
    raise AssertionError(f"the checkpoint of step {global_step} never reached the run")


@pytest.mark.timeout(400)
def test_lightning_ddp_one_run_rank_zero_uploads_and_exact_resume(tmp_path: Path) -> None:
    store, reference_store = tmp_path / "store", tmp_path / "reference-store"
    crashing = torchrun("crash", tmp_path / "crash", store, script=SCRIPT)
    reference = torchrun("reference", tmp_path / "reference", reference_store, script=SCRIPT)
    try:
        run_until_marker(crashing)
        run_id = (tmp_path / "crash" / "run_id.txt").read_text()
        wait_for_upload(store, run_id, 9)
        kill_group(crashing)  # every rank at step 11; the newest checkpoint is step 9, one batch into epoch 1
        finish(reference)
        output = finish(torchrun("resume", tmp_path / "resumed", store, run_id=run_id, script=SCRIPT))
    finally:
        for proc in (crashing, reference):
            if proc.poll() is None:
                kill_all(proc)

    ranks = [json.loads((tmp_path / "resumed" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["step"], r["ckpt"]) for r in ranks] == [(16, "last.ckpt")] * 2, output[-3000:]
    assert not [w for r in ranks for w in r["warnings"]], ranks  # same world size: nothing inexact to report

    # one run per store: ranks other than 0 neither create runs nor log
    cairn.set_tracking_uri(store)
    runs = cairn.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.run_id for r in runs] == [run_id]
    assert (tmp_path / "resumed" / "run_id.txt").read_text() == run_id
    cairn.set_tracking_uri(reference_store)
    reference_runs = cairn.search_runs(search_all_experiments=True, output_format="list")
    assert len(reference_runs) == 1
    reference_id = reference_runs[0].info.run_id

    # the resumed job ends where the uninterrupted one does, bit for bit
    resumed = load_file(str(tmp_path / "resumed" / "final.safetensors"))
    wanted = load_file(str(tmp_path / "reference" / "final.safetensors"))
    assert [k for k in wanted if not torch.equal(resumed[k], wanted[k])] == []

    # each step logged once (rank 0's value), the same curve as the uninterrupted run
    got, want = curve(store, run_id, "loss"), curve(reference_store, reference_id, "loss")
    assert [s for s, _ in want] == list(range(16))
    assert got == want

    # each checkpoint uploaded once, by rank 0 (the index lists one entry per save)
    for path, entries in ((store, run_id), (reference_store, reference_id)):
        listed = index(path, entries)
        files = [e["file"] for e in listed["checkpoints"]]  # type: ignore[index,union-attr]
        assert set(files) == FILES
        assert len([f for f in files if f != "last.ckpt"]) == len(FILES) - 1

    # the 2-rank checkpoint resumed by one process: what cannot be exact is said
    finish(torchrun("resume", tmp_path / "one", store, nproc=1, run_id=run_id, script=SCRIPT))
    told = json.loads((tmp_path / "one" / "rank0.json").read_text())["warnings"]
    assert any("ResumeWarning" in w and "written by 2 ranks and resumes on 1" in w for w in told), told


MODEL_PARALLEL = Path(__file__).parent / "scripts" / "lightning_model_parallel.py"


@pytest.mark.timeout(200)
def test_lightning_model_parallel_distributed_checkpoints_are_reported_not_silently_skipped(tmp_path: Path) -> None:
    """``ModelParallelStrategy`` runs on CPU in Lightning 2.6 and writes each checkpoint as a directory of DCP
    shards; cairn uploads single-file checkpoints only: rank 0 says so once, and the run still gets its metrics."""
    store = tmp_path / "store"
    proc = torchrun("run", tmp_path / "out", store, script=MODEL_PARALLEL)
    finish(proc)
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert (tmp_path / "out" / "ckpt" / "last.ckpt").is_dir()
    told = [w for w in ranks[0]["warnings"] if "distributed checkpoint" in w]
    assert len(told) == 1 and "cannot resume" in told[0], ranks[0]["warnings"]
    assert ranks[1]["warnings"] == [] and ranks[1]["run_id"] is None  # other ranks: no run, nothing to say
    run_id = ranks[0]["run_id"]
    cairn.set_tracking_uri(store)
    assert [r.info.run_id for r in cairn.search_runs(search_all_experiments=True, output_format="list")] == [run_id]
    steps = [s for s, _ in curve(store, run_id, "loss")]
    assert steps == list(range(8))  # the default mesh: tensor-parallel over the 2 ranks, 8 batches each
    with pytest.raises(ArtifactNotFound):  # nothing uploaded, not a partial folder
        cairn.Client().list_artifacts(run_id, "lightning_checkpoints")
