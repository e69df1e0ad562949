"""The checkpoint core: RunCheckpoints (layout, commit marker last, prune mirrored remotely, verified copies,
one background uploader whose errors surface), the resume planner and the run-resolution rules.

Real files, a real artifact store and real tracking stores (SQLite, and PostgreSQL for what goes through
the store: supersede and fork).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest

import cairn
from cairn.checkpoint.formats import NATIVE, TRANSFORMERS
from cairn.checkpoint.manifest import MANIFEST_NAME, write_manifest
from cairn.checkpoint.resume import (
    NoCheckpoint,
    ResumeWarning,
    continue_run,
    fork_run,
    nothing_to_resume,
    plan_resume,
    resolve_run_id,
)
from cairn.checkpoint.retention import RetentionPolicy
from cairn.checkpoint.run_checkpoints import RunCheckpoints
from cairn.errors import CheckpointCorrupt, CheckpointWriteError
from cairn.tracking.entities import Metric


def _local_checkpoint(root: Path, step: int, *, loss: float | None = None) -> Path:
    """A committed checkpoint directory ``root/step-<step>`` with a nested file."""
    directory = root / f"step-{step}"
    (directory / "nested").mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(bytes([step % 256]) * 64)
    (directory / "nested" / "state.json").write_text(f'{{"step": {step}}}')
    write_manifest(directory, step=step, metrics={"loss": loss} if loss is not None else None, fsync=False)
    return directory


def _uploaded(client: cairn.Client, run_id: str, tmp_path: Path, steps: list[int]) -> RunCheckpoints:
    run = RunCheckpoints(client, run_id, NATIVE)
    for step in steps:
        run.upload_dir(_local_checkpoint(tmp_path / "local", step, loss=float(10 - step)), f"step-{step}")
    return run


@pytest.fixture
def client() -> cairn.Client:
    return cairn.Client()


@pytest.fixture
def run_id(client: cairn.Client) -> str:
    return client.create_run("0").info.run_id


# -- layout, commit marker, listing -------------------------------------------------------------------


def test_upload_lands_under_checkpoints_and_lists_only_committed_ones(
    client: cairn.Client, run_id: str, tmp_path: Path
) -> None:
    run = _uploaded(client, run_id, tmp_path, [2, 4])
    store = client.artifact_store(run_id)
    assert store.exists("checkpoints/step-4/nested/state.json")
    # an upload cut before its manifest: listed as incomplete, never as a checkpoint
    store.put_bytes(b"partial", "checkpoints/step-6/model.safetensors")
    assert [(e.name, e.complete) for e in run.scan()] == [("step-2", True), ("step-4", True), ("step-6", False)]
    assert [e.step for e in run.list()] == [2, 4]
    assert run.list()[1].metrics == {"loss": 6.0}
    assert RunCheckpoints(client, run_id, TRANSFORMERS).list() == []  # another format's names do not count


def test_the_manifest_is_uploaded_last_and_deleted_first(client: cairn.Client, run_id: str, tmp_path: Path) -> None:
    run = RunCheckpoints(client, run_id, NATIVE)
    store = run.store
    seen: list[str] = []
    original_put_file, original_put_bytes, original_delete = store.put_file, store.put_bytes, store.delete

    def put_file(path: str | Path, artifact_path: str | None = None) -> None:
        seen.append(f"put {Path(path).name}")
        original_put_file(path, artifact_path)

    def put_bytes(data: bytes, artifact_file: str) -> None:
        seen.append(f"put {artifact_file.rsplit('/', 1)[-1]}")
        original_put_bytes(data, artifact_file)

    def delete(path: str | None = None) -> None:
        seen.append(f"delete {str(path).rsplit('/', 1)[-1]}")
        original_delete(path)

    store.put_file, store.put_bytes, store.delete = put_file, put_bytes, delete  # type: ignore[method-assign]
    local = _local_checkpoint(tmp_path, 3)
    run.upload_dir(local, "step-3")
    assert seen[-1] == f"put {MANIFEST_NAME}" and len(seen) == 3
    seen.clear()
    run.delete("step-3")
    assert seen == [f"delete {MANIFEST_NAME}", "delete step-3"]
    assert run.scan() == []


def test_prune_applies_the_policy_remotely_and_removes_interrupted_uploads(
    client: cairn.Client, run_id: str, tmp_path: Path
) -> None:
    run = _uploaded(client, run_id, tmp_path, [1, 2, 3, 4, 5])
    run.store.put_bytes(b"partial", "checkpoints/step-9/model.safetensors")
    # keep the newest 2 plus the best by loss (loss = 10 - step; "max" makes step-1 the best)
    deleted = run.prune(RetentionPolicy(keep_last=2, keep_best=1, monitor="loss", mode="max"))
    assert sorted(deleted) == ["step-2", "step-3", "step-9"]
    assert [e.name for e in run.scan()] == ["step-1", "step-4", "step-5"]
    # protected names and checkpoints after up_to_step are left alone
    run = _uploaded(client, run_id, tmp_path / "again", [6, 7])
    kept = {"step-4"}
    assert run.prune(RetentionPolicy(keep_last=1, keep_best=0), protect=kept, up_to_step=6) == ["step-1", "step-5"]
    assert [e.name for e in run.list()] == ["step-4", "step-6", "step-7"]


def test_materialize_verifies_and_reuses_a_matching_local_copy(
    client: cairn.Client, run_id: str, tmp_path: Path
) -> None:
    run = _uploaded(client, run_id, tmp_path, [2])
    entry = run.list()[0]
    local = run.materialize(entry, tmp_path / "staging")
    assert local == tmp_path / "staging" / "step-2" and (local / "nested" / "state.json").is_file()
    marker = local / "model.safetensors"
    inode = marker.stat().st_ino
    assert run.materialize(entry, tmp_path / "staging").joinpath("model.safetensors").stat().st_ino == inode
    marker.write_bytes(b"x" * 64)  # a damaged local copy is replaced by a fresh, verified download
    assert run.materialize(entry, tmp_path / "staging").joinpath("model.safetensors").read_bytes() == b"\x02" * 64
    run.store.put_bytes(b"y" * 64, "checkpoints/step-2/model.safetensors")  # damaged in the store
    with pytest.raises(CheckpointCorrupt, match=r"model\.safetensors"):
        run.materialize(entry, tmp_path / "elsewhere")
    assert not any((tmp_path / "elsewhere").iterdir())  # no half-downloaded leftovers


# -- the background uploader ----------------------------------------------------------------------------


def test_background_jobs_run_in_order_and_their_errors_surface_once(client: cairn.Client, run_id: str) -> None:
    run = RunCheckpoints(client, run_id, NATIVE)
    done: list[int] = []
    cleaned: list[int] = []
    gate = threading.Event()

    def fail() -> None:
        raise OSError("No space left on device")

    run.submit("first", lambda: (gate.wait(10), done.append(1)), cleanup=lambda: cleaned.append(1))
    run.submit("upload of step-2", fail, cleanup=lambda: cleaned.append(2))
    run.submit("third", lambda: done.append(3))
    assert run.drain(timeout=0.05) is False and run.pending == 3  # a timed drain returns instead of hanging
    gate.set()
    assert run.drain(timeout=10) is True
    assert done == [1, 3] and cleaned == [1, 2]  # a failure does not stop later jobs; cleanup always runs
    error = run.take_error()
    assert isinstance(error, CheckpointWriteError)
    assert "upload of step-2: OSError: No space left on device" in str(error)
    assert run.take_error() is None  # handed out once
    assert run.close(timeout=10)


# -- the planner ------------------------------------------------------------------------------------


def test_plan_latest_continues_and_an_older_step_forks(client: cairn.Client, run_id: str, tmp_path: Path) -> None:
    _uploaded(client, run_id, tmp_path, [2, 4, 6])
    assert plan_resume(client, client.create_run("0").info.run_id, fmt=NATIVE, destination=tmp_path / "x") is None
    latest = plan_resume(client, run_id, fmt=NATIVE, destination=tmp_path / "staging")
    assert latest is not None and (latest.step, latest.fork, latest.path.name) == (6, False, "step-6")
    older = plan_resume(client, run_id, fmt=NATIVE, destination=tmp_path / "staging", which=4)
    assert older is not None and (older.step, older.newest_step, older.fork) == (4, 6, True)
    with pytest.raises(NoCheckpoint, match=r"no checkpoint at step 5 .*available steps: 2, 4, 6"):
        plan_resume(client, run_id, fmt=NATIVE, destination=tmp_path / "staging", which=5)


def test_plan_skips_a_damaged_newest_checkpoint_naming_it_and_the_one_used(
    client: cairn.Client, run_id: str, tmp_path: Path
) -> None:
    run = _uploaded(client, run_id, tmp_path, [2, 4])
    run.store.put_bytes(b"z" * 64, "checkpoints/step-4/model.safetensors")
    with pytest.warns(ResumeWarning, match=r"step-4: .*resuming from step-2 \(step 2\) instead"):
        plan = plan_resume(client, run_id, fmt=NATIVE, destination=tmp_path / "staging")
    assert plan is not None and plan.step == 2
    assert not plan.fork  # the damaged newer one does not count: the same run continues
    with pytest.raises(CheckpointCorrupt):  # asked for by step, a damaged checkpoint is an error
        plan_resume(client, run_id, fmt=NATIVE, destination=tmp_path / "staging", which=4)
    run.store.put_bytes(b"z" * 64, "checkpoints/step-2/model.safetensors")
    again = plan_resume(client, run_id, fmt=NATIVE, destination=tmp_path / "staging", which=2)
    assert again is not None and again.path == plan.path  # the verified local copy with the same manifest
    with pytest.raises(CheckpointCorrupt, match="no valid cairn checkpoint"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ResumeWarning)
        plan_resume(client, run_id, fmt=NATIVE, destination=tmp_path / "fresh")


# -- run resolution and what a resume does to the run ----------------------------------------------------


def test_resolve_run_id_prefers_explicit_then_cairn_run_id_then_the_active_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_run_id() is None
    with cairn.start_run() as active:
        assert resolve_run_id() == active.info.run_id
        assert resolve_run_id(use_active=False) is None
        monkeypatch.setenv("CAIRN_RUN_ID", "from-env")
        assert resolve_run_id() == "from-env"
        assert resolve_run_id("explicit") == "explicit"


def test_nothing_to_resume_never_restarts_inside_a_run_with_history(client: cairn.Client) -> None:
    empty = client.create_run("0").info.run_id
    assert nothing_to_resume(client, empty, if_possible=False) == empty  # a launcher's run: start in it
    used = client.create_run("0").info.run_id
    client.log_batch(used, metrics=[Metric("loss", 1.0, 0, 1)])
    with pytest.raises(NoCheckpoint, match=r"has logged metrics but no checkpoint.*resume='if_possible'"):
        nothing_to_resume(client, used, if_possible=False)
    with pytest.warns(ResumeWarning, match="training starts from scratch in a new run"):
        fresh = nothing_to_resume(client, used, if_possible=True)
    assert fresh not in (None, used, empty)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_continue_supersedes_after_the_step_and_fork_copies_history(db_url: str, tmp_path: Path) -> None:
    client = cairn.Client(tracking_uri=db_url, artifact_root=str(tmp_path / "artifacts"))
    experiment = client.create_experiment("resume-core")
    run_id = client.create_run(experiment).info.run_id
    client.log_batch(run_id, metrics=[Metric("loss", float(s), 0, s) for s in range(1, 9)], synchronous=True)
    forked = fork_run(client, run_id, 3)
    assert [m.step for m in client.get_metric_history(forked, "loss")] == [1, 2, 3]
    assert continue_run(client, run_id, 5) == 3
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4, 5]
