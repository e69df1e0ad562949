"""Lightning's ``ModelParallelStrategy`` (FSDP2 ``fully_shard`` in ``configure_model``) under ``torchrun`` on CPU
(gloo) with ``CairnLogger`` + ``CairnCheckpointCallback``: its ``ModelCheckpoint`` writes distributed checkpoints
(directories of DCP shards), which cairn does not upload, and says so.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 lightning_model_parallel.py run OUT_DIR``
with ``CAIRN_TRACKING_URI`` set. Every rank writes ``OUT_DIR/rank<R>.json`` (cairn's warnings, the run id).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(self.net, mesh=self.device_mesh["data_parallel"])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main(out: str) -> None:
    torch.set_num_threads(1)
    import cairn

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = torch.Generator().manual_seed(7)
    dataset = TensorDataset(torch.randn(32, 8, generator=data), torch.randn(32, 1, generator=data))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(),
        max_epochs=1,
        logger=cairn.lightning.CairnLogger(),
        callbacks=[
            pl.callbacks.ModelCheckpoint(dirpath=out_dir / "ckpt", every_n_train_steps=2, save_last=True),
            cairn.lightning.CairnCheckpointCallback(log_model=False),
        ],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Net(), DataLoader(dataset, batch_size=4))
    report = {
        "warnings": [str(w.message) for w in caught if "cairn" in str(w.message)],
        "run_id": trainer.logger.run_id,  # type: ignore[union-attr]
    }
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[2])
