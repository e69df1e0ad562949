"""Run-level checkpoints: logging into the run's artifacts, retention there, resume and fork, faults."""

from __future__ import annotations

import errno
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import cairn
from cairn.checkpoint import ResumableLoader, runs, state_tree
from cairn.errors import CheckpointError, CheckpointWriteError, InvalidArgument, StateMismatch
from cairn.tracking import system_tags

from ._helpers import TinyNet, train_steps, weights_equal


def _setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def _remote_names(run_id: str) -> list[str]:
    return sorted(info.path for info in cairn.Client().list_artifacts(run_id, "checkpoints"))


def test_log_checkpoint_uploads_into_the_run_with_the_manifest(tmp_path: Path) -> None:
    model, optimizer, scheduler = _setup()
    with cairn.start_run() as run:
        train_steps(model, optimizer, 2, scheduler)
        logged = runs.log_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, step=2, epoch=0)
        assert logged is not None and logged.artifact_path == "checkpoints/step-2"
        runs.flush_checkpoints()
        names = sorted(i.path for i in cairn.Client().list_artifacts(run.info.run_id, "checkpoints/step-2"))
    assert "checkpoints/step-2/manifest.json" in names and "checkpoints/step-2/model.safetensors" in names
    [info] = runs.list_run_checkpoints(run.info.run_id)
    assert (info.step, info.epoch, info.run_id) == (2, 0, run.info.run_id)
    assert cairn.get_run(run.info.run_id).info.status.value == "FINISHED"


def test_retention_prunes_the_artifact_store_too() -> None:
    model, optimizer, _ = _setup()
    with cairn.start_run() as run:
        for step, val in [(1, 0.9), (2, 0.1), (3, 0.5), (4, 0.7), (5, 0.8)]:
            runs.log_checkpoint(
                model=model, optimizer=optimizer, step=step, metrics={"val_loss": val}, keep_last=2, monitor="val_loss"
            )
        runs.flush_checkpoints()
        rid = run.info.run_id
    assert _remote_names(rid) == ["checkpoints/step-2", "checkpoints/step-4", "checkpoints/step-5"]
    # the staging area keeps only the newest uploaded checkpoint
    assert [p.name for p in sorted(runs.staging_dir(rid).iterdir())] == ["step-5"]


