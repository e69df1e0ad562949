"""Lightning and Transformers: a requested resume restores (and says from which checkpoint) or raises/warns;
it never silently restarts inside a run's history, and a damaged newest checkpoint is named.

The plain-PyTorch rules (tests/autolog/test_pytorch_resume_never_lies.py) with the same messages, on real
Lightning fits and real Trainer runs into a real SQLite store.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning", reason="lightning is not installed (pip install 'cairn[lightning]')")
pytest.importorskip("transformers", reason="transformers is not installed (pip install 'cairn[transformers]')")

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

import cairn
import cairn.lightning
import cairn.transformers
from cairn.autolog import lightning as lightning_integration
from cairn.checkpoint.resume import NoCheckpoint, ResumeWarning
from cairn.errors import ArtifactNotFound, CheckpointError
from tests.autolog.test_lightning import TinyModule, _loaders, _trainer
from tests.autolog.test_transformers_autolog import make_trainer, rows, steps, tokenizer  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def _lightning_off() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        yield
    lightning_integration.disable()
    lightning_integration._take_pending()


def _run_with_history(n: int = 6) -> str:
    """A run that logged ``loss`` at steps 1..n and has no checkpoint (none taken, or they were deleted)."""
    with cairn.start_run() as run:
        for step in range(1, n + 1):
            cairn.log_metric("loss", 1.0 / step, step=step)
    return run.info.run_id


def _history(run_id: str, key: str) -> list[int]:
    return [m.step for m in cairn.Client().get_metric_history(run_id, key)]


# -- Lightning ----------------------------------------------------------------------------------------


def test_lightning_resume_of_a_run_without_checkpoints_is_refused(tmp_path: Path) -> None:
    run_id = _run_with_history()
    cairn.lightning.autolog(log_models=False, resume=run_id)
    trainer = _trainer(tmp_path, max_epochs=1, logger=False)
    with pytest.raises(CheckpointError, match=r"no checkpoint to resume from.*if_possible"):
        trainer.fit(TinyModule(), *_loaders())
    assert _history(run_id, "loss") == [1, 2, 3, 4, 5, 6]  # nothing restarted inside it
    assert _history(run_id, "train_loss_step") == []


def test_lightning_resume_if_possible_warns_and_trains_in_a_new_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _run_with_history()
    monkeypatch.setenv("CAIRN_RUN_ID", run_id)
    cairn.lightning.autolog(log_models=False, resume="if_possible")
    trainer = _trainer(tmp_path, max_epochs=1, logger=False)
    with pytest.warns(ResumeWarning, match="training starts from scratch in a new run"):
        trainer.fit(TinyModule(), *_loaders())
    logged = next(lg for lg in trainer.loggers if isinstance(lg, cairn.lightning.CairnLogger)).run_id
    assert logged not in (None, run_id)
    assert _history(str(logged), "train_loss_step") == list(range(8))
    assert _history(run_id, "train_loss_step") == []


def test_lightning_damaged_newest_checkpoint_is_named_with_the_one_used(tmp_path: Path) -> None:
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first = cairn.lightning.CairnLogger()
    trainer = _trainer(
        tmp_path, logger=first, max_epochs=1, callbacks=[cairn.lightning.CairnCheckpointCallback(), keep]
    )
    trainer.fit(TinyModule(), *_loaders())  # checkpoints at global steps 4 and 8
    run_id = str(first.run_id)
    store = cairn.Client().artifact_store(run_id)
    store.put_bytes(b"torn", f"{lightning_integration.CHECKPOINTS_DIR}/epoch=0-step=8.ckpt")
    with pytest.warns(ResumeWarning, match=r"epoch=0-step=8\.ckpt: .*sha256.*resuming from epoch=0-step=4\.ckpt"):
        path = cairn.lightning.checkpoint_path(run_id)
    assert Path(path).name == "epoch=0-step=4.ckpt"
    L.seed_everything(0)
    second = cairn.lightning.CairnLogger()
    again = _trainer(tmp_path, logger=second, max_epochs=1, callbacks=[cairn.lightning.CairnCheckpointCallback()])
    again.fit(TinyModule(), *_loaders(), ckpt_path=path)
    assert second.run_id == run_id  # the damaged newer one does not count: the same run continues
    assert _history(run_id, "train_loss_step") == list(range(8))


def test_lightning_checkpoint_path_keeps_which_with_a_deprecation_warning(tmp_path: Path) -> None:
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first = cairn.lightning.CairnLogger()
    _trainer(tmp_path, logger=first, max_epochs=1, callbacks=[cairn.lightning.CairnCheckpointCallback(), keep]).fit(
        TinyModule(), *_loaders()
    )
    with pytest.warns(DeprecationWarning, match="use step="):
        old = cairn.lightning.checkpoint_path(str(first.run_id), which=4)
    assert Path(old).name == "epoch=0-step=4.ckpt"
    assert Path(cairn.lightning.checkpoint_path(str(first.run_id), step=8)).name == "epoch=0-step=8.ckpt"
    lightning_integration._take_pending()


# -- Transformers -------------------------------------------------------------------------------------


def test_transformers_no_checkpoint_is_a_checkpoint_error(tmp_path: Path, tokenizer: Any, rows: Any) -> None:  # noqa: F811
    run_id = _run_with_history()
    with pytest.raises(CheckpointError, match="no complete checkpoint") as raised:
        cairn.transformers.checkpoint_path(run_id)
    assert isinstance(raised.value, ArtifactNotFound) and isinstance(raised.value, NoCheckpoint)


def test_transformers_damaged_newest_is_named_with_the_one_used(tmp_path: Path, tokenizer: Any, rows: Any) -> None:  # noqa: F811
    callback = cairn.transformers.CairnCallback(log_models=False)
    make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback]).train()
    run_id = str(callback.run_id)
    cairn.Client().artifact_store(run_id).put_bytes(b"torn", "checkpoints/checkpoint-4/model.safetensors")
    with pytest.warns(ResumeWarning, match=r"checkpoint-4: .*resuming from checkpoint-2 \(step 2\)"):
        path = cairn.transformers.checkpoint_path(run_id)
    assert Path(path).name == "checkpoint-2"


def test_hf_fresh_start_goes_to_a_new_run(tmp_path: Path, tokenizer: Any, rows: Any) -> None:  # noqa: F811
    callback = cairn.transformers.CairnCallback(log_models=False, log_checkpoints=False)
    make_trainer(tokenizer, rows, tmp_path / "a", callbacks=[callback], save_strategy="no").train()
    run_id = str(callback.run_id)
    again = cairn.transformers.CairnCallback(log_models=False, log_checkpoints=False)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAIRN_RUN_ID", run_id)  # a restarted script that forgot resume_from_checkpoint
        with pytest.warns(ResumeWarning, match=f"run {run_id} has logged metrics but no checkpoint.*new run"):
            make_trainer(tokenizer, rows, tmp_path / "b", callbacks=[again], save_strategy="no").train()
    assert again.run_id not in (None, run_id)
    assert steps(run_id, "loss") == [1, 2, 3, 4]  # not restarted inside it: no step logged twice
    assert steps(str(again.run_id), "loss") == [1, 2, 3, 4]


def test_hf_which_is_deprecated(tmp_path: Path, tokenizer: Any, rows: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    callback = cairn.transformers.CairnCallback(log_models=False)
    make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback]).train()
    with pytest.warns(DeprecationWarning, match="use step="):
        assert Path(cairn.transformers.checkpoint_path(str(callback.run_id), which=2)).name == "checkpoint-2"
    monkeypatch.setenv("CAIRN_RUN_ID", str(callback.run_id))  # run_id defaults like cairn.pytorch.checkpoint_path
    assert Path(cairn.transformers.checkpoint_path(step=4)).name == "checkpoint-4"


def test_transformers_callback_uses_the_client_given(tmp_path: Path, tokenizer: Any, rows: Any) -> None:  # noqa: F811
    other = cairn.Client(tracking_uri=f"sqlite:///{tmp_path / 'other.db'}", artifact_root=str(tmp_path / "other"))
    callback = cairn.transformers.CairnCallback(log_models=False, client=other)
    make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback]).train()
    run_id = str(callback.run_id)
    assert [m.step for m in other.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
    assert other.get_run(run_id).info.status.value == "FINISHED"
    assert callback.committed_checkpoints == [2, 4]
    assert {f.path for f in other.list_artifacts(run_id, "checkpoints")} == {
        "checkpoints/checkpoint-2",
        "checkpoints/checkpoint-4",
    }
    assert cairn.search_runs(output_format="list") == []  # the fluent (default) store got nothing
    assert cairn.active_run() is None
