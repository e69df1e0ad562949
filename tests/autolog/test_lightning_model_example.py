"""The model autolog logs at the end of a fit loads by default: an input example is captured from the first
forward call (so a module defined in ``__main__`` is stored as a torch.export program with a signature), and
a model that still has to be pickled is announced once, with how to load it and how to avoid it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning", reason="lightning is not installed (pip install 'cairn[lightning]')")
pytest.importorskip("safetensors", reason="safetensors is not installed (pip install 'cairn[torch]')")

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import cairn
import cairn.lightning
from cairn.autolog import lightning as integration
from cairn.autolog import pytorch as autolog_pytorch
from cairn.errors import UnsafeModel
from cairn.models.input_example import load_input_example

PICKLED = "was logged with its architecture pickled"


@pytest.fixture(autouse=True)
def _undo_autolog() -> Iterator[None]:
    yield
    integration.disable()
    integration._take_pending()
    autolog_pytorch.autolog(disable=True)


def _loader(n: int = 24) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)), batch_size=8)


def _trainer(tmp_path: Path) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        logger=False,
        default_root_dir=str(tmp_path / "lightning"),
    )


def _fit_recording_warnings(module: L.LightningModule, tmp_path: Path) -> tuple[str, list[str]]:
    """Fit ``module`` under ``cairn.lightning.autolog()`` in a run; (run id, every warning's text)."""
    cairn.lightning.autolog()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cairn.start_run() as run:
            _trainer(tmp_path).fit(module, _loader())
    return run.info.run_id, [str(w.message) for w in caught]


# -- a module defined in the user's __main__ (the reported case) --------------------------------------------

SCRIPT = """
import json, sys
import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import cairn


class Regressor(L.LightningModule):  # no example_input_array, no save_hyperparameters
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


cairn.set_tracking_uri(sys.argv[1])
cairn.lightning.autolog()
torch.manual_seed(0)
x, y = torch.randn(40, 4), torch.randn(40, 1)
trainer = L.Trainer(max_epochs=1, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False, default_root_dir=sys.argv[2])
model = Regressor()
with cairn.start_run() as run:
    trainer.fit(
        model,
        DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8),
        DataLoader(TensorDataset(x[32:], y[32:])),
    )
model.eval()
probe = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10
print(json.dumps({"run_id": run.info.run_id, "prediction": model(probe).detach().tolist()}))
"""


def test_a_module_defined_in_main_is_logged_as_a_program_that_loads_without_pickle(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "MLFLOW_"))}
    done = subprocess.run(
        [sys.executable, str(script), str(store), str(tmp_path / "lightning")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "allow_pickle" not in done.stderr and "AutologWarning" not in done.stderr, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    cairn.set_tracking_uri(str(store))
    uri = f"runs:/{result['run_id']}/model"
    loaded = cairn.pyfunc.load_model(uri)  # no allow_pickle: this process has no class Regressor
    probe = (np.arange(12, dtype=np.float32).reshape(3, 4) / 10).astype(np.float32)
    assert np.asarray(loaded.predict(probe)) == pytest.approx(np.asarray(result["prediction"]), abs=1e-6)
    signature = loaded.metadata.signature
    assert signature is not None
    assert json.loads(signature.inputs.to_json())[0]["tensor-spec"]["shape"] == [-1, 4]
    local = cairn.download_artifacts(run_id=result["run_id"], artifact_path="model")
    mlmodel = cairn.models.Model.load(local)
    assert mlmodel.flavors["pytorch"]["architecture"] == "export"
    assert mlmodel.saved_input_example_info is not None


# -- the capture is one forward, then gone ---------------------------------------------------------------------


class Counting(L.LightningModule):
    """Records, before each forward call, how many forward pre-hooks the module carries."""

    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.hooks_seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.hooks_seen.append(len(self._forward_pre_hooks))
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_first_forward_gives_the_example_and_the_hook_is_removed_after_it(tmp_path: Path) -> None:
    module = Counting()
    run_id, messages = _fit_recording_warnings(module, tmp_path)
    assert module.hooks_seen == [1, 0, 0]  # armed for the first forward only: no per-step cost after it
    assert not module._forward_pre_hooks
    assert not [m for m in messages if "pickle" in m], messages
    info = cairn.models.Model.load(cairn.download_artifacts(run_id=run_id, artifact_path="model"))
    assert info.flavors["pytorch"]["architecture"] == "class"  # importable: rebuilt from class + hparams
    assert info.signature is not None and info.saved_input_example_info is not None
    example = load_input_example(cairn.download_artifacts(run_id=run_id, artifact_path="model"))
    first_batch = next(iter(_loader()))[0]
    assert np.array_equal(example, first_batch[:5].numpy())  # a few rows of the first batch, not all of it


def test_example_input_array_wins_and_no_hook_is_armed(tmp_path: Path) -> None:
    module = Counting()
    module.example_input_array = torch.zeros(2, 4)
    run_id, _ = _fit_recording_warnings(module, tmp_path)
    assert module.hooks_seen == [0, 0, 0]
    example = load_input_example(cairn.download_artifacts(run_id=run_id, artifact_path="model"))
    assert np.array_equal(example, np.zeros((2, 4), dtype=np.float32))


# -- never silent: a model that still needs pickle is announced once ---------------------------------------


class Unexportable(L.LightningModule):
    """Not rebuildable from its class (a required argument it does not record) and not exportable
    (a data-dependent branch): only a pickled skeleton can hold it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Linear(4, width)

    def forward(self, x: Any) -> torch.Tensor:
        if isinstance(x, list):
            x = x[0]
        out = self.net(x)
        return out if out.sum() > 0 else -out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(self.wrap(x))[:, :1], y)

    def wrap(self, x: torch.Tensor) -> Any:
        return x

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class UnexportableListInput(Unexportable):
    def wrap(self, x: torch.Tensor) -> Any:
        return [x]  # the forward's input is no tensor: nothing to capture


@pytest.mark.parametrize(
    ("module_class", "reason"),
    [(Unexportable, "torch.export failed"), (UnexportableListInput, "no input_example")],
)
def test_a_model_that_needs_pickle_is_announced_once_with_the_way_out(
    tmp_path: Path, module_class: type[Unexportable], reason: str
) -> None:
    run_id, messages = _fit_recording_warnings(module_class(3), tmp_path)
    about = [m for m in messages if "pickle" in m]
    assert len(about) == 1, messages  # ours, not the flavor's generic one as well
    message = about[0]
    assert PICKLED in message and f"runs:/{run_id}/model" in message and reason in message
    assert "allow_pickle=True" in message and "CAIRN_ALLOW_PICKLE=1" in message
    assert "example_input_array" in message and "save_hyperparameters" in message
    with pytest.raises(UnsafeModel):
        cairn.pyfunc.load_model(f"runs:/{run_id}/model")


def test_silent_autolog_logs_the_pickle_notice_instead_of_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cairn.lightning.autolog(silent=True)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING", logger="cairn.autolog"):
        warnings.simplefilter("always")
        with cairn.start_run():
            _trainer(tmp_path).fit(Unexportable(3), _loader())
    assert not [w for w in caught if "pickle" in str(w.message)]
    assert [r for r in caplog.records if PICKLED in r.getMessage()]


# -- plain-PyTorch autolog: the same notice -----------------------------------------------------------------


class PlainUnexportable(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Linear(4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out if out.sum() > 0 else -out


def test_plain_pytorch_autolog_announces_a_pickled_model_the_same_way() -> None:
    autolog_pytorch.autolog()
    torch.manual_seed(0)
    model = PlainUnexportable(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, y in _loader():
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        run = cairn.active_run()
        assert run is not None
        cairn.end_run()
    about = [str(w.message) for w in caught if "pickle" in str(w.message)]
    assert len(about) == 1, [str(w.message) for w in caught]
    message = about[0]
    run_id = run.info.run_id
    assert PICKLED in message and f"runs:/{run_id}/model" in message and "torch.export failed" in message
    assert "allow_pickle=True" in message and "CAIRN_ALLOW_PICKLE=1" in message
    assert "cairn.pytorch.log_model" in message
    with pytest.raises(UnsafeModel):
        cairn.pyfunc.load_model(f"runs:/{run_id}/model")


def test_an_example_the_model_cannot_be_logged_with_is_reported_and_the_model_logged_without(tmp_path: Path) -> None:
    cairn.lightning.autolog()
    module = Counting()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        precision="bf16-true",  # the forward's input is bfloat16, which no signature can describe
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        default_root_dir=str(tmp_path / "lightning"),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cairn.start_run() as run:
            trainer.fit(module, _loader())
    messages = [str(w.message) for w in caught]
    [failure] = [m for m in messages if "first forward call as input example failed" in m]
    assert "bfloat16" in failure
    mlmodel = cairn.models.Model.load(cairn.download_artifacts(run_id=run.info.run_id, artifact_path="model"))
    assert mlmodel.flavors["pytorch"]["architecture"] == "class" and mlmodel.saved_input_example_info is None


class KeywordInput(Counting):
    """Called as ``self(x=...)``: the example is the keyword arguments, as a dict."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x=x), y)


def test_a_forward_called_with_keywords_gives_a_dict_example(tmp_path: Path) -> None:
    run_id, messages = _fit_recording_warnings(KeywordInput(), tmp_path)
    assert not [m for m in messages if "pickle" in m or "failed" in m], messages
    example = load_input_example(cairn.download_artifacts(run_id=run_id, artifact_path="model"))
    assert set(example) == {"x"} and np.array_equal(example["x"], next(iter(_loader()))[0][:5].numpy())
    loaded = cairn.pyfunc.load_model(f"runs:/{run_id}/model")
    assert np.asarray(loaded.predict({"x": np.ones((3, 4), dtype=np.float32)})).shape == (3, 1)