def test_resume_latest_continues_the_same_run_and_supersedes_later_points() -> None:
    model, optimizer, scheduler = _setup()
    with cairn.start_run() as run:
        rid = run.info.run_id
        for step in range(1, 7):
            train_steps(model, optimizer, 1, scheduler)
            cairn.log_metric("loss", 1.0 / step, step=step)
            if step == 4:
                runs.log_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, step=4, epoch=1)
                expected = {k: v.clone() for k, v in model.state_dict().items()}
                expected_lr = scheduler.get_last_lr()
    cairn.end_run()
    fresh, fresh_opt, fresh_sched = _setup(seed=1)
    state = runs.resume(rid, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert (state.step, state.epoch, state.run_id, state.forked_from, state.resumed) == (4, 1, rid, None, True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())
    assert fresh_sched.get_last_lr() == expected_lr
    active = cairn.active_run()
    assert active is not None and active.info.run_id == rid
    client = cairn.Client()
    assert [m.step for m in client.get_metric_history(rid, "loss")] == [1, 2, 3, 4]
    cairn.log_metric("loss", 0.01, step=5)
    cairn.end_run()
    history = client.get_metric_history(rid, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5] and history[-1].value == 0.01
    assert len(cairn.search_runs(output_format="list")) == 1


def test_resume_an_older_checkpoint_forks_and_leaves_the_source_alone() -> None:
    model, optimizer, _ = _setup()
    with cairn.start_run() as run:
        rid = run.info.run_id
        for step in (2, 4, 6):
            train_steps(model, optimizer, 2)
            cairn.log_metric("loss", float(step), step=step)
            runs.log_checkpoint(model=model, optimizer=optimizer, step=step)
    fresh, fresh_opt, _ = _setup(seed=3)
    state = runs.resume(rid, step=4, model=fresh, optimizer=fresh_opt)
    assert state.forked_from == rid and state.run_id != rid and state.step == 4
    fork = cairn.get_run(state.run_id)
    assert fork.data.tags[system_tags.FORKED_FROM] == rid and fork.data.tags[system_tags.FORKED_AT_STEP] == "4"
    client = cairn.Client()
    assert [m.step for m in client.get_metric_history(state.run_id, "loss")] == [2, 4]
    assert [m.step for m in client.get_metric_history(rid, "loss")] == [2, 4, 6]  # nothing overwritten
    assert _remote_names(rid) == ["checkpoints/step-2", "checkpoints/step-4", "checkpoints/step-6"]
    assert _remote_names(state.run_id) == ["checkpoints/step-4"]  # the fork can itself be resumed
    active = cairn.active_run()
    assert active is not None and active.info.run_id == state.run_id
    cairn.end_run()
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 3 .*available steps: 2, 4, 6"):
        runs.resume(rid, step=3, model=fresh)


def test_damaged_or_partial_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path) -> None:
    model, optimizer, _ = _setup()
    with cairn.start_run() as run:
        rid = run.info.run_id
        runs.log_checkpoint(model=model, optimizer=optimizer, step=1)
        runs.flush_checkpoints()
        good = {k: v.clone() for k, v in model.state_dict().items()}
        train_steps(model, optimizer, 2)
        runs.log_checkpoint(model=model, optimizer=optimizer, step=3)
    store = cairn.Client().artifact_store(rid)
    # step-3 truncated by a kill during upload; step-9 an upload that never got its manifest
    with store.open("checkpoints/step-3/model.safetensors") as handle:
        data = handle.read()
    store.put_bytes(data[: len(data) // 2], "checkpoints/step-3/model.safetensors")
    store.put_bytes(b"{}", "checkpoints/step-9/model.json")
    for leftover in runs.staging_dir(rid).iterdir():  # force a download (no same-machine shortcut)
        shutil.rmtree(leftover)
    fresh, fresh_opt, _ = _setup(seed=5)
    state = runs.resume(rid, model=fresh, optimizer=fresh_opt)
    assert state.step == 1 and all(torch.equal(fresh.state_dict()[k], v) for k, v in good.items())
    cairn.end_run()


def test_resume_into_a_model_of_other_shapes_lists_the_keys_and_changes_nothing() -> None:
    model, _, _ = _setup()
    with cairn.start_run() as run:
        rid = run.info.run_id
        runs.log_checkpoint(model=model, step=3)
        cairn.log_metric("loss", 1.0, step=5)
    other = TinyNet(width=16)
    with pytest.raises(StateMismatch) as info:
        runs.resume(rid, model=other)
    assert "fc1.weight: saved (8, 4), model (16, 4)" in str(info.value) and "bn.running_mean" in str(info.value)
    assert cairn.active_run() is None
    assert [m.step for m in cairn.Client().get_metric_history(rid, "loss")] == [5]  # not superseded


def test_resume_without_checkpoint_is_a_fresh_start_in_that_run(monkeypatch: pytest.MonkeyPatch) -> None:
    run = cairn.start_run()
    cairn.end_run()
    monkeypatch.setenv("CAIRN_RUN_ID", run.info.run_id)
    model, optimizer, _ = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = runs.resume(model=model, optimizer=optimizer)
    assert (state.resumed, state.step, state.epoch, state.run_id) == (False, 0, 0, run.info.run_id)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    active = cairn.active_run()
    assert active is not None and active.info.run_id == run.info.run_id
    cairn.end_run()
    monkeypatch.delenv("CAIRN_RUN_ID")
    with pytest.raises(InvalidArgument, match="no run to resume"):
        runs.resume(model=model)


def test_resume_of_a_run_with_history_and_no_checkpoint_is_refused_not_restarted_inside_it() -> None:
    with cairn.start_run() as run:
        for step in range(1, 4):
            cairn.log_metric("loss", float(step), step=step)
    model, optimizer, _ = _setup()
    with pytest.raises(CheckpointError, match=r"has logged metrics but no checkpoint.*if_possible"):
        runs.resume(run.info.run_id, model=model, optimizer=optimizer)
    assert cairn.active_run() is None
    with pytest.warns(runs.ResumeWarning, match="training starts from scratch in a new run"):
        state = runs.resume(run.info.run_id, model=model, optimizer=optimizer, if_possible=True)
    assert not state.resumed and state.run_id != run.info.run_id
    active = cairn.active_run()
    assert active is not None and active.info.run_id == state.run_id
    cairn.end_run()
    assert [m.step for m in cairn.Client().get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]


def test_checkpoint_path_materialises_locally() -> None:
    model, _, _ = _setup()
    with cairn.start_run() as run:
        runs.log_checkpoint(model=model, step=7)
    path = runs.checkpoint_path(run.info.run_id)
    assert path.name == "step-7" and (path / "manifest.json").is_file()
    loaded = state_tree.load_state_tree(path, name="model")
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        runs.checkpoint_path(cairn.start_run().info.run_id)
    cairn.end_run()


def test_mid_epoch_resume_with_resumable_loader_sees_the_remaining_batches() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(20.0).unsqueeze(1))
    torch.manual_seed(0)
    loader = ResumableLoader(torch.utils.data.DataLoader(data, batch_size=2, shuffle=True))
    seen: list[float] = []
    with cairn.start_run() as run:
        for i, (batch,) in enumerate(loader):
            seen += batch.flatten().tolist()
            if i == 3:
                runs.log_checkpoint(step=4, epoch=0, loader=loader)
    torch.manual_seed(123)  # a restarted process has some other RNG state
    fresh = ResumableLoader(torch.utils.data.DataLoader(data, batch_size=2, shuffle=True))
    state = runs.resume(run.info.run_id, loader=fresh)
    assert state.batch_in_epoch == 4
    rest = [v for (batch,) in fresh for v in batch.flatten().tolist()]
    assert rest == seen[8:]
    cairn.end_run()


def test_background_write_failure_surfaces_at_next_call_and_run_end(monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, _ = _setup()
    original = state_tree._write_tensors

    def disk_full(tensors: Any, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    run = cairn.start_run()
    rid = run.info.run_id
    monkeypatch.setattr(state_tree, "_write_tensors", disk_full)
    runs.log_checkpoint(model=model, optimizer=optimizer, step=1)
    while runs._checkpointers[rid].writer.pending:  # let the background write fail
        time.sleep(0.01)
    monkeypatch.setattr(state_tree, "_write_tensors", original)  # space freed
    with pytest.raises(CheckpointWriteError, match=r"No space left on device.*step 2 was queued nonetheless"):
        runs.log_checkpoint(model=model, optimizer=optimizer, step=2)
    runs.flush_checkpoints(rid)
    assert _remote_names(rid) == ["checkpoints/step-2"]
    # a failure at the very end: the run still ends, the error is raised by end_run
    monkeypatch.setattr(state_tree, "_write_tensors", disk_full)
    runs.log_checkpoint(model=model, optimizer=optimizer, step=3)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        cairn.end_run()
    assert cairn.active_run() is None
    assert cairn.get_run(rid).info.status.value == "FINISHED"


def test_background_write_failure_surfaces_at_next_log_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, _ = _setup()
    original = state_tree._write_tensors

    def disk_full(tensors: Any, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    run = cairn.start_run()
    rid = run.info.run_id
    monkeypatch.setattr(state_tree, "_write_tensors", disk_full)
    runs.log_checkpoint(model=model, optimizer=optimizer, step=1)
    while runs._checkpointers[rid].writer.pending:
        time.sleep(0.01)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        cairn.log_metric("loss", 0.5, step=1)
    cairn.log_metric("loss", 0.25, step=2)  # raised once, not on every call
    monkeypatch.setattr(state_tree, "_write_tensors", original)  # space freed before the run ends
    with pytest.warns(RuntimeWarning, match="second attempt"):
        cairn.end_run()
    assert [m.value for m in cairn.Client().get_metric_history(rid, "loss")] == [0.5, 0.25]
    assert _remote_names(rid) == ["checkpoints/step-1"]


def test_failed_write_is_retried_at_run_end(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _, _ = _setup()
    original = state_tree._write_tensors
    calls = {"n": 0}

    def flaky(tensors: Any, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(tensors, path)

    monkeypatch.setattr(state_tree, "_write_tensors", flaky)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cairn.start_run() as run:
            runs.log_checkpoint(model=model, step=1)
    assert any("second attempt" in str(w.message) for w in caught)
    assert _remote_names(run.info.run_id) == ["checkpoints/step-1"]


def test_meta_model_and_tied_weights() -> None:
    with torch.device("meta"):
        meta = nn.Linear(3, 3)
    with cairn.start_run(), pytest.raises(InvalidArgument, match="'meta' device"):
        runs.log_checkpoint(model=meta, step=1)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            self.out = nn.Linear(4, 5, bias=False)
            self.out.weight = self.emb.weight

    torch.manual_seed(0)
    tied = Tied()
    with cairn.start_run() as run:
        runs.log_checkpoint(model=tied, step=1)
    other = Tied()
    runs.resume(run.info.run_id, model=other)
    assert weights_equal(tied, other) and other.out.weight is other.emb.weight
    cairn.end_run()


def test_s3_artifact_store_round_trip(
    s3_server: Any, aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CAIRN_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("CAIRN_ARTIFACT_ROOT", f"s3://{s3_server.bucket}/ckpt-{tmp_path.name}")
    model, optimizer, scheduler = _setup()
    with cairn.start_run() as run:
        for step in (1, 2, 3):
            train_steps(model, optimizer, 1, scheduler)
            runs.log_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, step=step, keep_last=2)
    assert [i.step for i in runs.list_run_checkpoints(run.info.run_id)] == [2, 3]
    manifest = json.loads(
        cairn.Client().artifact_store(run.info.run_id).open("checkpoints/step-3/manifest.json").read()
    )
    assert manifest["step"] == 3
    shutil.rmtree(runs.staging_dir(run.info.run_id))
    fresh, fresh_opt, fresh_sched = _setup(seed=9)
    state = runs.resume(run.info.run_id, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert state.step == 3 and weights_equal(model, fresh)
    cairn.end_run()


# -- client=: another store than the fluent API's ----------------------------------------------------


def _fluent_store_is_empty(tmp_path: Path) -> bool:
    """Nothing was written into the fluent default store (./cairn-runs): no run, no artifact file."""
    artifacts = tmp_path / "cairn-runs" / "artifacts"
    files = [p for p in artifacts.rglob("*") if p.is_file()] if artifacts.exists() else []
    return not cairn.search_runs(output_format="list", search_all_experiments=True) and not files


def test_checkpoints_with_client_land_in_that_store_and_resume_continues_there(tmp_path: Path) -> None:
    other = cairn.Client(f"sqlite:///{tmp_path / 'other' / 'cairn.db'}")
    rid = other.create_run("0").info.run_id
    model, optimizer, scheduler = _setup()
    for step in range(1, 7):
        train_steps(model, optimizer, 1, scheduler)
        other.log_metric(rid, "loss", 1.0 / step, step=step)
        if step in (2, 4):
            runs.log_checkpoint(
                model=model, optimizer=optimizer, scheduler=scheduler, step=step, epoch=0, run_id=rid, client=other
            )
        if step == 4:
            expected = {k: v.clone() for k, v in model.state_dict().items()}
    runs.flush_checkpoints(rid, client=other)
    assert sorted(i.path for i in other.list_artifacts(rid, "checkpoints")) == [
        "checkpoints/step-2",
        "checkpoints/step-4",
    ]
    assert [i.step for i in runs.list_run_checkpoints(rid, client=other)] == [2, 4]
    assert runs.staging_dir(rid, client=other).is_relative_to(tmp_path / "other")
    assert (runs.checkpoint_path(rid, step=2, client=other) / "manifest.json").is_file()

    fresh, fresh_opt, fresh_sched = _setup(seed=1)
    state = runs.resume(rid, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, client=other)
    assert (state.step, state.run_id, state.forked_from, state.resumed) == (4, rid, None, True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())
    assert cairn.active_run() is None  # the client's run is not the fluent API's
    assert [m.step for m in other.get_metric_history(rid, "loss")] == [1, 2, 3, 4]  # 5, 6 superseded
    train_steps(fresh, fresh_opt, 1, fresh_sched)
    runs.log_checkpoint(model=fresh, optimizer=fresh_opt, step=5, run_id=rid, client=other, synchronous=True)
    assert [i.step for i in runs.list_run_checkpoints(rid, client=other)] == [2, 4, 5]

    forked = runs.resume(rid, step=2, model=_setup()[0], client=other)
    assert forked.forked_from == rid and cairn.active_run() is None
    assert [i.path for i in other.list_artifacts(forked.run_id, "checkpoints")] == ["checkpoints/step-2"]
    other.set_terminated(rid)
    assert _fluent_store_is_empty(tmp_path)


def test_log_checkpoint_with_client_needs_the_run_id(tmp_path: Path) -> None:
    other = cairn.Client(f"sqlite:///{tmp_path / 'other' / 'cairn.db'}")
    with pytest.raises(InvalidArgument, match="run_id"):
        runs.log_checkpoint(model=TinyNet(), step=1, client=other)
    assert _fluent_store_is_empty(tmp_path)
