"""The hostile-directory suite: every flavor's model directory, altered as an attacker would, must not run code.

A model directory is hostile input (see SECURITY.md). Each case below takes a real model saved by one
flavor, alters it the way an attacker who controls the files would (recomputing the recorded hashes,
which an attacker can always do), and loads it both natively and through pyfunc without the pickle
opt-in. The load must fail with a :class:`~cairn.errors.CairnError` that names the problem, and the
payload's marker file must not exist afterwards.

A new flavor joins by adding a builder to ``BUILDERS``; ``test_every_flavor_is_covered`` fails until it does.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import cairn.lightning
import cairn.onnx
import cairn.pyfunc
import cairn.pytorch
import cairn.sklearn
import cairn.transformers
from cairn import safety
from cairn.errors import CairnError
from cairn.flavors import registry
from cairn.models import Model
from cairn.models.hashes import FILES_MANIFEST, MANIFEST_SHA256_KEY, write_files_manifest
from cairn.models.loading import load_model as load_native
from cairn.models.model import MLMODEL_FILE_NAME
from tests.safety.payloads import Marker

X = np.random.RandomState(0).randn(8, 4).astype("float32")


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class EchoModel(cairn.pyfunc.PythonModel):
    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        return model_input


def _sklearn(path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    cairn.sklearn.save_model(LogisticRegression().fit(X, (X[:, 0] > 0).astype(int)), path, input_example=X[:2])


def _pytorch(path: Path) -> None:
    torch.manual_seed(0)
    cairn.pytorch.save_model(TinyNet(), path, input_example=torch.from_numpy(X[:2]))


def _lightning(path: Path) -> None:
    from tests.autolog.test_lightning import TinyModule

    torch.manual_seed(0)
    cairn.lightning.save_model(TinyModule(), path)


def _transformers(path: Path) -> None:
    from transformers import BertForSequenceClassification

    from tests.flavors.test_transformers import make_tokenizer, tiny_bert_config

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=2))
    cairn.transformers.save_model(
        {"model": model, "tokenizer": tokenizer}, path, task="text-classification", input_example=["i love this movie"]
    )


def _onnx(path: Path) -> None:
    torch.manual_seed(0)
    cairn.onnx.save_model(TinyNet(), path, input_example=torch.from_numpy(X[:2]))


def _pyfunc(path: Path) -> None:
    cairn.pyfunc.save_model(path, python_model=EchoModel(), input_example=X[:2])


#: flavor (as named in cairn.flavors.registry.NATIVE_FLAVOR_MODULES) -> builder of a small real model.
BUILDERS: dict[str, Callable[[Path], None]] = {
    "sklearn": _sklearn,
    "pytorch": _pytorch,
    "lightning": _lightning,
    "transformers": _transformers,
    "onnx": _onnx,
    "python_function": _pyfunc,
}


def test_every_flavor_is_covered() -> None:
    assert set(BUILDERS) == set(registry.NATIVE_FLAVOR_MODULES)


@pytest.fixture(autouse=True)
def _no_env_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(safety.ALLOW_PICKLE_ENV, raising=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("saved")
    built: dict[str, Path] = {}
    for name, build in BUILDERS.items():
        build(root / name)
        built[name] = root / name
    yield built


@pytest.fixture(params=sorted(BUILDERS))
def model_dir(request: pytest.FixtureRequest, saved: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh copy of one flavor's model at ``tmp_path/model`` (``tmp_path/outside`` is for the attacker)."""
    copy = tmp_path / "model"
    shutil.copytree(saved[request.param], copy)
    (tmp_path / "outside").mkdir()
    return copy


