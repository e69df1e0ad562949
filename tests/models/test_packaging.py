"""save_model_dir / log_model with a fake flavor: this test module is the flavor's loader module.

The module is put on the loader allow-list only inside the ``fake_flavor`` fixture, which is what
a real flavor gets by being listed in cairn.flavors.registry.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

import cairn
from cairn.errors import InvalidArgument, ModelIntegrityError, ResourceAlreadyExists, UnsafeModel, UnsafePath
from cairn.flavors import registry
from cairn.models import FORMAT_VERSION, ColSpec, Model, ModelSignature, Schema, loading, read_requirements
from cairn.models.hashes import FILES_MANIFEST, MANIFEST_SHA256_KEY
from cairn.models.loading import load_pyfunc, verify_model_files
from cairn.models.packaging import LOGGED_MODELS_TAG, log_model, save_model_dir

FLAVOR = "fakelinear"
LOADER = __name__


class LinearModel:
    """The fake framework's model: a weighted sum of named columns, stored as JSON."""

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = weights

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return sum(frame[name].to_numpy(dtype=float) * w for name, w in self.weights.items())


class _Wrapper:
    def __init__(self, model: LinearModel, config: dict[str, Any] | None) -> None:
        self.model = model
        self.config = config or {}

    def predict(self, data: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        scale = (params or {}).get("scale", 1.0)
        return self.model.predict(data) * scale + self.config.get("offset", 0.0)

    def get_raw_model(self) -> LinearModel:
        return self.model


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> _Wrapper:
    """The fake flavor's pyfunc loader; ``data_path`` is ``<model>/weights`` (the ``data`` key)."""
    return _Wrapper(LinearModel(json.loads((Path(data_path) / "weights.json").read_text())), model_config)


def load_model(model_uri: str, *, allow_pickle: bool = False) -> LinearModel:
    """The fake flavor's native loader."""
    from cairn.models.loading import open_model_dir

    directory, meta = open_model_dir(model_uri)
    subdir = meta.flavors[FLAVOR]["weights_dir"]
    return LinearModel(json.loads((directory / subdir / "weights.json").read_text()))


def save_fake(
    model: LinearModel,
    path: str | Path,
    *,
    signature: ModelSignature | None = None,
    input_example: Any = None,
    metadata: dict[str, Any] | None = None,
    code_paths: list[str] | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
) -> Model:
    """The fake flavor's save_model, written the way a real flavor uses save_model_dir."""

    def write_data(directory: Path) -> None:
        (directory / "weights").mkdir()
        (directory / "weights" / "weights.json").write_text(json.dumps(model.weights))

    return save_model_dir(
        path,
        flavor_name=FLAVOR,
        flavor_conf={"weights_dir": "weights", "fake_version": "1.0"},
        loader_module=LOADER,
        write_data=write_data,
        predict_fn=model.predict,
        signature=signature,
        input_example=input_example,
        metadata=metadata,
        pip_packages=["pyyaml"],
        code_paths=code_paths,
        pyfunc_conf={"data": "weights"},
        run_id=run_id,
        artifact_path=artifact_path,
    )


@pytest.fixture
def fake_flavor() -> Iterator[None]:
    with registry._allowed_for_tests(LOADER):
        yield


@pytest.fixture
def model() -> LinearModel:
    return LinearModel({"a": 2.0, "b": -1.0})


@pytest.fixture
def example() -> pd.DataFrame:
    return pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.5, 0.5, 1.0]})


# ------------------------------------------------------------------------------------------ saving


