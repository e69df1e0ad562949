"""Loading through cairn.models.loading: signature enforcement at predict, URI forms, opt-in plumbing.

A recording fake flavor (this module, put on the allow-list by a fixture) shows exactly what the
flavor receives after enforcement.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import cairn
from cairn import safety
from cairn.errors import ArtifactNotFound, InvalidArgument, SchemaMismatch
from cairn.flavors import registry
from cairn.models import ColSpec, Model, ModelSignature, ParamSchema, ParamSpec, Schema, TensorSpec, loading
from cairn.models.packaging import log_model, save_model_dir
from cairn.registry.client import RegistryClient

LOADER = __name__
FLAVOR = "recorder"


class Recorder:
    """The fake flavor's pyfunc object: remembers what predict got and whether pickle was allowed at load."""

    def __init__(self, data_path: str, model_config: dict[str, Any] | None) -> None:
        self.data_path = data_path
        self.model_config = model_config
        self.pickle_allowed_at_load = safety.pickle_allowed()
        self.calls: list[tuple[Any, Any]] = []

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        self.calls.append((data, params))
        return data


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> Recorder:
    return Recorder(data_path, model_config)


def load_model(model_uri: str, *, allow_pickle: bool = False) -> dict[str, Any]:
    directory, _ = loading.open_model_dir(model_uri)
    return {"dir": directory, "allow_pickle": allow_pickle, "in_scope": safety.pickle_allowed()}


def save_recorder(
    path: str | Path,
    *,
    signature: ModelSignature | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
    pyfunc_conf: dict[str, Any] | None = None,
) -> Model:
    return save_model_dir(
        path,
        flavor_name=FLAVOR,
        flavor_conf={"kind": "recorder"},
        loader_module=LOADER,
        write_data=lambda d: (d / "state.json").write_text(json.dumps({"ok": True})),
        signature=signature if signature is not None else False,
        pyfunc_conf=pyfunc_conf,
        run_id=run_id,
        artifact_path=artifact_path,
    )


@pytest.fixture(autouse=True)
def recorder_flavor(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(safety.ALLOW_PICKLE_ENV, raising=False)
    with registry._allowed_for_tests(LOADER):
        yield


COLUMNS = ModelSignature(
    Schema([ColSpec("double", "x"), ColSpec("long", "n"), ColSpec("string", "label", required=False)]),
    params=ParamSchema([ParamSpec("threshold", "double", 0.5), ParamSpec("top_k", "long", 3)]),
)


@pytest.fixture
def columns_model(tmp_path: Path) -> loading.PyFuncModel:
    save_recorder(tmp_path / "m", signature=COLUMNS)
    return loading.load_pyfunc(tmp_path / "m")


def test_predict_applies_safe_conversions_before_the_flavor(columns_model: loading.PyFuncModel) -> None:
    frame = pd.DataFrame({"n": [1, 2], "extra": ["dropped", "too"], "x": [1, 2]})  # ints for a double, wrong order
    columns_model.predict(frame)
    received, params = columns_model._model_impl.calls[-1]
    assert list(received.columns) == ["x", "n"]
    assert received["x"].dtype == np.float64 and received["x"].tolist() == [1.0, 2.0]
    assert params == {"threshold": 0.5, "top_k": 3}  # defaults filled in


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"x": [1.0]}), r"missing required column\(s\) 'n' \(long\)"),
        (pd.DataFrame({"x": [1.5], "n": [2.5]}), r"column 'n': expected long.*got float64"),
        (pd.DataFrame({"x": ["a"], "n": [1]}), r"column 'x': expected double"),
    ],
)
def test_predict_refuses_input_that_does_not_fit(
    columns_model: loading.PyFuncModel, frame: pd.DataFrame, message: str
) -> None:
    with pytest.raises(SchemaMismatch, match=message):
        columns_model.predict(frame)
    assert columns_model._model_impl.calls == []  # the flavor never saw it


def test_predict_checks_params(columns_model: loading.PyFuncModel) -> None:
    frame = pd.DataFrame({"x": [1.0], "n": [1]})
    columns_model.predict(frame, params={"threshold": 0.9})
    assert columns_model._model_impl.calls[-1][1] == {"threshold": 0.9, "top_k": 3}
    with pytest.raises(SchemaMismatch, match="top_k"):
        columns_model.predict(frame, params={"top_k": "many"})
    with pytest.warns(UserWarning, match="not in the model's param schema"):
        columns_model.predict(frame, params={"unknown": 1})


