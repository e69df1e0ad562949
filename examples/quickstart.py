"""Quickstart: fit a tiny linear model by gradient descent and track it with cairn.

Run it with ``./scripts/demo.sh`` (or ``python examples/quickstart.py`` inside the venv). Everything
lands in ./cairn-runs: the SQLite database cairn.db and the artifacts/ directory.
"""

from __future__ import annotations

import numpy as np

import cairn


def main() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(256, 3))
    true_weights = np.array([1.5, -2.0, 0.5])
    targets = features @ true_weights + rng.normal(scale=0.1, size=256)

    cairn.set_experiment("quickstart")
    params = {"lr": 0.1, "epochs": 50, "batch_size": 32}
    with cairn.start_run(run_name="linear-gd") as run:
        cairn.log_params(params)
        weights = np.zeros(3)
        step = 0
        for epoch in range(params["epochs"]):
            order = rng.permutation(len(features))
            for start in range(0, len(order), params["batch_size"]):
                batch = order[start : start + params["batch_size"]]
                error = features[batch] @ weights - targets[batch]
                weights -= params["lr"] * features[batch].T @ error / len(batch)
                cairn.log_metric("train_loss", float(np.mean(error**2)), step=step)
                step += 1
            cairn.log_metric("epoch_mse", float(np.mean((features @ weights - targets) ** 2)), step=epoch)
        cairn.log_dict({"weights": weights.round(4).tolist(), "true": true_weights.tolist()}, "weights.json")
        cairn.log_text(f"final weights: {weights.round(3)}\n", "summary.txt")

    stored = cairn.get_run(run.info.run_id)
    print(f"run {stored.info.run_id} ({stored.info.run_name}) {stored.info.status.value}")
    print(f"  final epoch_mse = {stored.data.metrics['epoch_mse']:.5f}, {step} train_loss points")
    print(f"  tracking store:  {cairn.get_tracking_uri()}")
    print(f"  artifacts:       {stored.info.artifact_uri}")
    print("look at it with:")
    print("  .venv/bin/cairn runs list -e quickstart")
    print(f"  .venv/bin/cairn runs describe {stored.info.run_id}")


if __name__ == "__main__":
    main()
