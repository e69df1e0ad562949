"""Lightning: CairnLogger, CairnCheckpointCallback, autolog, checkpoint_path and the lightning flavor.

Tiny LightningModules on CPU; every Trainer is built by :func:`_trainer` (no progress bar, no model
summary, no sanity check unless asked).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import warnings
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning", reason="lightning is not installed (pip install 'cairn[lightning]')")
pytest.importorskip("safetensors", reason="safetensors is not installed (pip install 'cairn[torch]')")

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers.logger import Logger
from torch.utils.data import DataLoader, TensorDataset

import cairn
import cairn.lightning
from cairn.autolog import lightning as integration
from cairn.errors import CheckpointError, InvalidArgument
from cairn.tracking import system_tags
from cairn.tracking.entities import RunStatus

logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", module="pytorch_lightning")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        yield
    integration.disable()
    integration._take_pending()


# -- modules ------------------------------------------------------------------------------------------


class TinyModule(L.LightningModule):
    """Regression with dropout (so the RNG matters), logging step and epoch metrics."""

    def __init__(self, hidden: int = 8, lr: float = 0.05, fail_at: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(hidden, 1)
        )
        self.example_input_array = torch.zeros(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.hparams.fail_at is not None and self.global_step == self.hparams.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Slow(TinyModule):
    """Steps long enough for a background sampler to take a few samples."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        time.sleep(0.02)
        return super().training_step(batch, batch_idx)


class Interrupted(TinyModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == 2:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


class Worsening(TinyModule):
    """Validation loss that grows every epoch, so early stopping triggers."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", float(self.current_epoch + 1))


class TwoOptimizers(L.LightningModule):
    """Manual optimization with two optimizers (a generator/discriminator shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.gen = torch.nn.Linear(4, 4)
        self.disc = torch.nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = batch
        opt_g, opt_d = self.optimizers()
        d_loss = self.disc(self.gen(x).detach()).pow(2).mean() + (1 - self.disc(x)).pow(2).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = (1 - self.disc(self.gen(x))).pow(2).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss})

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.gen.parameters(), lr=0.01), torch.optim.SGD(self.disc.parameters(), lr=0.01)]


class Recorder(Logger):
    """Keeps what Lightning hands to loggers, to compare with what reached the run."""

    def __init__(self) -> None:
        super().__init__()
        self.points: dict[str, list[tuple[int, float]]] = {}

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.points.setdefault(key, []).append((int(step or 0), float(value)))


def _data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


def _loaders(n: int = 32, batch: int = 4) -> tuple[DataLoader[Any], DataLoader[Any]]:
    data = _data(n)
    return DataLoader(data, batch_size=batch, shuffle=True), DataLoader(data, batch_size=16)


