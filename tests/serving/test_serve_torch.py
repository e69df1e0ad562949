"""``cairn models serve`` on a real PyTorch MLP (float32 tensor signature) in a server subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import cairn
from tests.serving.conftest import ServeProcess


def _post(server: ServeProcess, body: Any, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(
        f"{server.url}/invocations", content=json.dumps(body), headers={"Content-Type": content_type}, timeout=30
    )


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(5, 8)).round(5).astype(np.float32)


@pytest.fixture(scope="module")
def expected(torch_model_dir: Path, batch: np.ndarray) -> np.ndarray:
    return cairn.pyfunc.load_model(torch_model_dir).predict(batch)


def test_inputs_and_instances(torch_server: ServeProcess, batch: np.ndarray, expected: np.ndarray) -> None:
    for key in ("inputs", "instances"):
        answer = _post(torch_server, {key: batch.tolist()})
        assert answer.status_code == 200, answer.text
        got = np.array(answer.json()["predictions"], dtype=np.float32)
        assert got.shape == (5, 2)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_params_device(torch_server: ServeProcess, batch: np.ndarray, expected: np.ndarray) -> None:
    answer = _post(torch_server, {"inputs": batch.tolist(), "params": {"device": "cpu"}})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.array(answer.json()["predictions"]), expected, rtol=1e-6)
    bad = _post(torch_server, {"inputs": batch.tolist(), "params": {"device": "no-such-device"}})
    assert bad.status_code == 400 and "device" in bad.json()["message"]


def test_wrong_shape_is_named(torch_server: ServeProcess) -> None:
    answer = _post(torch_server, {"inputs": [[1.0, 2.0, 3.0]]})
    assert answer.status_code == 400
    message = answer.json()["message"]
    assert "shape (1, 3)" in message and "(-1, 8)" in message
    flat = _post(torch_server, {"inputs": [1.0] * 8})
    assert flat.status_code == 400 and "rank" in flat.json()["message"]


def test_wrong_dtype_is_named(torch_server: ServeProcess) -> None:
    answer = _post(torch_server, {"inputs": [["x"] * 8]})
    assert answer.status_code == 400
    message = answer.json()["message"]
    assert "float32" in message and "str" in message


def test_integer_json_for_a_float_tensor(torch_server: ServeProcess, torch_model_dir: Path) -> None:
    data = [[1, 0, 2, 0, 3, 0, 4, 0]]
    answer = _post(torch_server, {"inputs": data})
    assert answer.status_code == 200, answer.text
    local = cairn.pyfunc.load_model(torch_model_dir).predict(np.array(data, dtype=np.float32))
    np.testing.assert_allclose(np.array(answer.json()["predictions"]), local, rtol=1e-6)


def test_mlflow_scoring_client_with_an_ndarray(
    torch_server: ServeProcess, batch: np.ndarray, expected: np.ndarray
) -> None:
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    client = ScoringServerClient("127.0.0.1", int(torch_server.url.rsplit(":", 1)[1]))
    got = client.invoke(batch).get_predictions(predictions_format="ndarray")
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), expected, rtol=1e-6)