def test_save_writes_a_complete_model_directory(tmp_path: Path, model: LinearModel, example: pd.DataFrame) -> None:
    path = tmp_path / "m"
    saved = save_fake(model, path, input_example=example, metadata={"team": "risk"})

    content = yaml.safe_load((path / "MLmodel").read_text())
    pyfunc = content["flavors"]["python_function"]
    assert pyfunc["loader_module"] == LOADER
    assert pyfunc["data"] == "weights"
    assert pyfunc["env"] == {"conda": "conda.yaml", "virtualenv": "python_env.yaml"}
    assert pyfunc["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert content["flavors"][FLAVOR] == {"weights_dir": "weights", "fake_version": "1.0"}
    assert content["metadata"]["team"] == "risk"
    assert content["metadata"]["cairn_format"] == FORMAT_VERSION
    assert len(content["metadata"][MANIFEST_SHA256_KEY]) == 64
    assert content["model_uuid"] == saved.model_uuid and len(saved.model_uuid or "") == 32
    assert content["utc_time_created"] == saved.utc_time_created
    assert content["model_size_bytes"] > 0
    assert content["saved_input_example_info"]["type"] == "dataframe"
    # signature inferred from the example and one prediction
    assert saved.signature is not None and saved.signature.inputs is not None and saved.signature.outputs is not None
    assert saved.signature.inputs.input_names() == ["a", "b"]
    assert json.loads(content["signature"]["outputs"])[0]["type"] == "tensor"

    requirements = read_requirements(path)
    assert requirements[0].startswith("cairn==")
    assert any(line.lower().startswith("pyyaml==") for line in requirements)

    manifest = json.loads((path / FILES_MANIFEST).read_text())
    assert "MLmodel" not in manifest["files"] and FILES_MANIFEST not in manifest["files"]
    assert {"weights/weights.json", "input_example.json", "requirements.txt", "python_env.yaml"} <= set(
        manifest["files"]
    )
    assert Model.load(path).to_dict() == saved.to_dict()


def test_save_refuses_an_existing_non_empty_directory(tmp_path: Path, model: LinearModel) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "old.txt").write_text("x")
    with pytest.raises(ResourceAlreadyExists, match="not empty"):
        save_fake(model, tmp_path / "taken")
    assert (tmp_path / "taken" / "old.txt").read_text() == "x"  # untouched
    (tmp_path / "empty").mkdir()
    save_fake(model, tmp_path / "empty")
    assert (tmp_path / "empty" / "MLmodel").is_file()