def _trainer(tmp_path: Path, *, trainer_class: Any = None, **kwargs: Any) -> Any:
    """A quiet CPU Trainer (``lightning.Trainer`` unless ``trainer_class``, e.g. ``pytorch_lightning.Trainer``)."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "max_epochs": 2,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "default_root_dir": str(tmp_path / "lightning"),
    }
    options.update(kwargs)
    return (trainer_class or L.Trainer)(**options)


def _history(run_id: str, key: str, **kwargs: Any) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in cairn.Client().get_metric_history(run_id, key, **kwargs)]


def _assert_points(actual: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [s for s, _ in actual] == [s for s, _ in expected]
    assert [v for _, v in actual] == pytest.approx([v for _, v in expected], rel=1e-6)


def _remote_checkpoints(run_id: str) -> set[str]:
    files = cairn.Client().list_artifacts(run_id, integration.CHECKPOINTS_DIR)
    return {Path(f.path).name for f in files if f.path.endswith(".ckpt")}


def _index(run_id: str) -> dict[str, Any]:
    path = cairn.Client().download_artifacts(run_id, f"{integration.CHECKPOINTS_DIR}/{integration.INDEX_FILE}")
    return dict(json.loads(Path(path).read_text()))


# -- the logger ---------------------------------------------------------------------------------------


def test_metrics_reach_the_run_at_the_steps_lightning_logs_them(tmp_path: Path) -> None:
    L.seed_everything(0)
    cairn_logger, recorder = cairn.lightning.CairnLogger(experiment_name="tiny", run_name="r1"), Recorder()
    trainer = _trainer(tmp_path, logger=[cairn_logger, recorder], max_epochs=3, enable_checkpointing=False)
    trainer.fit(TinyModule(), *_loaders())

    run = cairn.get_run(cairn_logger.run_id)
    assert run.info.status is RunStatus.FINISHED
    assert run.info.run_name == "r1"
    assert cairn.get_experiment(run.info.experiment_id).name == "tiny"
    assert set(recorder.points) == {"train_loss_step", "train_loss_epoch", "val_loss", "epoch"}
    for key in ("train_loss_step", "train_loss_epoch", "val_loss"):
        _assert_points(_history(run.info.run_id, key), recorder.points[key])
    steps = [s for s, _ in _history(run.info.run_id, "train_loss_step")]
    assert steps == list(range(24))  # 8 batches x 3 epochs, one point per optimizer step
    assert [s for s, _ in _history(run.info.run_id, "val_loss")] == [7, 15, 23]  # once per epoch, at its last step
    # Lightning repeats "epoch" with every call at a step; the run keeps one point per step
    assert len(_history(run.info.run_id, "epoch")) == 24
    assert cairn_logger.version == run.info.run_id
    assert cairn_logger.name == run.info.experiment_id


def test_logging_from_a_step_queues_points_without_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    cairn_logger = cairn.lightning.CairnLogger()
    run_id = cairn_logger.run_id
    assert run_id is not None
    store = cairn.Client().store
    writers: list[str] = []
    write = store.log_metric_points

    def recording(points: Any) -> None:
        writers.append(threading.current_thread().name)
        write(points)

    monkeypatch.setattr(store, "log_metric_points", recording)
    for step in range(100):
        cairn_logger.log_metrics({"a": 1.0, "b": torch.tensor(2.5)}, step=step)
    assert threading.main_thread().name not in writers  # only the background writer touches the store
    cairn.flush()
    assert _history(run_id, "b") == [(step, 2.5) for step in range(100)]
    with pytest.warns(UserWarning, match="string value"):
        cairn_logger.log_metrics({"note": "text"}, step=4)
    with pytest.warns(UserWarning, match="logged as 'acc_top1_'"):
        cairn_logger.log_metrics({"acc[top1]": 0.5}, step=4)
    cairn.flush()
    assert _history(run_id, "acc_top1_") == [(4, 0.5)]
    cairn_logger.finalize("success")
    assert cairn.get_run(run_id).info.status is RunStatus.FINISHED


def test_hyperparameters_are_flattened_and_truncated_params(tmp_path: Path) -> None:
    cairn_logger = cairn.lightning.CairnLogger()
    cairn_logger.log_hyperparams(
        Namespace(lr=0.1, opt={"name": "adam", "betas": (0.9, 0.99)}, act=torch.relu, long="x" * 7000, empty={})
    )
    params = cairn.get_run(cairn_logger.run_id).data.params
    assert params["lr"] == "0.1"
    assert params["opt/name"] == "adam"
    assert params["opt/betas"] == "(0.9, 0.99)"
    assert params["act"] == "relu"
    assert params["empty"] == "{}"
    assert len(params["long"]) == 6000 and params["long"].endswith("...")
    # logging the same values again (a resumed run) is fine; a changed one warns instead of failing
    cairn_logger.log_hyperparams({"lr": 0.1})
    with pytest.warns(UserWarning, match="hyperparameters differ"):
        cairn_logger.log_hyperparams({"lr": 0.2})
    assert cairn.get_run(cairn_logger.run_id).data.params["lr"] == "0.1"


def test_module_hparams_become_params_and_an_active_run_is_left_open(tmp_path: Path) -> None:
    with cairn.start_run() as run:
        trainer = _trainer(tmp_path, logger=cairn.lightning.CairnLogger(), max_epochs=1, enable_checkpointing=False)
        trainer.fit(TinyModule(hidden=6, lr=0.01), *_loaders(16))
        assert cairn.active_run() is not None  # the user's run is not ended by Lightning's finalize
        assert cairn.get_run(run.info.run_id).info.status is RunStatus.RUNNING
    data = cairn.get_run(run.info.run_id).data
    assert data.params == {"hidden": "6", "lr": "0.01", "fail_at": "None"}
    assert "train_loss_step" in data.metrics


def test_a_failing_fit_marks_the_run_failed(tmp_path: Path) -> None:
    cairn_logger = cairn.lightning.CairnLogger()
    trainer = _trainer(tmp_path, logger=cairn_logger, callbacks=[cairn.lightning.CairnCheckpointCallback()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(TinyModule(fail_at=3), *_loaders())
    run = cairn.get_run(cairn_logger.run_id)
    assert run.info.status is RunStatus.FAILED
    assert [s for s, _ in _history(run.info.run_id, "train_loss_step")] == [0, 1, 2]
    assert not any(f.path == "model" for f in cairn.list_artifacts(run_id=run.info.run_id))  # no model of a failed fit


def test_an_interrupted_fit_marks_the_run_killed(tmp_path: Path) -> None:
    cairn_logger = cairn.lightning.CairnLogger()
    trainer = _trainer(tmp_path, logger=cairn_logger, enable_checkpointing=False)
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful shutdown and sys.exit(1)
            trainer.fit(Interrupted(), *_loaders())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert cairn.get_run(cairn_logger.run_id).info.status is RunStatus.KILLED


def test_early_stopping_ends_the_run_finished_with_one_validation_point_per_epoch(tmp_path: Path) -> None:
    cairn_logger = cairn.lightning.CairnLogger()
    trainer = _trainer(
        tmp_path,
        logger=cairn_logger,
        max_epochs=10,
        callbacks=[EarlyStopping(monitor="val_loss", patience=1), cairn.lightning.CairnCheckpointCallback()],
    )
    trainer.fit(Worsening(), *_loaders(16))
    run_id = cairn_logger.run_id
    # val_loss 1 then 2: no improvement for patience=1 epoch, so training stops after the second of 10 epochs
    assert trainer.current_epoch == 2 and trainer.should_stop
    assert _history(run_id, "val_loss") == [(3, 1.0), (7, 2.0)]
    assert cairn.get_run(run_id).info.status is RunStatus.FINISHED
    assert cairn.lightning.load_model(f"runs:/{run_id}/model") is not None


def test_manual_optimization_with_two_optimizers_logs_once_per_batch(tmp_path: Path) -> None:
    cairn_logger, recorder = cairn.lightning.CairnLogger(), Recorder()
    trainer = _trainer(tmp_path, logger=[cairn_logger, recorder], enable_checkpointing=False)
    trainer.fit(TwoOptimizers(), DataLoader(_data(16), batch_size=4, shuffle=True))
    assert trainer.global_step == 16  # two optimizer steps per batch
    for key in ("d_loss", "g_loss"):
        history = _history(cairn_logger.run_id, key)
        _assert_points(history, recorder.points[key])
        assert [s for s, _ in history] == list(range(8))


# -- checkpoints ---------------------------------------------------------------------------------------


def test_checkpoints_are_uploaded_and_pruned_ones_deleted_from_the_run(tmp_path: Path) -> None:
    L.seed_everything(1)
    cairn_logger = cairn.lightning.CairnLogger()
    keep = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=2, monitor="step", mode="max", save_last=True
    )
    trainer = _trainer(
        tmp_path, logger=cairn_logger, max_epochs=2, callbacks=[cairn.lightning.CairnCheckpointCallback(), keep]
    )
    trainer.fit(TinyModule(), *_loaders())
    run_id = cairn_logger.run_id
    local = {p.name for p in (tmp_path / "ckpt").glob("*.ckpt")}
    assert local == {"epoch=1-step=12.ckpt", "epoch=1-step=15.ckpt", "last.ckpt"}
    assert _remote_checkpoints(run_id) == local  # steps 3, 6 and 9 were pruned here and in the run

    index = _index(run_id)
    entries = {e["file"]: e for e in index["checkpoints"]}
    assert set(entries) == local
    assert entries["epoch=1-step=15.ckpt"]["global_step"] == 15
    assert entries["epoch=1-step=15.ckpt"]["log_step"] == 14
    assert entries["last.ckpt"]["kind"] == "last"
    assert index["best"] == {"0": f"{integration.CHECKPOINTS_DIR}/epoch=1-step=15.ckpt"}

    # what cairn adds loads under torch.load(weights_only=True), Lightning 2.6's default for local files
    path = cairn.lightning.checkpoint_path(run_id, "last", dst_path=tmp_path / "dl")
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 15
    assert loaded[integration.RUN_ID_KEY] == run_id
    assert loaded[integration.LOG_STEP_KEY] == 14
    assert set(loaded[integration.RNG_KEY]) >= {"python", "numpy", "torch"}
    assert Path(cairn.lightning.checkpoint_path(run_id, "best")).name == "epoch=1-step=15.ckpt"
    assert Path(cairn.lightning.checkpoint_path(run_id, 12)).name == "epoch=1-step=12.ckpt"
    with pytest.raises(CheckpointError, match=r"no Lightning checkpoint at global step 9; available: \[12, 15\]"):
        cairn.lightning.checkpoint_path(run_id, 9)
    with pytest.raises(InvalidArgument, match="which must be"):
        cairn.lightning.checkpoint_path(run_id, "first")  # type: ignore[arg-type]


def test_checkpoint_path_of_a_run_without_checkpoints_and_a_damaged_last(tmp_path: Path) -> None:
    with cairn.start_run() as run:
        pass
    with pytest.raises(CheckpointError, match="has no Lightning checkpoints"):
        cairn.lightning.checkpoint_path(run.info.run_id)
    with pytest.raises(InvalidArgument, match="needs a run_id"):
        cairn.lightning.checkpoint_path()

    cairn_logger = cairn.lightning.CairnLogger()
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=1, save_last=True)
    trainer = _trainer(
        tmp_path, logger=cairn_logger, max_epochs=1, callbacks=[cairn.lightning.CairnCheckpointCallback(), keep]
    )
    trainer.fit(TinyModule(), *_loaders())
    run_id = cairn_logger.run_id
    store = cairn.Client().artifact_store(run_id)
    store.put_bytes(b"torn", f"{integration.CHECKPOINTS_DIR}/last.ckpt")  # as if the uploader died mid-replace
    with pytest.warns(UserWarning, match="does not match the sha256"):
        path = cairn.lightning.checkpoint_path(run_id, "last", dst_path=tmp_path / "dl")
    assert Path(path).name == "epoch=0-step=8.ckpt"
    assert torch.load(path, weights_only=True)["global_step"] == 8


def test_resuming_continues_the_same_run_and_supersedes_what_the_dead_process_logged(tmp_path: Path) -> None:
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    first = cairn.lightning.CairnLogger()
    L.seed_everything(3)
    trainer = _trainer(
        tmp_path, logger=first, max_epochs=2, callbacks=[cairn.lightning.CairnCheckpointCallback(), keep]
    )
    trainer.fit(TinyModule(), *_loaders())  # 16 steps; checkpoints at 5, 10, 15
    run_id = first.run_id
    assert run_id is not None
    # as if the process had died after logging step 15 but before its step-15 checkpoint reached the run
    cairn.Client().store.update_run_info(run_id, status=RunStatus.RUNNING)
    index = _index(run_id)
    for entry in index["checkpoints"]:
        if entry["global_step"] == 15:
            cairn.Client().artifact_store(run_id).delete(entry["path"])
    index["checkpoints"] = [e for e in index["checkpoints"] if e["global_step"] != 15]
    cairn.Client().log_dict(run_id, index, f"{integration.CHECKPOINTS_DIR}/{integration.INDEX_FILE}")

    path = cairn.lightning.checkpoint_path(run_id, "last")
    second = cairn.lightning.CairnLogger()
    resumed = _trainer(tmp_path, logger=second, max_epochs=3, callbacks=[cairn.lightning.CairnCheckpointCallback()])
    resumed.fit(TinyModule(), *_loaders(), ckpt_path=path)
    assert second.run_id == run_id  # the same run continues
    steps = [s for s, _ in _history(run_id, "train_loss_step")]
    assert steps == list(range(24))  # 0..9 from the first process, 10..23 resumed: no duplicate, no gap
    everything = [s for s, _ in _history(run_id, "train_loss_step", include_superseded=True)]
    assert sorted(everything) == sorted([*range(16), *range(10, 24)])  # the old 10..15 are kept, superseded
    assert cairn.get_run(run_id).info.status is RunStatus.FINISHED


def test_resuming_from_an_older_checkpoint_forks_a_new_run(tmp_path: Path) -> None:
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first = cairn.lightning.CairnLogger()
    trainer = _trainer(
        tmp_path, logger=first, max_epochs=1, callbacks=[cairn.lightning.CairnCheckpointCallback(), keep]
    )
    trainer.fit(TinyModule(), *_loaders())  # checkpoints at 4 and 8
    path = cairn.lightning.checkpoint_path(first.run_id, 4)
    second = cairn.lightning.CairnLogger()
    resumed = _trainer(tmp_path, logger=second, max_epochs=1, callbacks=[cairn.lightning.CairnCheckpointCallback()])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fork is expected: no "written by another run" warning
        warnings.filterwarnings("ignore", module="lightning")
        resumed.fit(TinyModule(), *_loaders(), ckpt_path=path)
    fork = cairn.get_run(second.run_id)
    assert fork.info.run_id != first.run_id
    assert fork.data.tags[system_tags.FORKED_FROM] == first.run_id
    assert fork.data.tags[system_tags.FORKED_AT_STEP] == "3"
    assert [s for s, _ in _history(fork.info.run_id, "train_loss_step")] == list(range(8))
    assert [s for s, _ in _history(first.run_id, "train_loss_step")] == list(range(8))  # untouched


def test_logger_alone_uploads_checkpoints(tmp_path: Path) -> None:
    cairn_logger = cairn.lightning.CairnLogger(log_model=True)
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=1)
    trainer = _trainer(tmp_path, logger=cairn_logger, max_epochs=1, callbacks=[keep])
    trainer.fit(TinyModule(), *_loaders(16))
    assert _remote_checkpoints(cairn_logger.run_id) == {"epoch=0-step=4.ckpt"}


# -- the model ---------------------------------------------------------------------------------------


def test_the_trained_model_is_logged_without_pickle_and_loads_back(tmp_path: Path) -> None:
    cairn_logger = cairn.lightning.CairnLogger()
    trainer = _trainer(
        tmp_path, logger=cairn_logger, enable_checkpointing=False, callbacks=[cairn.lightning.CairnCheckpointCallback()]
    )
    module = TinyModule(hidden=5)
    trainer.fit(module, *_loaders(16))
    uri = f"runs:/{cairn_logger.run_id}/model"
    loaded = cairn.lightning.load_model(uri)  # no allow_pickle: rebuilt from the class and its hparams
    assert type(loaded) is TinyModule and loaded.hparams.hidden == 5
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    mlmodel = cairn.models.Model.load(cairn.download_artifacts(run_id=cairn_logger.run_id, artifact_path="model"))
    assert mlmodel.flavors["lightning"]["module_class"] == f"{__name__}:TinyModule"
    assert mlmodel.flavors["lightning"]["hparams"] == {"hidden": 5, "lr": 0.05, "fail_at": None}
    assert mlmodel.flavors["pytorch"]["architecture"] == "class"
    prediction = cairn.pyfunc.load_model(uri).predict(torch.ones(3, 4).numpy())
    module.eval()
    assert prediction == pytest.approx(module(torch.ones(3, 4)).detach().numpy())


def test_flavor_save_and_load_round_trip(tmp_path: Path) -> None:
    module = TinyModule(hidden=3)
    cairn.lightning.save_model(module, tmp_path / "m")
    loaded = cairn.lightning.load_model(tmp_path / "m")
    assert isinstance(loaded, TinyModule) and not loaded.training
    assert torch.equal(loaded.net[0].weight, module.net[0].weight)
    requirements = (tmp_path / "m" / "requirements.txt").read_text()
    assert "lightning==" in requirements
    with pytest.raises(InvalidArgument, match="LightningModule"):
        cairn.lightning.save_model(torch.nn.Linear(2, 2), tmp_path / "bad")


# -- autolog -----------------------------------------------------------------------------------------


def test_autolog_attaches_the_logger_beside_the_users_and_disable_restores_trainer(tmp_path: Path) -> None:
    original_init = L.Trainer.__init__
    cairn.lightning.autolog(checkpoint_every_n_steps=3, keep_last=2, extra_tags={"team": "a"})
    recorder = Recorder()
    trainer = _trainer(tmp_path, logger=recorder, log_every_n_steps=50)
    loggers = trainer.loggers
    assert loggers[0] is recorder and isinstance(loggers[1], cairn.lightning.CairnLogger)
    assert trainer.log_every_n_steps == 50  # the user's choice wins
    assert any(isinstance(cb, cairn.lightning.CairnCheckpointCallback) for cb in trainer.callbacks)
    assert isinstance(trainer.callbacks[-1], ModelCheckpoint)  # checkpoint callbacks stay last
    trainer.fit(TinyModule(), *_loaders())
    run_id = loggers[1].run_id
    run = cairn.get_run(run_id)
    assert run.data.tags["team"] == "a" and run.data.tags["cairn.autolog"] == "lightning"
    assert run.info.status is RunStatus.FINISHED
    assert _remote_checkpoints(run_id) == {"epoch=1-step=12.ckpt", "epoch=1-step=15.ckpt", "last.ckpt"}
    assert any(f.path == "model" for f in cairn.list_artifacts(run_id=run_id))

    default = _trainer(tmp_path)  # no log_every_n_steps given: autolog's (1) is used
    assert default.log_every_n_steps == 1
    cairn.lightning.autolog(disable=True)
    assert L.Trainer.__init__ is original_init
    plain = _trainer(tmp_path)
    assert not any(isinstance(lg, cairn.lightning.CairnLogger) for lg in plain.loggers)


def test_pytorch_autolog_covers_lightning(tmp_path: Path) -> None:
    pytorch_autolog = pytest.importorskip("cairn.autolog.pytorch")
    pytorch_autolog.autolog(log_models=False)
    try:
        trainer = _trainer(tmp_path, enable_checkpointing=False)
        cairn_loggers = [lg for lg in trainer.loggers if isinstance(lg, cairn.lightning.CairnLogger)]
        assert len(cairn_loggers) == 1
        trainer.fit(TinyModule(), *_loaders(16))
        run_id = cairn_loggers[0].run_id
        assert [s for s, _ in _history(run_id, "train_loss_step")] == list(range(8))
        assert not any(f.path == "model" for f in cairn.list_artifacts(run_id=run_id))
    finally:
        pytorch_autolog.autolog(disable=True)
    assert not integration.is_enabled()


def test_pytorch_autolog_passes_system_metrics_and_grad_norm_to_lightning(tmp_path: Path) -> None:
    pytorch_autolog = pytest.importorskip("cairn.autolog.pytorch")
    pytorch_autolog.autolog(log_models=False, log_system_metrics=True, system_metrics_interval=0.02, log_grad_norm=True)
    try:
        trainer = _trainer(tmp_path, enable_checkpointing=False)
        trainer.fit(Slow(), *_loaders(16))
    finally:
        pytorch_autolog.autolog(disable=True)
    run_id = next(lg for lg in trainer.loggers if isinstance(lg, cairn.lightning.CairnLogger)).run_id
    norms = _history(run_id, "grad_norm")
    assert [s for s, _ in norms] == list(range(8))  # the steps train_loss_step is logged at
    assert all(v > 0 for _, v in norms)
    metrics = cairn.get_run(run_id).data.metrics
    assert {"system/cpu_percent", "system/memory_used_mb"} <= set(metrics)
    samples = len(_history(run_id, "system/memory_used_mb"))
    steps = [s for s, _ in _history(run_id, "system/memory_used_mb")]
    assert steps == sorted(steps) and set(steps) <= set(range(9))  # at the training step, not the sample index
    time.sleep(0.1)
    assert len(_history(run_id, "system/memory_used_mb")) == samples  # the sampler stopped with fit


def test_lightning_autolog_grad_norm_per_optimizer(tmp_path: Path) -> None:
    cairn.lightning.autolog(log_models=False, log_grad_norm=True)
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    trainer.fit(TwoOptimizers(), *_loaders(16))
    run_id = next(lg for lg in trainer.loggers if isinstance(lg, cairn.lightning.CairnLogger)).run_id
    for key in ("grad_norm/opt0", "grad_norm/opt1"):
        assert len(_history(run_id, key)) == 4, key


def test_autolog_resume_picks_up_the_runs_last_checkpoint(tmp_path: Path) -> None:
    cairn.lightning.autolog(checkpoint_every_n_steps=4, log_models=False)
    trainer = _trainer(tmp_path, max_epochs=1, logger=False)
    trainer.fit(TinyModule(), *_loaders())
    run_id = next(lg for lg in trainer.loggers if isinstance(lg, cairn.lightning.CairnLogger)).run_id
    assert run_id is not None

    cairn.lightning.autolog(log_models=False, resume=run_id)
    again = _trainer(tmp_path, max_epochs=2, logger=False)
    again.fit(TinyModule(), *_loaders())  # no ckpt_path: autolog found the run's last checkpoint
    assert again.ckpt_path is not None and Path(again.ckpt_path).name == "last.ckpt"
    assert next(lg for lg in again.loggers if isinstance(lg, cairn.lightning.CairnLogger)).run_id == run_id
    assert [s for s, _ in _history(run_id, "train_loss_step")] == list(range(16))


def test_a_checkpoint_written_with_the_callback_resumes_in_a_plain_trainer_too(tmp_path: Path) -> None:
    keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=1)
    trainer = _trainer(
        tmp_path, logger=False, max_epochs=1, callbacks=[cairn.lightning.CairnCheckpointCallback(log_model=False), keep]
    )
    trainer.fit(TinyModule(), *_loaders())
    path = tmp_path / "ckpt" / "epoch=0-step=5.ckpt"  # mid-epoch: 5 of 8 batches
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint[integration.LOADERS_KEY][0]["batch_in_epoch"] == 5
    assert "combined_loader" not in checkpoint["loops"]["fit_loop"]["state_dict"]  # Lightning's own state is clean
    plain = _trainer(tmp_path, logger=False, max_epochs=2, enable_checkpointing=False)
    plain.fit(TinyModule(), *_loaders(), ckpt_path=str(path))  # no cairn: resumes the usual (inexact) way
    assert plain.global_step == 16


def test_logger_and_callback_pickle_for_spawned_processes(tmp_path: Path) -> None:
    import pickle

    cairn_logger = cairn.lightning.CairnLogger()
    run_id = cairn_logger.run_id
    copy = pickle.loads(pickle.dumps(cairn_logger))  # what ddp_spawn does to the Trainer's loggers
    copy.log_metrics({"x": 1.0}, step=0)
    assert copy.run_id == run_id
    cairn.flush()
    assert _history(run_id, "x") == [(0, 1.0)]
    callback = pickle.loads(pickle.dumps(cairn.lightning.CairnCheckpointCallback(model_name="m")))
    assert callback.model_name == "m"


# -- the standalone pytorch_lightning package ----------------------------------------------------------
# The same Trainer under another package name, whose Logger and Callback base classes are distinct classes.


def _pl() -> Any:
    return pytest.importorskip("pytorch_lightning", reason="pytorch_lightning is not installed")


def _plain_module(pl: Any) -> Any:
    """TinyModule's training, as a ``pytorch_lightning.LightningModule``."""

    class PlainModule(pl.LightningModule):
        training_step = TinyModule.training_step
        validation_step = TinyModule.validation_step

        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.hparams.fail_at = None
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return PlainModule()


