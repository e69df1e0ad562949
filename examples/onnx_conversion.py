"""ONNX with cairn: convert a PyTorch model and a scikit-learn pipeline to ONNX with ``cairn.onnx.log_model``
(the conversion is checked: both run on the input example and the differences are recorded), load the ONNX
graph back and predict through ``pyfunc`` (onnxruntime underneath).

Run it::

    python examples/onnx_conversion.py                  # into ./cairn-runs (or $CAIRN_TRACKING_URI)
    python examples/onnx_conversion.py --store /tmp/runs

Small by default (a few seconds); ``--small`` / ``CAIRN_EXAMPLE_SMALL=1`` are accepted and change nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

import cairn


def main() -> None:
    parser = argparse.ArgumentParser(description="PyTorch and scikit-learn models converted to ONNX")
    parser.add_argument("--store", help="tracking store (default: $CAIRN_TRACKING_URI, else ./cairn-runs)")
    parser.add_argument("--small", action="store_true", help="accepted; the example is small already")
    args = parser.parse_args()
    if args.store:
        cairn.set_tracking_uri(args.store)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)

    cairn.set_experiment("onnx-conversion")
    with cairn.start_run(run_name="to-onnx") as run:
        torch_info = cairn.onnx.log_model(net, "torch_mlp", input_example=torch.from_numpy(X[:8]))
        sklearn_info = cairn.onnx.log_model(pipeline, "sklearn_pipeline", input_example=X[:20])

    print(f"run {run.info.run_id}")
    for info, reference in (
        (torch_info, net(torch.from_numpy(X[:5])).detach().numpy()),
        (sklearn_info, pipeline.predict_proba(X[:5])),
    ):
        graph = cairn.onnx.load_model(info.model_uri)  # an onnx.ModelProto
        parity = (info.metadata or {}).get("onnx_parity")  # what the conversion check measured
        predictor = cairn.pyfunc.load_model(info.model_uri)
        output = predictor.predict(X[:5])
        values = next(iter(output.values())) if isinstance(output, dict) else output
        values = np.asarray(values)
        if values.ndim == 1:  # a classifier's labels: compare them with the source's
            reference = reference.argmax(axis=1)
        print(f"  {info.model_uri}: {len(graph.graph.node)} ONNX nodes, from {parity['source']}")
        print(f"    checked at logging on {parity['rows']} rows: max |difference| {parity['max_abs_diff']:.1e}")
        print(
            f"    onnxruntime through pyfunc, output {values.shape}, max |difference| to the source model: "
            f"{float(np.max(np.abs(values - reference))):.2e}"
        )
        if not np.allclose(values, reference, rtol=1e-3, atol=1e-5):
            raise SystemExit(f"FAILED: the ONNX model {info.model_uri} does not match its source")


if __name__ == "__main__":
    main()
