"""Fixtures for ``cairn models serve`` / ``predict`` tests: real model directories and real server subprocesses.

``sklearn_model_dir``: a LogisticRegression on columns ``a``-``d`` (double) saved with cairn's sklearn flavor
(skops, signature and a ``method`` param). ``torch_model_dir``: an 8 -> 2 MLP saved with cairn's pytorch flavor
(signature: one float32 tensor of shape (-1, 8), a ``device`` param). ``sklearn_server`` and ``torch_server``
serve them from ``cairn models serve`` subprocesses for the whole module (sklearn with 2 workers and a
200,000-byte body limit, torch with 1 worker).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.server.conftest import free_port, server_env, wait_until_up

COLUMNS = ["a", "b", "c", "d"]


@dataclass(frozen=True)
class ServeProcess:
    """A running ``cairn models serve``: its ``url`` (no trailing slash), ``process`` and ``log`` file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


def training_frame(rows: int = 200) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(rows, 4)), columns=COLUMNS)
    return frame, (frame.a + frame.b > 0).astype("int64")


@pytest.fixture(scope="session")
def sklearn_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.linear_model import LogisticRegression

    import cairn

    frame, target = training_frame()
    path = tmp_path_factory.mktemp("models") / "sklearn"
    cairn.sklearn.save_model(LogisticRegression().fit(frame, target), path, input_example=frame.head(3))
    return path


@pytest.fixture(scope="session")
def torch_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    import cairn

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    path = tmp_path_factory.mktemp("models") / "torch"
    cairn.pytorch.save_model(net, path, input_example=np.zeros((2, 8), dtype=np.float32))
    return path


def serve_command(model_uri: str | Path, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "cairn.cli", "models", "serve", "-m", str(model_uri), "--port", str(port), *args]


@contextmanager
def serving(
    model_uri: str | Path, work: Path, args: Sequence[str] = (), *, timeout: float = 90.0
) -> Iterator[ServeProcess]:
    """Run ``cairn models serve -m model_uri ARGS`` on a free port until the block ends (then stop it)."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = work / f"serve-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            serve_command(model_uri, port, *args), env=server_env(work), cwd=work, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log, timeout=timeout, path="/ping")
        yield ServeProcess(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def sklearn_server(sklearn_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    args = ["--max-body-size", "200000", "--workers", "2"]
    with serving(sklearn_model_dir, tmp_path_factory.mktemp("sklearn-server"), args) as s:
        yield s


@pytest.fixture(scope="module")
def torch_server(torch_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(torch_model_dir, tmp_path_factory.mktemp("torch-server")) as s:
        yield s
