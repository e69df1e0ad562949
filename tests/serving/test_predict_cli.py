"""``cairn models predict``: batch scoring of CSV, JSON and Parquet files, registry URIs, the pickle opt-in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cairn
from cairn.cli import main
from tests.serving.conftest import training_frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return training_frame(50)[0]


@pytest.fixture(scope="module")
def expected(sklearn_model_dir: Path, frame: pd.DataFrame) -> list[int]:
    return cairn.pyfunc.load_model(sklearn_model_dir).predict(frame).tolist()


def _predict(*args: str) -> str:
    result = CliRunner().invoke(main, ["models", "predict", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("source", ["csv", "parquet", "split.json", "records.json"])
@pytest.mark.parametrize("target", ["json", "csv", "parquet", "-"])
def test_round_trips(
    sklearn_model_dir: Path, frame: pd.DataFrame, expected: list[int], tmp_path: Path, source: str, target: str
) -> None:
    inp = tmp_path / f"in.{source}"
    if source == "csv":
        frame.to_csv(inp, index=False)
    elif source == "parquet":
        frame.to_parquet(inp)
    elif source == "split.json":
        inp.write_text(json.dumps({"dataframe_split": frame.to_dict(orient="split")}))
    else:
        inp.write_text(json.dumps(frame.to_dict(orient="records")))  # a plain list of records
    out = "-" if target == "-" else str(tmp_path / f"out.{target}")
    output = _predict("-m", str(sklearn_model_dir), "-i", str(inp), "-o", out)
    if target == "-":
        assert json.loads(output) == {"predictions": expected}
    elif target == "json":
        assert json.loads(Path(out).read_text()) == {"predictions": expected}
        assert f"wrote {len(expected)} predictions" in output
    elif target == "csv":
        assert pd.read_csv(out)["predictions"].tolist() == expected
    else:
        assert pd.read_parquet(out)["predictions"].tolist() == expected


def test_params_and_content_type_flag(sklearn_model_dir: Path, frame: pd.DataFrame, tmp_path: Path) -> None:
    inp = tmp_path / "request.txt"  # extension says nothing: --content-type does
    request = {"dataframe_split": frame.to_dict(orient="split"), "params": {"method": "predict_proba"}}
    inp.write_text(json.dumps(request))
    out = tmp_path / "proba.csv"
    _predict("-m", str(sklearn_model_dir), "-i", str(inp), "-o", str(out), "--content-type", "json")
    written = pd.read_csv(out)
    assert list(written.columns) == ["0", "1"]
    local = cairn.pyfunc.load_model(sklearn_model_dir).predict(frame, params={"method": "predict_proba"})
    np.testing.assert_allclose(written.to_numpy(), local, rtol=1e-9)


def test_torch_model_to_csv(torch_model_dir: Path, tmp_path: Path) -> None:
    batch = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)
    inp = tmp_path / "in.json"
    inp.write_text(json.dumps({"inputs": batch.tolist()}))
    out = tmp_path / "out.csv"
    _predict("-m", str(torch_model_dir), "-i", str(inp), "-o", str(out))
    local = cairn.pyfunc.load_model(torch_model_dir).predict(batch)
    np.testing.assert_allclose(pd.read_csv(out).to_numpy(), local, rtol=1e-5)


def test_registered_model_uri(frame: pd.DataFrame, expected: list[int], tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    store = f"sqlite:///{tmp_path}/cairn.db"
    cairn.set_tracking_uri(store)
    X, y = training_frame()
    with cairn.start_run():
        info = cairn.sklearn.log_model(LogisticRegression().fit(X, y), name="model", input_example=X.head(3))
    version = cairn.register_model(info.model_uri, "churn")
    cairn.Client(store).set_registered_model_alias("churn", "champion", version.version)
    inp = tmp_path / "in.csv"
    frame.to_csv(inp, index=False)
    for uri in ("models:/churn/1", "models:/churn@champion", info.model_uri):
        result = CliRunner().invoke(main, ["--store", store, "models", "predict", "-m", uri, "-i", str(inp)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == {"predictions": expected}


def test_errors_are_one_line(sklearn_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "in.txt"
    bad.write_text("a,b\n1,2\n")
    cases = {
        (str(bad),): "cannot tell the input format",
        (str(tmp_path / "missing.csv"),): "no input file",
        (str(bad), "--content-type", "csv"): "missing required column",
        ("-",): "needs --content-type",
    }
    for args, needle in cases.items():
        result = CliRunner().invoke(main, ["models", "predict", "-m", str(sklearn_model_dir), "-i", *args])
        text = " ".join(result.output.split())  # the error line may be wrapped to the terminal width
        assert result.exit_code == 1, (args, text)
        assert text.startswith("error:") and needle in text, (args, text)
    (tmp_path / "in.json").write_text("{not json")
    args = ["models", "predict", "-m", str(sklearn_model_dir), "-i", str(tmp_path / "in.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "is not valid JSON" in " ".join(result.output.split())


def test_allow_pickle(tmp_path: Path) -> None:
    class AddOne(cairn.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return model_input + 1

    path = tmp_path / "custom"
    cairn.pyfunc.save_model(path, python_model=AddOne(), input_example=pd.DataFrame({"x": [1.0]}))
    inp = tmp_path / "in.csv"
    inp.write_text("x\n1.5\n2.5\n")
    refused = CliRunner().invoke(main, ["models", "predict", "-m", str(path), "-i", str(inp)])
    assert refused.exit_code == 1 and "allow_pickle=True" in " ".join(refused.output.split())
    output = _predict("-m", str(path), "-i", str(inp), "--allow-pickle")
    assert json.loads(output) == {"predictions": [{"x": 2.5}, {"x": 3.5}]}