def test_a_failed_save_leaves_no_directory(tmp_path: Path) -> None:
    def write_data(directory: Path) -> None:
        (directory / "partial.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_model_dir(tmp_path / "m", flavor_name=FLAVOR, flavor_conf={}, loader_module=LOADER, write_data=write_data)
    assert not (tmp_path / "m").exists()


def test_signature_false_records_none_and_an_explicit_one_is_kept(
    tmp_path: Path, model: LinearModel, example: pd.DataFrame
) -> None:
    none = save_fake(model, tmp_path / "none", input_example=example, signature=False)  # type: ignore[arg-type]
    assert none.signature is None and "signature" not in yaml.safe_load((tmp_path / "none" / "MLmodel").read_text())
    assert (tmp_path / "none" / "input_example.json").is_file()

    explicit = ModelSignature(Schema([ColSpec("double", "a"), ColSpec("double", "b")]))
    kept = save_fake(model, tmp_path / "explicit", input_example=example, signature=explicit)
    assert Model.load(tmp_path / "explicit").signature == explicit == kept.signature


def test_a_failing_prediction_leaves_an_inputs_only_signature(tmp_path: Path, example: pd.DataFrame) -> None:
    def broken(_: Any) -> Any:
        raise ValueError("model not fitted")

    with pytest.warns(UserWarning, match="model not fitted"):
        saved = save_model_dir(
            tmp_path / "m",
            flavor_name=FLAVOR,
            flavor_conf={},
            loader_module=LOADER,
            predict_fn=broken,
            input_example=example,
        )
    assert saved.signature is not None and saved.signature.inputs is not None and saved.signature.outputs is None


def test_code_paths_are_copied_and_recorded(tmp_path: Path, model: LinearModel) -> None:
    pkg = tmp_path / "src" / "fakepkg_helpers"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    single = tmp_path / "src" / "one_helper.py"
    single.write_text("Y = 2\n")
    save_fake(model, tmp_path / "m", code_paths=[str(pkg), str(single)])
    assert (tmp_path / "m" / "code" / "fakepkg_helpers" / "__init__.py").read_text() == "X = 1\n"
    assert (tmp_path / "m" / "code" / "one_helper.py").is_file()
    assert not (tmp_path / "m" / "code" / "fakepkg_helpers" / "__pycache__").exists()
    meta = Model.load(tmp_path / "m")
    assert meta.flavors["python_function"]["code"] == "code" and meta.flavors[FLAVOR]["code"] == "code"
    with pytest.raises(InvalidArgument, match="does not exist"):
        save_fake(model, tmp_path / "m2", code_paths=[str(tmp_path / "missing.py")])


# ----------------------------------------------------------------------------------------- loading


def test_round_trip_through_pyfunc_and_native_loading(
    tmp_path: Path, model: LinearModel, example: pd.DataFrame, fake_flavor: None
) -> None:
    save_fake(model, tmp_path / "m", input_example=example)
    loaded = load_pyfunc(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict(example), model.predict(example))
    assert loaded.loader_module == LOADER
    assert loaded.metadata.flavors[FLAVOR]["fake_version"] == "1.0"
    assert isinstance(loaded.get_raw_model(), LinearModel)
    # model_config reaches the flavor's loader
    shifted = load_pyfunc(tmp_path / "m", model_config={"offset": 10.0})
    np.testing.assert_allclose(shifted.predict(example), model.predict(example) + 10.0)
    # native loading picks the flavor that the python_function loader belongs to
    native = loading.load_model(tmp_path / "m")
    assert isinstance(native, LinearModel) and native.weights == model.weights
    assert cairn.models.load_model(f"file://{tmp_path / 'm'}").weights == model.weights


def test_a_tampered_file_is_refused_naming_it(
    tmp_path: Path, model: LinearModel, example: pd.DataFrame, fake_flavor: None
) -> None:
    save_fake(model, tmp_path / "m", input_example=example)
    verify_model_files(tmp_path / "m")  # intact
    (tmp_path / "m" / "weights" / "weights.json").write_text(json.dumps({"a": 1000.0, "b": 0.0}))
    with pytest.raises(ModelIntegrityError, match=r"'weights/weights\.json'.*sha256"):
        load_pyfunc(tmp_path / "m")
    with pytest.raises(ModelIntegrityError, match=r"weights/weights\.json"):
        loading.load_model(tmp_path / "m")


def test_a_missing_file_or_manifest_is_refused(tmp_path: Path, model: LinearModel, fake_flavor: None) -> None:
    save_fake(model, tmp_path / "a")
    (tmp_path / "a" / "requirements.txt").unlink()
    with pytest.raises(ModelIntegrityError, match=r"'requirements\.txt' is missing"):
        load_pyfunc(tmp_path / "a")

    save_fake(model, tmp_path / "b")
    (tmp_path / "b" / FILES_MANIFEST).unlink()
    with pytest.raises(ModelIntegrityError, match=f"{FILES_MANIFEST}, but that file is missing"):
        load_pyfunc(tmp_path / "b")

    save_fake(model, tmp_path / "c")
    manifest = json.loads((tmp_path / "c" / FILES_MANIFEST).read_text())
    del manifest["files"]["weights/weights.json"]  # an attacker hiding a changed file from the check
    (tmp_path / "c" / FILES_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="does not match the sha256 recorded in MLmodel"):
        load_pyfunc(tmp_path / "c")


def test_files_added_after_saving_are_ignored(tmp_path: Path, model: LinearModel, fake_flavor: None) -> None:
    save_fake(model, tmp_path / "m")
    (tmp_path / "m" / "__pycache__").mkdir()
    (tmp_path / "m" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (tmp_path / "m" / "notes.txt").write_text("added later")
    assert isinstance(loading.load_model(tmp_path / "m"), LinearModel)


def test_a_model_without_recorded_hashes_is_accepted(tmp_path: Path, fake_flavor: None) -> None:
    """What MLflow (or any other tool) writes has no manifest; it loads unchecked."""
    path = tmp_path / "foreign"
    (path / "weights").mkdir(parents=True)
    (path / "weights" / "weights.json").write_text(json.dumps({"a": 3.0}))
    Model.from_dict(
        {
            "flavors": {
                "python_function": {"loader_module": LOADER, "data": "weights"},
                FLAVOR: {"weights_dir": "weights"},
            }
        }
    ).save(path)
    frame = pd.DataFrame({"a": [1.0, 2.0]})
    np.testing.assert_allclose(load_pyfunc(path).predict(frame), [3.0, 6.0])


def test_a_loader_module_outside_the_allow_list_is_refused_without_importing_it(
    tmp_path: Path, model: LinearModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported.marker"
    module_dir = tmp_path / "evil_site"
    module_dir.mkdir()
    (module_dir / "evil_loader_c41rn.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef _load_pyfunc(path, config=None):\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(module_dir))
    save_fake(model, tmp_path / "m")
    # hand-edit MLmodel, as an attacker would (the MLmodel itself is not hashed; the allow-list guards it)
    text = (tmp_path / "m" / "MLmodel").read_text()
    text = text.replace(f"loader_module: {LOADER}", "loader_module: evil_loader_c41rn")
    (tmp_path / "m" / "MLmodel").write_text(text)

    with pytest.raises(UnsafeModel, match="evil_loader_c41rn") as refused:
        load_pyfunc(tmp_path / "m")
    message = str(refused.value)
    assert "cairn.flavors.sklearn" in message and "mlflow.sklearn" in message  # the allowed ones are listed
    with pytest.raises(UnsafeModel, match="evil_loader_c41rn"):
        loading.load_model(tmp_path / "m")
    assert not marker.exists() and "evil_loader_c41rn" not in sys.modules

    # without the test hook, the fake flavor itself is refused too
    (tmp_path / "m" / "MLmodel").write_text(text.replace("evil_loader_c41rn", LOADER))
    with pytest.raises(UnsafeModel, match=LOADER):
        load_pyfunc(tmp_path / "m")


def test_a_data_path_leaving_the_model_directory_is_refused(
    tmp_path: Path, model: LinearModel, fake_flavor: None
) -> None:
    save_fake(model, tmp_path / "m")
    text = (tmp_path / "m" / "MLmodel").read_text().replace("data: weights", "data: ../../etc")
    (tmp_path / "m" / "MLmodel").write_text(text)
    with pytest.raises(UnsafePath, match=r"\.\./\.\./etc"):
        load_pyfunc(tmp_path / "m")


# ----------------------------------------------------------------------------------------- logging


def test_log_model_uploads_into_the_active_run_and_records_it(
    model: LinearModel, example: pd.DataFrame, fake_flavor: None
) -> None:
    with cairn.start_run() as run:
        info = log_model(partial(save_fake, model), "model", input_example=example)
    run_id = run.info.run_id
    assert info.model_uri == f"runs:/{run_id}/model"
    assert info.run_id == run_id and info.artifact_path == "model"
    assert info.signature is not None and set(info.flavors) == {"python_function", FLAVOR}
    assert info.registered_model_version is None

    client = cairn.Client()
    names = {f.path for f in client.list_artifacts(run_id, "model")}
    assert {"model/MLmodel", "model/weights", f"model/{FILES_MANIFEST}"} <= names
    stored = Model.load(client.download_artifacts(run_id, "model"))
    assert stored.run_id == run_id and stored.artifact_path == "model" and stored.model_uuid == info.model_uuid

    history = json.loads(client.get_run(run_id).data.tags[LOGGED_MODELS_TAG])
    assert history == [
        {
            "run_id": run_id,
            "artifact_path": "model",
            "utc_time_created": info.utc_time_created,
            "model_uuid": info.model_uuid,
            "flavors": info.flavors,
        }
    ]

    loaded = load_pyfunc(info.model_uri)
    np.testing.assert_allclose(loaded.predict(example), model.predict(example))
    assert loaded.run_id == run_id


def test_log_model_without_an_active_run_starts_one_and_leaves_it_active(model: LinearModel, fake_flavor: None) -> None:
    info = log_model(partial(save_fake, model), "m")
    active = cairn.active_run()
    assert active is not None and active.info.run_id == info.run_id
    cairn.end_run()


def test_log_model_into_an_explicit_run_and_twice_under_one_name(
    model: LinearModel, example: pd.DataFrame, fake_flavor: None
) -> None:
    client = cairn.Client()
    run = client.create_run("0")
    first = log_model(partial(save_fake, model), "model", run_id=run.info.run_id, input_example=example)
    assert cairn.active_run() is None
    second = log_model(partial(save_fake, LinearModel({"a": 1.0})), "model", run_id=run.info.run_id)
    assert second.model_uuid != first.model_uuid
    # the second model replaced the first: its files only, no stale input example left behind
    names = {f.path for f in client.list_artifacts(run.info.run_id, "model")}
    assert "model/input_example.json" not in names
    assert loading.load_model(second.model_uri).weights == {"a": 1.0}
    history = json.loads(client.get_run(run.info.run_id).data.tags[LOGGED_MODELS_TAG])
    assert [h["model_uuid"] for h in history] == [first.model_uuid, second.model_uuid]


def test_log_model_registers_when_asked(model: LinearModel, fake_flavor: None) -> None:
    with cairn.start_run():
        first = log_model(partial(save_fake, model), "model", registered_model_name="linear")
        second = log_model(partial(save_fake, LinearModel({"a": 5.0})), "model2", registered_model_name="linear")
    assert (first.registered_model_version, second.registered_model_version) == (1, 2)
    frame = pd.DataFrame({"a": [1.0], "b": [0.0]})
    np.testing.assert_allclose(load_pyfunc("models:/linear/1").predict(frame), [2.0])
    assert loading.load_model("models:/linear/latest").weights == {"a": 5.0}


def test_log_model_refuses_a_name_that_leaves_the_run(model: LinearModel, fake_flavor: None) -> None:
    with cairn.start_run(), pytest.raises(UnsafePath):
        log_model(partial(save_fake, model), "../escape")