def _the_cairn_logger(trainer: Any) -> Any:
    found = [lg for lg in trainer.loggers if isinstance(lg, integration._CairnLoggerImpl)]
    assert len(found) == 1, trainer.loggers
    return found[0]


def test_pytorch_autolog_covers_a_pytorch_lightning_trainer(tmp_path: Path) -> None:
    pl = _pl()
    pytorch_autolog = pytest.importorskip("cairn.autolog.pytorch")
    pytorch_autolog.autolog(log_models=True)
    try:
        keep_best = pl.callbacks.ModelCheckpoint(save_top_k=1, monitor="val_loss")
        trainer = _trainer(tmp_path, trainer_class=pl.Trainer, callbacks=[keep_best])
        cairn_logger = _the_cairn_logger(trainer)
        assert isinstance(cairn_logger, pl.loggers.logger.Logger)  # built on that package's own base class
        trainer.fit(_plain_module(pl), *_loaders())
    finally:
        pytorch_autolog.autolog(disable=True)
    run_id = cairn_logger.run_id
    run = cairn.get_run(run_id)
    assert run.info.status is RunStatus.FINISHED and run.data.params["lr"] == "0.05"
    assert [s for s, _ in _history(run_id, "train_loss_step")] == list(range(16))  # one point per step
    assert [s for s, _ in _history(run_id, "val_loss")] == [7, 15]
    assert _remote_checkpoints(run_id) == {"epoch=1-step=16.ckpt"}
    # a class defined in a function: exported with the input example autolog took from the first forward
    mlmodel = cairn.models.Model.load(cairn.download_artifacts(run_id=run_id, artifact_path="model"))
    assert mlmodel.flavors["pytorch"]["architecture"] == "export"


def test_checkpoint_path_resumes_a_pytorch_lightning_fit_in_the_same_run(tmp_path: Path) -> None:
    pl = _pl()
    pl.seed_everything(0)
    first = _trainer(
        tmp_path,
        trainer_class=pl.Trainer,
        max_epochs=1,
        logger=cairn.lightning.CairnLogger(),
        callbacks=[cairn.lightning.CairnCheckpointCallback(log_model=False)],
    )
    first.fit(_plain_module(pl), *_loaders())
    run_id = _the_cairn_logger(first).run_id

    again = _trainer(
        tmp_path,
        trainer_class=pl.Trainer,
        logger=cairn.lightning.CairnLogger(run_id=run_id),
        callbacks=[cairn.lightning.CairnCheckpointCallback(log_model=False)],
    )
    again.fit(_plain_module(pl), *_loaders(), ckpt_path=cairn.lightning.checkpoint_path(run_id, "last"))
    assert again.global_step == 16
    assert [s for s, _ in _history(run_id, "train_loss_step")] == list(range(16))
