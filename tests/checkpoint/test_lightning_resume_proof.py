"""The Lightning proof: a ``Trainer.fit`` killed with SIGKILL in the middle of an epoch, after a checkpoint, and
restarted with ``trainer.fit(ckpt_path=cairn.lightning.checkpoint_path(run_id, "last"))`` ends with weights
bit-identical to an uninterrupted run, in the same run, whose loss curve has no duplicate or backward step.

The model has dropout and the training DataLoader shuffles, so both the RNG states (stored by
CairnCheckpointCallback) and the loader's position in its shuffled epoch (made resumable by the callback;
Lightning alone restarts the epoch with a new shuffle) must come back exactly. Adam and a StepLR scheduler
carry optimizer and scheduler state.

This file is also the training script: ``python test_lightning_resume_proof.py crash|resume OUT`` (the
killed and the restarted process are real subprocesses); the uninterrupted reference runs in the test
process meanwhile, with the same code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import cairn
import cairn.lightning

BATCHES_PER_EPOCH = 13  # 100 samples in batches of 8: the last batch is short
CHECKPOINT_EVERY = 5
BLOCK_AT = 23  # global step at which the crashing process stops (and is killed): epoch 1 runs steps 13..25
LAST_CHECKPOINT = 20  # the newest checkpoint before that: 7 batches into epoch 1
MAX_EPOCHS = 3
LOSS = "loss"


class ProofModule(L.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(hidden, 1)
        )
        self.block_at: int | None = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.block_at is not None and self.global_step == self.block_at:
            cairn.flush()  # so the points logged after the checkpoint are in the store when the kill comes
            print(f"BLOCKED {self.logger.version}", flush=True)
            time.sleep(600)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log(LOSS, loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 7, gamma=0.7)}


def train(workdir: Path, *, block_at: int | None = None, ckpt_path: str | None = None) -> tuple[ProofModule, str]:
    """One fit from scratch (or from ``ckpt_path``); returns the module and the run id."""
    torch.set_num_threads(1)
    L.seed_everything(7, workers=True, verbose=False)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(100, 6, generator=generator), torch.randn(100, 1, generator=generator))
    model = ProofModule()
    model.block_at = block_at
    cairn_logger = cairn.lightning.CairnLogger()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=MAX_EPOCHS,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(workdir),
        logger=cairn_logger,
        callbacks=[
            cairn.lightning.CairnCheckpointCallback(log_model=False),
            ModelCheckpoint(
                dirpath=workdir / "checkpoints",
                every_n_train_steps=CHECKPOINT_EVERY,
                save_top_k=2,
                monitor="step",
                mode="max",
                save_last=True,
            ),
        ],
    )
    trainer.fit(
        model, DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=50), ckpt_path=ckpt_path
    )
    assert cairn_logger.version is not None
    return model, cairn_logger.version


def main(mode: str, out: str) -> None:
    warnings.filterwarnings("ignore")
    workdir = Path(out).parent
    if mode == "crash":
        train(workdir, block_at=BLOCK_AT)
        raise SystemExit("not killed")
    run_to_resume = sys.stdin.readline().strip()  # started early (imports done) and told which run to resume
    path = cairn.lightning.checkpoint_path(run_to_resume, "last")
    model, run_id = train(workdir, ckpt_path=path)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    print(f"RUN {run_id} {json.dumps(path)}", flush=True)


# -- the test -------------------------------------------------------------------------------------------------


def _launch(mode: str, workdir: Path, store: Path) -> subprocess.Popen[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "PL_"))}
    env.update(CAIRN_TRACKING_URI=str(store), PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        [sys.executable, __file__, mode, str(workdir / "weights.pt")],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _line_starting(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
    proc.wait(timeout=60)
    stderr = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"the script ended without printing {prefix!r}; stderr:\n{stderr[-3000:]}")


def _uploaded_steps(store: Path, run_id: str) -> set[int]:
    cairn.set_tracking_uri(store)
    artifacts = cairn.Client().artifact_store(run_id)
    index_path = f"{cairn.lightning._integration.CHECKPOINTS_DIR}/{cairn.lightning._integration.INDEX_FILE}"
    if not artifacts.exists(index_path):
        return set()
    with artifacts.open(index_path) as handle:
        return {entry["global_step"] for entry in json.load(handle)["checkpoints"]}


def _curve(store: Path, run_id: str, key: str, **kwargs: Any) -> list[tuple[int, float]]:
    cairn.set_tracking_uri(store)
    return [(m.step, m.value) for m in cairn.Client().get_metric_history(run_id, key, **kwargs)]


def test_sigkill_mid_epoch_then_resume_is_bit_identical_to_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: Any
) -> None:
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    store = tmp_path / "store"
    crashing = _launch("crash", tmp_path / "crash", store)
    resumed = _launch("resume", tmp_path / "crash", store)  # imports while the first one trains; waits for a run id
    try:
        # the uninterrupted reference, in this process, while the other one trains and blocks
        reference_store = tmp_path / "reference"
        cairn.set_tracking_uri(reference_store)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference, reference_run = train(tmp_path / "reference-work")
        reference_loss = _curve(reference_store, reference_run, LOSS)
        reference_val = _curve(reference_store, reference_run, "val_loss")

        run_id = _line_starting(crashing, "BLOCKED").split()[1]
        deadline = time.monotonic() + 60
        while LAST_CHECKPOINT not in _uploaded_steps(store, run_id):  # uploads are asynchronous
            assert time.monotonic() < deadline, "the checkpoint of step 20 never reached the run"
            time.sleep(0.1)
        os.kill(crashing.pid, signal.SIGKILL)
        crashing.wait(timeout=30)
    except BaseException:
        resumed.kill()
        raise
    finally:
        if crashing.poll() is None:
            crashing.kill()
        torch.set_num_threads(threads)
    assert crashing.returncode == -signal.SIGKILL
    assert cairn.get_run(run_id).info.status.value == "RUNNING"  # nobody ended it
    dead_steps = [s for s, _ in _curve(store, run_id, LOSS)]
    assert dead_steps == list(range(BLOCK_AT))  # logged up to step 22, beyond the checkpoint (log step 19)

    stdout, stderr = resumed.communicate(f"{run_id}\n", timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    resumed_run, restored_from = stdout.strip().splitlines()[-1].split(maxsplit=2)[1:]
    # "last" is the newest upload: last.ckpt of step 20, or the top-k file of the same step if the kill came first
    assert torch.load(json.loads(restored_from), weights_only=True)["global_step"] == LAST_CHECKPOINT

    weights = torch.load(tmp_path / "crash" / "weights.pt", weights_only=True)
    expected = reference.state_dict()
    assert set(weights) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), f"{name} differs from the uninterrupted run"

    assert resumed_run == run_id  # one run from start to end
    loss = _curve(store, run_id, LOSS)
    assert loss == reference_loss  # every step once, in order, with the uninterrupted run's exact values
    assert [s for s, _ in loss] == list(range(MAX_EPOCHS * BATCHES_PER_EPOCH))
    assert _curve(store, run_id, "val_loss") == reference_val
    # the dead process's points after the checkpoint (log steps 20..22) are kept, flagged superseded
    everything = sorted(s for s, _ in _curve(store, run_id, LOSS, include_superseded=True))
    assert everything == sorted([*range(MAX_EPOCHS * BATCHES_PER_EPOCH), *range(LAST_CHECKPOINT, BLOCK_AT)])
    assert cairn.get_run(run_id).info.status.value == "FINISHED"


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
