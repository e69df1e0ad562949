"""Elastic restarts under a real ``torchrun --max-restarts=1`` (2 ranks, gloo, CPU): one rank dies mid-epoch,
torchelastic restarts both workers, and ``autolog(resume=True)`` alone resumes them from the newest checkpoint
every rank took, into the same run: final weights bit-identical to an uninterrupted run, each step once.

``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: torch 2.13's elastic agent shares one TCP store across restarts
and its gloo workers then read the dead attempt's addresses (the restarted ``init_process_group`` fails
with ``Connection refused``, cairn or not); the README says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cairn
from cairn.tracking.entities import RunStatus

from .test_ddp_resume import curve, finish, kill_all

SCRIPT = Path(__file__).parent / "scripts" / "elastic_train.py"
STEPS = list(range(1, 25))


def elastic_torchrun(role: str, out: Path, store: Path, **env: str) -> subprocess.Popen[str]:
    environ = {**os.environ, "CAIRN_TRACKING_URI": str(store), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    environ.pop("CAIRN_RUN_ID", None)
    environ.update(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", **env)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.Popen(
        [*command, "--max-restarts=1", "--monitor-interval=0.2", str(SCRIPT), role, str(out)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_to_the_end(role: str, out: Path, store: Path, **env: str) -> str:
    proc = elastic_torchrun(role, out, store, **env)
    try:
        return finish(proc, timeout=200)
    finally:
        if proc.poll() is None:
            kill_all(proc)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted run of the same job: (its output folder, its store)."""
    root = tmp_path_factory.mktemp("elastic-reference")
    run_to_the_end("reference", root / "out", root / "store")
    return root / "out", root / "store"


def check_resumed_exactly(out: Path, store: Path, run_id: str, reference: tuple[Path, Path], output: str) -> None:
    assert (out / "died").read_text() == "0", output[-4000:]  # the first attempt lost a rank
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["attempt"], r["resumed"], r["step"], r["epoch"]) for r in ranks] == [(1, True, 12, 1)] * 2, output[
        -4000:
    ]
    assert not [w for r in ranks for w in r["warnings"] if "Resume" in w], ranks  # every rank's own state
    resumed, wanted = load_file(str(out / "final.safetensors")), load_file(str(reference[0] / "final.safetensors"))
    assert [k for k in wanted if not torch.equal(resumed[k], wanted[k])] == []
    assert (out / "run_id.txt").read_text() == run_id
    reference_id = (reference[0] / "run_id.txt").read_text()
    got, want = curve(store, run_id, "loss"), curve(reference[1], reference_id, "loss")
    assert [s for s, _ in got] == STEPS and got == want  # each step once, the uninterrupted run's values
    everything = [s for s, _ in curve(store, run_id, "loss", include_superseded=True)]
    assert sorted(set(everything)) == STEPS and len(everything) >= len(STEPS)  # any dead attempt's: superseded
    cairn.set_tracking_uri(store)
    assert cairn.Client().get_run(run_id).info.status == RunStatus.FINISHED


@pytest.mark.timeout(300)
def test_rank0_sigkilled_restart_resumes_the_cairn_run_id_run(tmp_path: Path, reference: tuple[Path, Path]) -> None:
    """``CAIRN_RUN_ID`` set (as ``cairn run -- torchrun ...`` does); rank 0 is SIGKILLed holding the run's
    resume lease, which the restarted attempt of the same job takes over at once."""
    store = tmp_path / "store"
    cairn.set_tracking_uri(store)
    run_id = cairn.Client().create_run("0").info.run_id
    output = run_to_the_end("elastic", tmp_path / "out", store, CAIRN_RUN_ID=run_id, VICTIM="0", VICTIM_SIGNAL="1")
    assert "exitcode: -9" in output  # rank 0 died of its SIGKILL
    check_resumed_exactly(tmp_path / "out", store, run_id, reference, output)


@pytest.mark.timeout(300)
def test_rank1_exits_restart_finds_the_run_without_cairn_run_id(tmp_path: Path, reference: tuple[Path, Path]) -> None:
    """No ``CAIRN_RUN_ID``: rank 0 of the first attempt created the run (tagged with the torchelastic job id);
    rank 1 exits, rank 0 fails in its next collective and writes no run-end checkpoint of its own (it would
    lack rank 1's state); the restarted workers find the run by the tag."""
    store = tmp_path / "store"
    output = run_to_the_end("elastic", tmp_path / "out", store)
    assert "no checkpoint at the end of run" in output and "newest checkpoint, step 12" in output
    run_id = (tmp_path / "out" / "run_id.txt").read_text()
    check_resumed_exactly(tmp_path / "out", store, run_id, reference, output)
    cairn.set_tracking_uri(store)
    assert len(cairn.search_runs(output_format="list", search_all_experiments=True)) == 1  # no second run


def test_a_lease_of_an_earlier_attempt_of_the_same_elastic_job_is_taken_over_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On another node the restarted rank 0 cannot see that the holder died: the owner's job and attempt say it."""
    from cairn.checkpoint.lease import acquire_resume_lease
    from cairn.errors import RunLeased

    cairn.set_tracking_uri(tmp_path / "store")
    client = cairn.Client()
    run_id = client.create_run("0").info.run_id
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = acquire_resume_lease(client, run_id)  # held by a live process (this one): not dead by its pid
    assert first.owner.endswith("@job-a#0")
    with pytest.raises(RunLeased, match="being resumed by another process"):
        acquire_resume_lease(client, run_id)  # the same attempt: a live holder
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.raises(RunLeased):
        acquire_resume_lease(client, run_id)  # another job's restart: not its lease to take
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    second = acquire_resume_lease(client, run_id)  # the next attempt of job-a: taken over without waiting
    assert client.store.get_run_lease(run_id).owner == second.owner
    second.release()
    first.release()
