"""Serving a model with cairn: train a tiny scikit-learn classifier, save it with its signature, serve it with
``cairn models serve`` and score it over HTTP with MLflow's scoring protocol (a ``dataframe_split`` request).

Run it::

    python examples/serving.py

The server runs as a subprocess on a free port of 127.0.0.1 and is stopped at the end. By hand, the same is::

    cairn models serve -m ./model --port 5000            # or -m models:/churn@champion, runs:/<id>/model
    curl -X POST http://127.0.0.1:5000/invocations -H 'Content-Type: application/json' \\
         -d '{"dataframe_split": {"columns": ["tenure", "charges"], "data": [[2, 80.5]]}}'
    cairn models predict -m ./model -i customers.csv -o predictions.csv

Small by default; ``--small`` / ``CAIRN_EXAMPLE_SMALL=1`` are accepted and change nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

import cairn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``cairn models serve -m model_dir`` on a free port; returns once ``/ping`` answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cairn", "models", "serve", "-m", str(model_dir), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "MLFLOW_"))}
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90
    while True:
        if server.poll() is not None:
            raise SystemExit(f"FAILED: the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=1) as answer:
                if answer.status == 200:
                    return server, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"FAILED: the server did not answer within 90 s:\n{log.read_text()}")
        time.sleep(0.1)


def post(url: str, payload: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:  # 4xx: the body is MLflow's {"error_code": ..., "message": ...}
        return error.code, json.loads(error.read())


def main() -> None:
    parser = argparse.ArgumentParser(description="serve a scikit-learn model with cairn models serve")
    parser.add_argument("--small", action="store_true", help="accepted; the example is small already")
    parser.parse_args()

    rng = np.random.default_rng(0)
    customers = pd.DataFrame({"tenure": rng.integers(1, 72, 300).astype(float), "charges": rng.uniform(20, 120, 300)})
    churned = (customers.charges / customers.tenure + rng.normal(0, 3, 300) > 3).astype(int)
    model = LogisticRegression(max_iter=1000).fit(customers, churned)

    with tempfile.TemporaryDirectory(prefix="cairn-serving-") as tmp:
        model_dir = Path(tmp) / "model"
        cairn.sklearn.save_model(model, model_dir, input_example=customers.head(3))  # signature from the example
        server, url = start_server(model_dir, Path(tmp) / "server.log")
        try:
            print(f"cairn models serve -m {model_dir} at {url}")
            request = {"dataframe_split": {"columns": ["tenure", "charges"], "data": [[2, 80.5], [60, 25.0]]}}
            status, answer = post(url, request)
            print(f"POST /invocations {json.dumps(request)}\n  -> {status} {json.dumps(answer)}")
            status, answer = post(url, {**request, "params": {"method": "predict_proba"}})
            print(f"  with params {{'method': 'predict_proba'}} -> {status} {json.dumps(answer)}")
            status, answer = post(url, {"dataframe_records": [{"tenure": 2}]})
            print(f"  a request without 'charges' -> {status} {answer['message']}")
        finally:
            server.terminate()
            server.wait(timeout=30)
            print("server stopped")


if __name__ == "__main__":
    main()
