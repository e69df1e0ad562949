"""A deterministic Lightning ``Trainer.fit`` for the kill-and-resume harness (tests/checkpoint/kill_resume_harness.py).

Usage: python train_lightning_resume.py ROLE OUT_DIR (ROLE: reference, crash or resume; see the harness).

The model has dropout and the training DataLoader shuffles, so both the RNG states (stored by
CairnCheckpointCallback) and the loader's position in its shuffled epoch (made resumable by the callback;
Lightning alone restarts the epoch with a new shuffle) must come back exactly. Adam and a StepLR scheduler
carry optimizer and scheduler state. The ``crash`` role stops at global step BLOCK_AT, mid-epoch 1, after
the checkpoint of step LAST_CHECKPOINT (the harness waits for its upload before killing). The ``resume``
role restarts with ``trainer.fit(ckpt_path=cairn.lightning.checkpoint_path(run_id, "last"))`` and reports
the file it restored from in ``report.json``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

import cairn
import cairn.lightning

BATCHES_PER_EPOCH = 13  # 100 samples in batches of 8: the last batch is short
CHECKPOINT_EVERY = 5
BLOCK_AT = 23  # global step at which the crashing process stops (and is killed): epoch 1 runs steps 13..25
LAST_CHECKPOINT = 20  # the newest checkpoint before that: 7 batches into epoch 1
MAX_EPOCHS = 3


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
            print(f"KILL_ME {self.logger.version}", flush=True)
            time.sleep(600)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
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


def main(role: str, out: Path) -> None:
    warnings.filterwarnings("ignore")
    report: dict[str, Any] = {}
    if role == "crash":
        train(out, block_at=BLOCK_AT)
        raise SystemExit("not killed")
    if role == "resume":
        run_to_resume = sys.stdin.readline().strip()
        path = cairn.lightning.checkpoint_path(run_to_resume, "last")
        report["restored_from"] = path
        model, run_id = train(out, ckpt_path=path)
    else:
        model, run_id = train(out)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))
    (out / "run_id.txt").write_text(run_id)
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
