"""Lightning with cairn: ``cairn.lightning.autolog()`` (``cairn.pytorch.autolog()`` does it too) makes every
``Trainer`` log its hyperparameters, ``self.log`` metrics, checkpoints and the final model into one run.

Run it::

    python examples/lightning_autolog.py                  # into ./cairn-runs (or $CAIRN_TRACKING_URI)
    python examples/lightning_autolog.py --store /tmp/runs

``--small`` (or ``CAIRN_EXAMPLE_SMALL=1``) trains one epoch instead of three. After a crash, the same
``fit`` resumes exactly in the same run with
``trainer.fit(model, loader, ckpt_path=cairn.lightning.checkpoint_path(run_id, "last"))``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import cairn


class Regressor(L.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


def main() -> None:
    parser = argparse.ArgumentParser(description="a Lightning Trainer logged by cairn")
    parser.add_argument("--store", help="tracking store (default: $CAIRN_TRACKING_URI, else ./cairn-runs)")
    parser.add_argument("--small", action="store_true", help="one epoch (also CAIRN_EXAMPLE_SMALL=1)")
    args = parser.parse_args()
    small = args.small or os.environ.get("CAIRN_EXAMPLE_SMALL", "") not in ("", "0")
    if args.store:
        cairn.set_tracking_uri(args.store)

    L.seed_everything(0, verbose=False)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(256, 1)
    train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[192:], y[192:]), batch_size=64)

    cairn.set_experiment("lightning")
    # autolog logs the trained model too, with a few rows of the first forward call's input as its example:
    # Regressor lives in __main__ (which another process lacks), so it is stored as a torch.export program
    # traced from that example, with a signature, and loads anywhere without pickle
    cairn.lightning.autolog(checkpoint_every_n_epochs=1)
    with tempfile.TemporaryDirectory() as root:  # Lightning's own files; the run keeps what matters
        trainer = L.Trainer(
            max_epochs=1 if small else 3,
            default_root_dir=root,
            accelerator="cpu",
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=2,
        )
        with cairn.start_run(run_name="regressor") as run:
            model = Regressor()
            trainer.fit(model, train, val)

    client = cairn.Client()
    stored = client.get_run(run.info.run_id)
    history = client.get_metric_history(run.info.run_id, "train_loss")
    print(f"run {run.info.run_id} {stored.info.status.value}")
    print(f"  params: {dict(sorted(stored.data.params.items()))}")
    val_loss = stored.data.metrics["val_loss"]
    print(f"  train_loss: {len(history)} points, last {history[-1].value:.4f}; val_loss {val_loss:.4f}")
    print(f"  artifacts: {sorted(a.path for a in client.list_artifacts(run.info.run_id))}")
    model_uri = f"runs:/{run.info.run_id}/model"
    loaded = cairn.pyfunc.load_model(model_uri)  # no allow_pickle needed
    signature = loaded.metadata.signature
    print(f"  model {model_uri}, signature inputs {signature.inputs.to_json() if signature else None}")
    predictions = loaded.predict(x[:2].numpy())
    truth = y[:2].squeeze(1).double().round(decimals=2).tolist()
    print(f"  pyfunc predict on 2 rows: {predictions.squeeze(1).astype('float64').round(2).tolist()} (truth {truth})")


if __name__ == "__main__":
    main()