def test_tensor_signature_checks_shape(tmp_path: Path) -> None:
    save_recorder(tmp_path / "t", signature=ModelSignature(Schema([TensorSpec(np.dtype("float32"), (-1, 3))])))
    model = loading.load_pyfunc(tmp_path / "t")
    model.predict(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(SchemaMismatch, match=r"shape"):
        model.predict(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(SchemaMismatch, match="float64"):
        model.predict(np.zeros((2, 3), dtype=np.float64))  # narrowing is unsafe


def test_without_a_signature_data_passes_untouched_and_params_are_dropped(tmp_path: Path) -> None:
    save_recorder(tmp_path / "m")
    model = loading.load_pyfunc(tmp_path / "m")
    data = {"anything": [1, 2, 3]}
    assert model.predict(data) is data
    with pytest.warns(UserWarning, match="declares no params"):
        model.predict(data, params={"k": 1})
    assert model._model_impl.calls[-1] == (data, None)


def test_model_info_properties_and_repr(tmp_path: Path) -> None:
    saved = save_recorder(tmp_path / "m", run_id="a" * 32, artifact_path="model")
    model = loading.load_pyfunc(tmp_path / "m")
    assert model.model_id == saved.model_uuid and model.run_id == "a" * 32
    assert model.metadata.flavors[FLAVOR] == {"kind": "recorder"}
    assert model.model_dir == (tmp_path / "m").absolute()
    assert f"flavor: {LOADER}" in repr(model) and "artifact_path: model" in repr(model)
    with pytest.raises(InvalidArgument, match="not from a custom Python model"):
        model.unwrap_python_model()


def test_the_callers_opt_in_reaches_the_flavor_and_ends_with_the_call(tmp_path: Path) -> None:
    save_recorder(tmp_path / "m")
    assert loading.load_pyfunc(tmp_path / "m")._model_impl.pickle_allowed_at_load is False
    assert loading.load_pyfunc(tmp_path / "m", allow_pickle=True)._model_impl.pickle_allowed_at_load is True
    assert safety.pickle_allowed() is False
    native = loading.load_model(tmp_path / "m", allow_pickle=True)
    assert native["allow_pickle"] is True and native["in_scope"] is True
    assert loading.load_model(tmp_path / "m")["in_scope"] is False


def test_model_config_merges_over_the_saved_config(tmp_path: Path) -> None:
    save_recorder(tmp_path / "m", pyfunc_conf={"config": {"a": 1, "b": 2}})
    assert loading.load_pyfunc(tmp_path / "m")._model_impl.model_config == {"a": 1, "b": 2}
    merged = loading.load_pyfunc(tmp_path / "m", model_config={"b": 3})
    assert merged._model_impl.model_config == {"a": 1, "b": 3}


def test_missing_models_and_flavors_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound, match="does not exist"):
        loading.load_pyfunc(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactNotFound, match="has no MLmodel file"):
        loading.load_pyfunc(tmp_path / "empty")

    only_native = tmp_path / "native"
    only_native.mkdir()
    Model(flavors={"sklearn": {"pickled_model": "model.pkl"}}).save(only_native)
    with pytest.raises(InvalidArgument, match=r"no python_function flavor \(it has \['sklearn'\]\)"):
        loading.load_pyfunc(only_native)
    with pytest.raises(InvalidArgument, match="has no 'pytorch' flavor"):
        loading.load_model(only_native, flavor="pytorch")
    odd = tmp_path / "odd"
    odd.mkdir()
    Model(flavors={"h2o": {}}).save(odd)
    with pytest.raises(InvalidArgument, match="no loader for any flavor"):
        loading.load_model(odd)
    with pytest.raises(InvalidArgument, match="cannot load the 'h2o' flavor natively"):
        loading.load_model(odd, flavor="h2o")


def test_local_paths_and_file_uris_are_used_in_place(tmp_path: Path) -> None:
    save_recorder(tmp_path / "my model")
    assert loading.resolve_local_model_dir(tmp_path / "my model") == (tmp_path / "my model").absolute()
    uri = (tmp_path / "my model").as_uri()  # file:///.../my%20model
    assert loading.resolve_local_model_dir(uri) == (tmp_path / "my model").absolute()
    assert not (tmp_path / "cairn-runs").exists()  # no tracking store was opened for a local load


def test_runs_and_models_uris_on_a_local_store(tmp_path: Path) -> None:
    with cairn.start_run() as run:
        info = log_model(save_recorder, "model", registered_model_name="rec")
    local = loading.resolve_local_model_dir(info.model_uri)
    assert local.is_dir() and (local / "MLmodel").is_file()
    assert loading.load_pyfunc(f"runs:/{run.info.run_id}/model").run_id == run.info.run_id
    RegistryClient().set_registered_model_alias("rec", "champion", "1")
    assert loading.load_pyfunc("models:/rec@champion").metadata.model_uuid == info.model_uuid
    assert loading.load_pyfunc("models:/rec/1").metadata.model_uuid == info.model_uuid
    assert loading.load_pyfunc("models:/rec/latest").metadata.model_uuid == info.model_uuid


def test_a_model_in_an_s3_artifact_store_is_downloaded(
    s3_server: Any, aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CAIRN_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("CAIRN_ARTIFACT_ROOT", f"s3://{s3_server.bucket}/pyfunc-loading-{tmp_path.name}")
    signature = ModelSignature(Schema([ColSpec("double", "x")]))
    with cairn.start_run():
        info = log_model(partial(save_recorder, signature=signature), "model")
    model = loading.load_pyfunc(info.model_uri, dst_path=tmp_path / "download")
    assert model.model_dir is not None and model.model_dir.is_relative_to(tmp_path / "download")
    assert (model.model_dir / "state.json").read_text() == '{"ok": true}'
    received = model.predict(pd.DataFrame({"x": [1, 2]}))
    assert received["x"].dtype == np.float64
    # the sha256 check runs on downloaded copies too
    (model.model_dir / "state.json").write_text("{}")
    with pytest.raises(cairn.errors.ModelIntegrityError, match=r"state\.json"):
        loading.load_pyfunc(model.model_dir)
