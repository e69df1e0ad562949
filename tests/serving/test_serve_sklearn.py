"""``cairn models serve`` on a real sklearn model in a server subprocess: request shapes, errors, MLflow's client."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest

import cairn
from tests.serving.conftest import COLUMNS, ServeProcess, training_frame

JSON = {"Content-Type": "application/json"}


def _post(server: ServeProcess, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server.url}/invocations", content=content, headers=headers or JSON, timeout=30)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return training_frame(7)[0].round(4)


@pytest.fixture(scope="module")
def expected(sklearn_model_dir: Path, rows: pd.DataFrame) -> list[int]:
    return cairn.pyfunc.load_model(sklearn_model_dir).predict(rows).tolist()


def test_health_ping_version(sklearn_server: ServeProcess) -> None:
    for path in ("/ping", "/health"):
        answer = httpx.get(f"{sklearn_server.url}{path}")
        assert answer.status_code == 200
    version = httpx.get(f"{sklearn_server.url}/version")
    assert version.status_code == 200 and version.text == cairn.__version__
    missing = httpx.get(f"{sklearn_server.url}/nope")
    assert missing.status_code == 404 and missing.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert httpx.get(f"{sklearn_server.url}/invocations").status_code == 405


def test_every_json_format_gives_the_same_predictions(
    sklearn_server: ServeProcess, rows: pd.DataFrame, expected: list[int]
) -> None:
    split = rows.to_dict(orient="split")
    del split["index"]
    records = rows.to_dict(orient="records")
    bodies = {
        "dataframe_split": {"dataframe_split": split},
        "dataframe_split with index": {"dataframe_split": rows.to_dict(orient="split")},
        "dataframe_records": {"dataframe_records": records},
        "instances (records)": {"instances": records},
        "inputs (columns)": {"inputs": {c: rows[c].tolist() for c in COLUMNS}},
        "inputs (rows)": {"inputs": rows.to_numpy().tolist()},
    }
    for name, body in bodies.items():
        answer = _post(sklearn_server, body)
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json() == {"predictions": expected}, name
    assert expected.count(0) and expected.count(1)  # both classes: the comparison means something


def test_integer_json_values_for_double_columns(sklearn_server: ServeProcess, sklearn_model_dir: Path) -> None:
    data = [[1, 2, 3, 4], [-3, 0, 1, 1]]
    answer = _post(sklearn_server, {"dataframe_split": {"columns": COLUMNS, "data": data}})
    assert answer.status_code == 200, answer.text
    local = cairn.pyfunc.load_model(sklearn_model_dir).predict(pd.DataFrame(data, columns=COLUMNS, dtype=float))
    assert answer.json()["predictions"] == local.tolist()


def test_csv_body(sklearn_server: ServeProcess, rows: pd.DataFrame, expected: list[int]) -> None:
    answer = _post(sklearn_server, rows.to_csv(index=False), {"Content-Type": "text/csv; charset=utf-8"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": expected}


def test_parquet_body(sklearn_server: ServeProcess, rows: pd.DataFrame, expected: list[int]) -> None:
    buffer = io.BytesIO()
    rows.to_parquet(buffer)
    answer = _post(sklearn_server, buffer.getvalue(), {"Content-Type": "application/vnd.apache.parquet"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": expected}


def test_params_choose_predict_proba(sklearn_server: ServeProcess, sklearn_model_dir: Path, rows: pd.DataFrame) -> None:
    body = {"dataframe_split": rows.to_dict(orient="split"), "params": {"method": "predict_proba"}}
    answer = _post(sklearn_server, body)
    assert answer.status_code == 200, answer.text
    probabilities = np.array(answer.json()["predictions"])
    assert probabilities.shape == (len(rows), 2)
    local = cairn.pyfunc.load_model(sklearn_model_dir).predict(rows, params={"method": "predict_proba"})
    np.testing.assert_allclose(probabilities, local, rtol=1e-12)
    bad = _post(sklearn_server, {**body, "params": {"method": "fit"}})
    assert bad.status_code == 400 and "method" in bad.json()["message"]


def test_missing_column_is_named(sklearn_server: ServeProcess) -> None:
    answer = _post(sklearn_server, {"dataframe_records": [{"a": 1.0, "b": 2.0, "c": 3.0}]})
    assert answer.status_code == 400
    error = answer.json()
    assert error["error_code"] == "BAD_REQUEST"
    assert "missing required column" in error["message"] and "'d'" in error["message"]


def test_wrong_dtype_is_named(sklearn_server: ServeProcess) -> None:
    answer = _post(sklearn_server, {"dataframe_split": {"columns": COLUMNS, "data": [[1.0, 2.0, "x", 4.0]]}})
    assert answer.status_code == 400
    message = answer.json()["message"]
    assert "column 'c'" in message and "double" in message


def test_wrong_width_is_named(sklearn_server: ServeProcess) -> None:
    answer = _post(sklearn_server, {"inputs": [[1.0, 2.0, 3.0]]})
    assert answer.status_code == 400
    assert "4 column(s)" in answer.json()["message"] and "(1, 3)" in answer.json()["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"dataframe_split": {"columns": ["a"], "data": [[1.0]]', "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "got a list"),
        (b'{"data": [[1, 2]]}', "exactly one of"),
        (b'{"inputs": [[1]], "instances": [[1]]}', "2 of them"),
        (b'{"dataframe_split": [[1, 2]]}', "'dataframe_split' must be an object"),
        (b'{"inputs": [[1.0]], "params": [1]}', "'params' must be a JSON object"),
    ],
)
def test_malformed_requests_are_400_naming_the_problem(sklearn_server: ServeProcess, body: bytes, needle: str) -> None:
    answer = _post(sklearn_server, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == "BAD_REQUEST"
    assert needle in answer.json()["message"]


def test_unsupported_content_type_is_415(sklearn_server: ServeProcess) -> None:
    for content_type in ("text/plain", "application/json; charset=latin-1", ""):
        answer = _post(sklearn_server, b'{"inputs": [[1, 2, 3, 4]]}', {"Content-Type": content_type})
        assert answer.status_code == 415, content_type
        assert answer.json()["error_code"] == "BAD_REQUEST"


def test_oversized_body_is_413(sklearn_server: ServeProcess) -> None:
    big = json.dumps({"inputs": [[1.0, 2.0, 3.0, 4.0]] * 20000}).encode()  # ~400 KB, the limit is 200,000 bytes
    answer = _post(sklearn_server, big)
    assert answer.status_code == 413
    assert "200000 bytes" in answer.json()["message"]

    def chunks() -> Any:  # no Content-Length: chunked, refused while streaming
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = httpx.post(f"{sklearn_server.url}/invocations", content=chunks(), headers=JSON, timeout=30)
    assert streamed.status_code == 413
    assert httpx.get(f"{sklearn_server.url}/ping").status_code == 200  # still serving


def test_batch_above_the_inline_size(sklearn_server: ServeProcess, sklearn_model_dir: Path) -> None:
    frame = training_frame(1500)[0]  # ~110 KB: predicted in a worker thread
    answer = _post(sklearn_server, {"dataframe_split": frame.to_dict(orient="split")})
    assert answer.status_code == 200
    assert answer.json()["predictions"] == cairn.pyfunc.load_model(sklearn_model_dir).predict(frame).tolist()


def test_mlflow_scoring_client(sklearn_server: ServeProcess, rows: pd.DataFrame, expected: list[int]) -> None:
    """MLflow's own scoring-server client (what `mlflow models predict`-style tooling uses) talks to cairn's server."""
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    port = int(sklearn_server.url.rsplit(":", 1)[1])
    client = ScoringServerClient("127.0.0.1", port)
    client.wait_server_ready(timeout=10)
    assert client.get_version() == cairn.__version__
    assert list(client.invoke(rows).get_predictions(predictions_format="ndarray")) == expected
    proba = client.invoke(rows, params={"method": "predict_proba"}).get_predictions(predictions_format="ndarray")
    assert np.asarray(proba).shape == (len(rows), 2)


def test_two_workers_serve(sklearn_server: ServeProcess) -> None:
    """The fixture runs --workers 2: two uvicorn worker processes, both alive, and a loopback bind (no warning)."""
    children = psutil.Process(sklearn_server.process.pid).children(recursive=True)
    workers = [p for p in children if any("spawn_main" in part for part in p.cmdline())]
    assert len(workers) == 2, [p.cmdline() for p in children]
    with httpx.Client(timeout=30) as client:
        body = {"dataframe_split": {"columns": COLUMNS, "data": [[2.0, 2.0, 0.0, 0.0], [-2.0, -2.0, 0.0, 0.0]]}}
        for _ in range(20):
            assert client.post(f"{sklearn_server.url}/invocations", json=body).json() == {"predictions": [1, 0]}
    assert all(p.is_running() for p in workers)
    assert "warning" not in sklearn_server.log.read_text()
