"""Lightning integration on Lightning's published hooks: nothing of ``ModelCheckpoint`` or the DataLoader is
replaced, the callback alone uploads, an injected ``client=`` is used instead of the fluent API's, and a
mid-epoch resume is bit-identical to the uninterrupted fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning", reason="lightning is not installed (pip install 'cairn[lightning]')")

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

import cairn
import cairn.lightning
from cairn.autolog import lightning as integration
from cairn.tracking.entities import RunStatus
from tests.autolog.test_lightning import TinyModule, _index, _loaders, _quiet, _remote_checkpoints, _trainer

__all__ = ["_quiet"]  # the autouse fixture of test_lightning: quiet Lightning, autolog disabled after each test

PRIVATE_HOOKS = ("_save_checkpoint", "_link_checkpoint", "_remove_checkpoint")


class Inspector(Callback):
    """Records, at every training batch, what the other callbacks did to Lightning's and torch's objects."""

    def __init__(self) -> None:
        self.replaced: set[str] = set()
        self.loader_types: set[type] = set()
        self.strategy_overrides: set[str] = set()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        for checkpoint_callback in trainer.checkpoint_callbacks:
            self.replaced |= set(PRIVATE_HOOKS) & set(vars(checkpoint_callback))
        loaders = trainer.train_dataloader
        for loader in loaders if isinstance(loaders, list) else [loaders]:
            self.loader_types.add(type(loader))
        self.strategy_overrides |= {"process_dataloader"} & set(vars(trainer.strategy))


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def test_nothing_of_model_checkpoint_or_the_dataloader_is_replaced(tmp_path: Path) -> None:
    inspector = Inspector()
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=2, monitor="step", mode="max")
    trainer = _trainer(
        tmp_path,
        logger=cairn.lightning.CairnLogger(),
        callbacks=[inspector, cairn.lightning.CairnCheckpointCallback(log_model=False), keep],
    )
    trainer.fit(TinyModule(), *_loaders())
    assert inspector.replaced == set()
    assert inspector.loader_types == {DataLoader}
    assert inspector.strategy_overrides == set()


def test_autolog_replaces_nothing_either(tmp_path: Path) -> None:
    cairn.lightning.autolog(checkpoint_every_n_steps=3, keep_last=2, log_models=False)
    inspector = Inspector()
    trainer = _trainer(tmp_path, callbacks=[inspector])
    trainer.fit(TinyModule(), *_loaders())
    assert inspector.replaced == set() and inspector.loader_types == {DataLoader}
    assert inspector.strategy_overrides == set()
    (run_id,) = {lg.run_id for lg in trainer.loggers if isinstance(lg, cairn.lightning.CairnLogger)}
    assert _remote_checkpoints(run_id) == {"epoch=1-step=12.ckpt", "epoch=1-step=15.ckpt", "last.ckpt"}


def test_the_callback_alone_uploads_and_deletes_pruned_checkpoints(tmp_path: Path) -> None:
    keep = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=2, monitor="step", mode="max", save_last=True
    )
    extra = ModelCheckpoint(dirpath=tmp_path / "every5", every_n_train_steps=5, save_top_k=1)
    with cairn.start_run() as run:
        trainer = _trainer(
            tmp_path, logger=False, callbacks=[cairn.lightning.CairnCheckpointCallback(log_model=False), keep, extra]
        )
        trainer.fit(TinyModule(), *_loaders())
    run_id = run.info.run_id
    local = {p.name for p in (tmp_path / "ckpt").glob("*.ckpt")}
    assert local == {"epoch=1-step=12.ckpt", "epoch=1-step=15.ckpt", "last.ckpt"}
    assert _remote_checkpoints(run_id) == local  # 3, 6 and 9 were pruned here and in the run
    entries = {e["path"]: e for e in _index(run_id)["checkpoints"]}
    first = f"{integration.CHECKPOINTS_DIR}/epoch=1-step=15.ckpt"
    assert entries[first]["global_step"] == 15 and entries[first]["log_step"] == 14 and entries[first]["epoch"] == 1
    assert entries[f"{integration.CHECKPOINTS_DIR}/last.ckpt"]["kind"] == "last"
    assert entries[f"{integration.CHECKPOINTS_DIR}/last.ckpt"]["global_step"] == 15
    # the second ModelCheckpoint's files go to lightning_checkpoints/1/, its pruned step-5 file deleted there too
    assert {p for p in entries if p.startswith(f"{integration.CHECKPOINTS_DIR}/1/")} == {
        f"{integration.CHECKPOINTS_DIR}/1/epoch=1-step=15.ckpt"
    }
    assert _index(run_id)["best"]["0"] == first
    assert torch.load(cairn.lightning.checkpoint_path(run_id, "last"), weights_only=True)["global_step"] == 15


def test_logger_and_callback_use_an_injected_client(tmp_path: Path) -> None:
    other = cairn.Client(str(tmp_path / "other-store"))
    fluent_runs_before = len(cairn.search_runs(search_all_experiments=True, output_format="list"))
    cairn_logger = cairn.lightning.CairnLogger(client=other, run_name="injected")
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=1)
    trainer = _trainer(
        tmp_path,
        logger=cairn_logger,
        max_epochs=1,
        callbacks=[cairn.lightning.CairnCheckpointCallback(client=other, log_model=False), keep],
    )
    trainer.fit(TinyModule(), *_loaders())
    run_id = cairn_logger.run_id
    assert run_id is not None and cairn_logger.client is other
    run = other.get_run(run_id)
    assert run.info.run_name == "injected" and run.info.status is RunStatus.FINISHED
    assert [m.step for m in other.get_metric_history(run_id, "train_loss_step")] == list(range(8))
    assert {Path(f.path).name for f in other.list_artifacts(run_id, integration.CHECKPOINTS_DIR)} >= {
        "epoch=0-step=8.ckpt"
    }
    assert len(cairn.search_runs(search_all_experiments=True, output_format="list")) == fluent_runs_before


def test_the_callback_alone_with_an_injected_client_owns_its_run(tmp_path: Path) -> None:
    other = cairn.Client(str(tmp_path / "other-store"))
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=1)
    callback = cairn.lightning.CairnCheckpointCallback(client=other)
    trainer = _trainer(tmp_path, logger=False, max_epochs=1, callbacks=[callback, keep])
    module = TinyModule(hidden=5)
    trainer.fit(module, *_loaders())
    (run,) = other.search_runs(["0"]).items
    assert run.info.status is RunStatus.FINISHED  # started and ended by the callback, through the client
    assert {Path(f.path).name for f in other.list_artifacts(run.info.run_id, integration.CHECKPOINTS_DIR)} == {
        "epoch=0-step=8.ckpt",
        "index.json",
    }
    loaded = cairn.lightning.load_model(other.download_artifacts(run.info.run_id, "model", tmp_path / "dl"))
    assert isinstance(loaded, TinyModule) and torch.equal(loaded.net[0].weight, module.net[0].weight)
    assert cairn.active_run() is None


@pytest.mark.parametrize(
    "checkpoint",
    [
        "epoch=0-step=4.ckpt",  # 4 of epoch 0's 9 batches: the iterator was created before on_train_epoch_start
        "epoch=1-step=12.ckpt",  # 3 of epoch 1's: the iterator is created after it
    ],
)
def test_a_mid_epoch_resume_is_bit_identical_to_the_uninterrupted_fit(tmp_path: Path, checkpoint: str) -> None:
    def fit(ckpt_path: str | None, callbacks: list[Any]) -> dict[str, torch.Tensor]:
        L.seed_everything(11)
        module = TinyModule()
        trainer = _trainer(tmp_path, logger=False, max_epochs=3, callbacks=callbacks)
        trainer.fit(module, *_loaders(36, batch=4), ckpt_path=ckpt_path)  # 9 batches per epoch
        return _weights(module)

    def callback(**options: Any) -> Any:
        return cairn.lightning.CairnCheckpointCallback(log_model=False, upload_checkpoints=False, **options)

    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    reference = fit(None, [callback(), every])
    middle = tmp_path / "ckpt" / checkpoint
    assert torch.load(middle, weights_only=True)[integration.LOADERS_KEY][0]["epoch_finished"] is False
    resumed = fit(str(middle), [callback()])
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name

    # the RNG alone is not enough: without the replayed epoch the remaining batches differ
    rng_only = fit(str(middle), [callback(resumable_dataloaders=False)])
    assert any(not torch.equal(rng_only[name], tensor) for name, tensor in reference.items())
    # without cairn's callback the same checkpoint still loads (Lightning's inexact resume: new shuffle, RNG)
    plain = fit(str(middle), [])
    assert any(not torch.equal(plain[name], tensor) for name, tensor in reference.items())


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"batch_size": 2}, "loader had .*'batch_size': 4"),  # 16 batches: the 3 consumed were other samples
        ({"generator": torch.Generator().manual_seed(0)}, "shuffles with generators"),
    ],
)
def test_a_loader_that_cannot_be_replayed_is_reported(tmp_path: Path, change: dict[str, Any], match: str) -> None:
    def callback() -> Any:
        return cairn.lightning.CairnCheckpointCallback(log_model=False, upload_checkpoints=False)

    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    _trainer(tmp_path, logger=False, max_epochs=1, callbacks=[callback(), keep]).fit(TinyModule(), *_loaders())
    again = _trainer(tmp_path, logger=False, max_epochs=1, callbacks=[callback()])
    changed = DataLoader(_loaders()[0].dataset, **{"batch_size": 4, "shuffle": True, **change})
    with pytest.warns(UserWarning, match=f"cannot continue its epoch exactly.*{match}"):
        again.fit(TinyModule(), changed, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=3.ckpt"))
    assert type(changed.batch_sampler.sampler).__name__ == "RandomSampler"  # nothing left in place


@pytest.mark.parametrize("save_last", [True, "link"])
def test_a_last_checkpoint_rewritten_every_step_reaches_the_run_in_its_final_state(
    tmp_path: Path, save_last: Any
) -> None:
    """last.ckpt is rewritten in place faster than file times tick; the run must still end with the final one."""
    keep = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=1, monitor="step", mode="max", save_last=save_last
    )
    with cairn.start_run() as run:
        callback = cairn.lightning.CairnCheckpointCallback(log_model=False)
        trainer = _trainer(tmp_path, logger=False, max_epochs=2, callbacks=[callback, keep])
        trainer.fit(TinyModule(), *_loaders())
    assert _remote_checkpoints(run.info.run_id) == {"epoch=1-step=16.ckpt", "last.ckpt"}
    last = cairn.lightning.checkpoint_path(run.info.run_id, "last", dst_path=tmp_path / "dl")
    assert torch.load(last, weights_only=True)["global_step"] == 16


def test_files_restored_with_a_checkpoint_are_not_uploaded_again(tmp_path: Path) -> None:
    def fit(max_epochs: int, ckpt_path: str | None) -> str:
        keep = ModelCheckpoint(
            dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, monitor="step", mode="max"
        )
        cairn_logger = cairn.lightning.CairnLogger()
        callbacks = [cairn.lightning.CairnCheckpointCallback(log_model=False), keep]
        trainer = _trainer(tmp_path, logger=cairn_logger, max_epochs=max_epochs, callbacks=callbacks)
        trainer.fit(TinyModule(), *_loaders(), ckpt_path=ckpt_path)
        assert cairn_logger.run_id is not None
        return cairn_logger.run_id

    run_id = fit(1, None)  # steps 4 and 8
    before = {e["path"]: e["seq"] for e in _index(run_id)["checkpoints"]}
    assert_again = fit(2, cairn.lightning.checkpoint_path(run_id, "last"))
    assert assert_again == run_id
    after = {e["path"]: e["seq"] for e in _index(run_id)["checkpoints"]}
    assert {path: after[path] for path in before} == before  # the restored best_k_models files kept their upload
    assert sorted(Path(p).name for p in set(after) - set(before)) == ["epoch=1-step=12.ckpt", "epoch=1-step=16.ckpt"]


def test_the_logger_alone_does_not_upload_files_restored_with_a_checkpoint_again(tmp_path: Path) -> None:
    def fit(max_epochs: int, ckpt_path: str | None) -> str:
        keep = ModelCheckpoint(
            dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, monitor="step", mode="max"
        )
        cairn_logger = cairn.lightning.CairnLogger(log_model=True)
        trainer = _trainer(tmp_path, logger=cairn_logger, max_epochs=max_epochs, callbacks=[keep])
        trainer.fit(TinyModule(), *_loaders(), ckpt_path=ckpt_path)
        assert cairn_logger.run_id is not None
        return cairn_logger.run_id

    first = fit(1, None)
    assert _remote_checkpoints(first) == {"epoch=0-step=4.ckpt", "epoch=0-step=8.ckpt"}
    second = fit(2, str(tmp_path / "ckpt" / "epoch=0-step=8.ckpt"))
    assert _remote_checkpoints(second) == {"epoch=1-step=12.ckpt", "epoch=1-step=16.ckpt"}


def test_an_injected_client_does_not_silently_travel_to_spawned_processes(tmp_path: Path) -> None:
    import pickle

    other = cairn.Client(str(tmp_path / "other-store"))
    with pytest.raises(pickle.PicklingError, match=r"CairnLogger\(client=...\) cannot be sent to another process"):
        pickle.dumps(cairn.lightning.CairnLogger(client=other))
    with pytest.raises(pickle.PicklingError, match="CAIRN_TRACKING_URI"):
        pickle.dumps(cairn.lightning.CairnCheckpointCallback(client=other))
    assert pickle.loads(pickle.dumps(cairn.lightning.CairnCheckpointCallback())).client is None
