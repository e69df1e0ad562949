"""A checkpoint ``ModelCheckpoint(save_on_exception=True)`` writes when training fails reaches the run.

Its path is in no public attribute of ``ModelCheckpoint`` (not ``best_k_models``, ``last_model_path`` nor
``best_model_path``); cairn's ``on_exception`` runs before ``ModelCheckpoint``'s (Lightning runs checkpoint
callbacks last), so the save that follows is matched with the files new in ``dirpath`` since the last look.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="lightning is not installed (pip install 'cairn[lightning]')")

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import cairn
import cairn.lightning
from cairn.autolog import lightning as integration
from cairn.tracking.entities import RunStatus
from tests.autolog.test_lightning import TinyModule, _index, _loaders, _quiet, _remote_checkpoints, _trainer

__all__ = ["_quiet"]  # the autouse fixture of test_lightning


def _keep(tmp_path: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=1, save_on_exception=True)


def test_the_checkpoint_written_on_an_exception_is_uploaded(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    torch.save({"old": 1}, tmp_path / "ckpt" / "from-an-earlier-fit.ckpt")  # in dirpath, but not this fit's
    cairn_logger = cairn.lightning.CairnLogger()
    trainer = _trainer(
        tmp_path,
        logger=cairn_logger,
        max_epochs=1,
        callbacks=[cairn.lightning.CairnCheckpointCallback(log_model=False), _keep(tmp_path)],
    )
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(TinyModule(fail_at=6), *_loaders())
    run_id = cairn_logger.run_id
    assert run_id is not None and cairn.get_run(run_id).info.status is RunStatus.FAILED
    assert (tmp_path / "ckpt" / "epoch=0-step=6.ckpt").is_file()  # written by ModelCheckpoint.on_exception
    assert _remote_checkpoints(run_id) == {"epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt"}
    entries = {Path(e["path"]).name: e for e in _index(run_id)["checkpoints"]}
    assert entries["epoch=0-step=6.ckpt"]["global_step"] == 6 and entries["epoch=0-step=6.ckpt"]["kind"] == "exception"
    assert entries["epoch=0-step=4.ckpt"]["global_step"] == 4  # not re-registered under the exception's step
    downloaded = cairn.lightning.checkpoint_path(run_id, 6)
    assert torch.load(downloaded, weights_only=True)["global_step"] == 6


def test_without_a_cairn_logger_the_exception_checkpoint_is_reported_as_not_uploaded(tmp_path: Path) -> None:
    with cairn.start_run() as run:
        trainer = _trainer(
            tmp_path,
            logger=False,
            max_epochs=1,
            callbacks=[cairn.lightning.CairnCheckpointCallback(log_model=False), _keep(tmp_path)],
        )
        with (
            pytest.warns(UserWarning, match="save_on_exception.*is not uploaded.*attach a CairnLogger"),
            pytest.raises(RuntimeError, match="boom"),
        ):
            trainer.fit(TinyModule(fail_at=6), *_loaders())
    assert (tmp_path / "ckpt" / "epoch=0-step=6.ckpt").is_file()
    assert _remote_checkpoints(run.info.run_id) == {"epoch=0-step=4.ckpt"}
    assert integration.CHECKPOINTS_DIR == "lightning_checkpoints"


def test_the_logger_alone_uploads_the_exception_checkpoint_too(tmp_path: Path) -> None:
    cairn_logger = cairn.lightning.CairnLogger(log_model=True)
    trainer = _trainer(tmp_path, logger=cairn_logger, max_epochs=1, callbacks=[_keep(tmp_path)])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(TinyModule(fail_at=6), *_loaders())
    assert cairn_logger.run_id is not None
    assert _remote_checkpoints(cairn_logger.run_id) == {"epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt"}
