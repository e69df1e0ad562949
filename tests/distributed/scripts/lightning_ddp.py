"""A Lightning DDP job under ``torchrun`` (``Trainer(accelerator="cpu", devices=2, strategy="ddp")``, gloo)
with ``CairnLogger`` + ``CairnCheckpointCallback`` and a ``ModelCheckpoint`` every 3 steps.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 lightning_ddp.py ROLE OUT_DIR``
with ``CAIRN_TRACKING_URI`` set (and ``CAIRN_RUN_ID`` for ``resume``). ROLE:

* ``reference``: train uninterrupted (2 epochs of 8 steps);
* ``crash``: train; after step ``KILL_AT`` (the checkpoint of step 9, one batch into epoch 1, is written)
  rank 0 writes ``OUT_DIR/run_id.txt``, every rank prints ``KILL_ME`` and waits for the test's SIGKILL;
* ``resume``: ``trainer.fit(ckpt_path=cairn.lightning.checkpoint_path(run_id, "last"))`` on every rank (also
  launched with one process: a resume on another world size).

Dropout draws from each rank's own RNG (seeded per rank), so a rank whose RNG is not restored changes the
averaged gradients. Rank 0 writes ``OUT_DIR/final.safetensors``; every rank writes ``OUT_DIR/rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

KILL_AT = 11


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Crash(pl.Callback):
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == KILL_AT:
            if trainer.is_global_zero:
                import cairn

                cairn.flush()  # the points queued so far are written (a SIGKILL loses what is still queued)
                Path(self.out_dir, "run_id.txt").write_text(trainer.logger.run_id)  # type: ignore[union-attr]
            trainer.strategy.barrier()
            print("KILL_ME", flush=True)
            time.sleep(600)


def main(role: str, out: str) -> None:
    torch.set_num_threads(1)
    import cairn

    rank = int(os.environ["RANK"])
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = torch.Generator().manual_seed(7)
    dataset = TensorDataset(torch.randn(64, 8, generator=data), torch.randn(64, 1, generator=data))
    loader = DataLoader(dataset, batch_size=4, shuffle=True)  # Lightning puts a DistributedSampler in
    torch.manual_seed(0)
    model = Net()
    torch.manual_seed(1000 + rank)  # per-rank dropout masks
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=out_dir / "ckpt", every_n_train_steps=3, save_top_k=-1, save_last=True
    )
    callbacks: list[pl.Callback] = [checkpoints, cairn.lightning.CairnCheckpointCallback(log_model=False)]
    if role == "crash":
        callbacks.append(Crash(out_dir))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=int(os.environ["WORLD_SIZE"]),  # 2; 1 for a resume on another world size
        strategy="ddp",
        max_epochs=2,
        logger=cairn.lightning.CairnLogger(),
        callbacks=callbacks,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    ckpt_path = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if role == "resume":
            ckpt_path = cairn.lightning.checkpoint_path(
                os.environ["CAIRN_RUN_ID"], "last", dst_path=out_dir / f"dl{rank}"
            )
        trainer.fit(model, loader, ckpt_path=ckpt_path)
    report = {
        "step": trainer.global_step,
        "ckpt": None if ckpt_path is None else Path(ckpt_path).name,
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught if "cairn" in str(w.message)],
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    if trainer.is_global_zero:
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(out_dir / "final.safetensors"))
        Path(out_dir, "run_id.txt").write_text(trainer.logger.run_id)  # type: ignore[union-attr]


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1], sys.argv[2])
