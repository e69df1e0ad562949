"""A team server with cairn: ``cairn server`` in front of a store, and a training script that logs to it over
HTTP with ``cairn.set_tracking_uri("http://...")`` (or ``CAIRN_TRACKING_URI=http://...``): params, metrics, an
artifact and a scikit-learn model (uploaded through the server's artifact proxy), then read back through the server.

Run it::

    python examples/team_server.py                    # the server's store is a temporary directory
    python examples/team_server.py --store /tmp/team  # or that store (a directory or a database URL)

The server runs as a subprocess on a free port of 127.0.0.1 and is stopped at the end. For a real team, run
``cairn --store postgresql://... --artifact-root s3://... server --host 127.0.0.1 --port 5000`` behind a
TLS proxy (see the README). MLflow's own client works against it too: ``MLFLOW_TRACKING_URI=http://...``.
Small by default; ``--small`` / ``CAIRN_EXAMPLE_SMALL=1`` are accepted and change nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from sklearn.linear_model import LinearRegression

import cairn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(store: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cairn", "--store", store, "server", "--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "MLFLOW_"))}
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            raise SystemExit(f"FAILED: the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                if answer.status == 200:
                    return server, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"FAILED: the server did not answer within 60 s:\n{log.read_text()}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description="log to a cairn server over HTTP")
    parser.add_argument("--store", help="the server's store (default: a temporary directory)")
    parser.add_argument("--small", action="store_true", help="accepted; the example is small already")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cairn-team-") as tmp:
        store = args.store or str(Path(tmp) / "store")
        server, url = start_server(store, Path(tmp) / "server.log")
        try:
            print(f"cairn server at {url}, over the store {store}")
            cairn.set_tracking_uri(url)  # what a training machine does (or CAIRN_TRACKING_URI=http://...)
            cairn.set_experiment("team-server")
            with cairn.start_run(run_name="over-http") as run:
                cairn.log_params({"lr": 0.01, "optimizer": "adam"})
                for step in range(20):
                    cairn.log_metric("loss", 1.0 / (step + 1), step=step)
                cairn.log_dict({"classes": ["cat", "dog"]}, "labels.json")
                X = np.arange(20.0).reshape(10, 2)
                model = LinearRegression().fit(X, X @ np.array([1.0, 2.0]))
                info = cairn.sklearn.log_model(model, name="model", input_example=X[:3])

            # read back through the server, as a colleague on another machine would
            client = cairn.Client(url)
            stored = client.get_run(run.info.run_id)
            history = client.get_metric_history(run.info.run_id, "loss")
            print(f"run {run.info.run_id} {stored.info.status.value}, logged over HTTP")
            print(f"  params {stored.data.params}, {len(history)} loss points, last {history[-1].value:.3f}")
            print(f"  artifacts: {sorted(a.path for a in client.list_artifacts(run.info.run_id))}")
            predictions = np.round(cairn.pyfunc.load_model(info.model_uri).predict(np.array([[3.0, 4.0]])), 3)
            print(f"  the model, downloaded through the artifact proxy, predicts {predictions.tolist()} for [[3, 4]]")
        finally:
            server.terminate()
            server.wait(timeout=30)
            print("server stopped")


if __name__ == "__main__":
    main()