def _mlmodel(model_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((model_dir / MLMODEL_FILE_NAME).read_text())


def _write_mlmodel(model_dir: Path, content: dict[str, Any]) -> None:
    (model_dir / MLMODEL_FILE_NAME).write_text(yaml.safe_dump(content, sort_keys=False))


def reseal(model_dir: Path) -> None:
    """Recompute the file manifest and its sha256 in MLmodel, as an attacker who edits files would."""
    content = _mlmodel(model_dir)
    (model_dir / FILES_MANIFEST).unlink(missing_ok=True)
    content.setdefault("metadata", {})[MANIFEST_SHA256_KEY] = write_files_manifest(model_dir)
    _write_mlmodel(model_dir, content)


def _flavor(model_dir: Path) -> str:
    flavors = _mlmodel(model_dir)["flavors"]
    native = [name for name in flavors if name != "python_function"]
    return native[0] if native else "python_function"


def assert_refused(model_dir: Path, marker: Path | None = None) -> None:
    """Both load paths fail with a CairnError, and nothing was executed."""
    for load in (cairn.pyfunc.load_model, load_native):
        with pytest.raises(CairnError):
            load(model_dir)
        if marker is not None:
            assert not marker.exists(), f"{load.__module__}.{load.__name__} ran the attacker's code"


def _data_files(model_dir: Path) -> list[Path]:
    """The files a loader reads for the model itself (not MLmodel, the manifest, env or example files)."""
    ignored = {MLMODEL_FILE_NAME, FILES_MANIFEST, "conda.yaml", "python_env.yaml", "requirements.txt"}
    return [
        path
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.name not in ignored and "input_example" not in path.name
    ]


def _path_fields(conf: Any, model_dir: Path, trail: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(key path, value) of every string in a flavor's configuration that names a file or directory of the model."""
    if isinstance(conf, dict):
        for key, value in conf.items():
            yield from _path_fields(value, model_dir, (*trail, key))
    elif isinstance(conf, list):
        for index, value in enumerate(conf):
            yield from _path_fields(value, model_dir, (*trail, index))
    elif isinstance(conf, str) and conf and conf not in (".", "./") and (model_dir / conf).exists():
        yield trail, conf


def _set(content: dict[str, Any], trail: tuple[Any, ...], value: Any) -> None:
    node: Any = content
    for key in trail[:-1]:
        node = node[key]
    node[trail[-1]] = value


# -- the cases ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["os", "builtins", "subprocess", "cairn.safety", "tests.safety.test_safety", ""])
def test_a_loader_module_off_the_allow_list_is_refused(model_dir: Path, loader: str) -> None:
    content = _mlmodel(model_dir)
    content["flavors"]["python_function"]["loader_module"] = loader
    _write_mlmodel(model_dir, content)
    with pytest.raises(CairnError, match="loader_module"):
        cairn.pyfunc.load_model(model_dir)


def test_every_data_file_replaced_by_a_pickle_runs_nothing(model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "outside" / "pwned.marker"
    for path in _data_files(model_dir):
        path.write_bytes(pickle.dumps(Marker(marker)))
    reseal(model_dir)
    assert_refused(model_dir, marker)


def test_pointing_the_loader_at_the_cloudpickle_flavor_needs_the_opt_in(model_dir: Path, tmp_path: Path) -> None:
    """Flavor confusion: a safe-format model relabelled as a custom Python model whose 'pickle' is the attacker's."""
    marker = tmp_path / "outside" / "pwned.marker"
    (model_dir / "python_model.pkl").write_bytes(pickle.dumps(Marker(marker)))
    content = _mlmodel(model_dir)
    conf = content["flavors"]["python_function"]
    conf.pop("data", None)
    conf.update(loader_module="cairn.flavors.pyfunc", python_model="python_model.pkl")
    _write_mlmodel(model_dir, content)
    reseal(model_dir)
    with pytest.raises(CairnError, match="allow_pickle"):
        cairn.pyfunc.load_model(model_dir)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_paths_in_mlmodel_cannot_leave_the_directory(model_dir: Path, tmp_path: Path, where: str) -> None:
    """Every path field is moved outside the model (the file with it): a loader that followed it would load."""
    content = _mlmodel(model_dir)
    fields = [
        (("flavors", flavor, *trail), value)
        for flavor, conf in content["flavors"].items()
        for trail, value in _path_fields(conf, model_dir)
    ]
    assert fields, "every flavor records at least one path to its data"
    outside = tmp_path / "outside"
    for trail, value in fields:
        source, target = model_dir / value, outside / value
        if source.exists() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, target) if source.is_dir() else shutil.copy2(source, target)
        _set(content, trail, f"../outside/{value}" if where == "relative" else str(target))
    for _trail, value in fields:  # remove the originals only once every field was copied out
        source = model_dir / value
        if source.is_dir():
            shutil.rmtree(source, ignore_errors=True)
        elif source.exists():
            source.unlink()
    _write_mlmodel(model_dir, content)
    reseal(model_dir)
    assert_refused(model_dir)


def test_a_file_linked_to_outside_the_directory_is_refused(model_dir: Path, tmp_path: Path) -> None:
    """The largest data file becomes a symlink to an identical copy outside: same bytes, same hash, but outside."""
    largest = max(_data_files(model_dir), key=lambda path: path.stat().st_size)
    copy = tmp_path / "outside" / largest.name
    shutil.copy2(largest, copy)
    largest.unlink()
    largest.symlink_to(copy)
    reseal(model_dir)
    assert_refused(model_dir)


def test_mlmodel_yaml_cannot_construct_python_objects(model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "outside" / "pwned.marker"
    text = (model_dir / MLMODEL_FILE_NAME).read_text()
    payload = f"!!python/object/apply:os.system ['touch {marker}']"
    (model_dir / MLMODEL_FILE_NAME).write_text(text + f"evil: {payload}\n")
    assert_refused(model_dir, marker)


def test_shipped_code_is_not_put_on_the_import_path_without_the_opt_in(model_dir: Path, tmp_path: Path) -> None:
    """A ``code/`` directory shadowing packages the loaders import later, declared for every flavor."""
    marker = tmp_path / "outside" / "pwned.marker"
    shadowed = ["skops", "safetensors", "onnxruntime", "tokenizers", "cloudpickle", "sitecustomize", "cairn_payload"]
    for name in shadowed:
        package = model_dir / "code" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    content = _mlmodel(model_dir)
    for conf in content["flavors"].values():
        conf["code"] = "code"
    _write_mlmodel(model_dir, content)
    reseal(model_dir)
    before = list(sys.path)
    try:
        assert_refused(model_dir, marker)
        assert not any("code" in Path(entry).parts and str(model_dir) in entry for entry in sys.path)
    finally:
        sys.path[:] = before


def test_a_malformed_signature_is_a_clear_error(model_dir: Path) -> None:
    content = _mlmodel(model_dir)
    content["signature"] = {"inputs": "[{not json", "outputs": None, "params": None}
    _write_mlmodel(model_dir, content)
    with pytest.raises(CairnError, match="signature"):
        cairn.pyfunc.load_model(model_dir).predict(X[:2])


def test_a_tampered_file_is_refused_when_the_hash_is_not_recomputed(model_dir: Path) -> None:
    target = max(_data_files(model_dir), key=lambda path: path.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    assert_refused(model_dir)


def test_the_untouched_copy_loads(model_dir: Path) -> None:
    """The control: what the cases above alter loads when it is left alone (the pyfunc model with the opt-in)."""
    opt_in = _flavor(model_dir) == "python_function"
    loaded = cairn.pyfunc.load_model(model_dir, allow_pickle=opt_in)
    assert Model.load(model_dir).flavors
    assert loaded.metadata.flavors
    assert json.loads(json.dumps(loaded.metadata.to_dict(), default=str))
