"""cairn.safety: the single pickle choke point and the loader allow-list."""

from __future__ import annotations

import gzip
import lzma
import pickle
import threading
from pathlib import Path

import cloudpickle
import pytest

from cairn import safety
from cairn.errors import CairnError, InvalidArgument, UnsafeModel
from cairn.flavors import registry
from tests.safety.payloads import Marker


@pytest.fixture(autouse=True)
def _no_env_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(safety.ALLOW_PICKLE_ENV, raising=False)


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    """(pickle file, marker path) for an attacker's pickle."""
    marker = tmp_path / "pwned.marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Marker(marker)))
    return path, marker


def test_pickle_allowed_needs_an_explicit_true_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert safety.pickle_allowed() is False
    assert safety.pickle_allowed(None) is False and safety.pickle_allowed(False) is False
    assert safety.pickle_allowed(True) is True
    for value in ("1", "true", "TRUE", "yes", "on"):
        monkeypatch.setenv("CAIRN_ALLOW_PICKLE", value)
        assert safety.pickle_allowed() is True, value
    for value in ("0", "false", "", "no", "2"):
        monkeypatch.setenv("CAIRN_ALLOW_PICKLE", value)
        assert safety.pickle_allowed() is False, value


def test_the_message_says_what_and_how_to_opt_in() -> None:
    with pytest.raises(UnsafeModel) as refused:
        safety.require_pickle_opt_in("the scikit-learn model model.pkl", False)
    message = str(refused.value)
    assert "Loading the scikit-learn model model.pkl requires unpickling it" in message
    assert "allow_pickle=True" in message and "CAIRN_ALLOW_PICKLE=1" in message
    assert isinstance(refused.value, CairnError) and isinstance(refused.value, PermissionError)
    safety.require_pickle_opt_in("anything", True)  # no error


def test_an_attackers_pickle_is_not_executed_without_the_opt_in(payload: tuple[Path, Path]) -> None:
    path, marker = payload
    with pytest.raises(UnsafeModel, match=r"evil\.pkl"):
        safety.load_pickle(path)
    with pytest.raises(UnsafeModel, match="the custom model"):
        safety.load_cloudpickle(path, False, what="the custom model")
    assert not marker.exists()


def test_the_opt_in_lets_the_pickle_load(payload: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path, marker = payload
    safety.load_pickle(path, allow_pickle=True)
    assert marker.read_text() == "pwned"  # the payload is real; only the opt-in stood between it and running
    marker.unlink()
    monkeypatch.setenv("CAIRN_ALLOW_PICKLE", "1")
    safety.load_cloudpickle(path)
    assert marker.exists()


def test_load_cloudpickle_round_trips_closures_and_compressed_files(tmp_path: Path) -> None:
    offset = 7

    def add(x: int) -> int:
        return x + offset

    plain = tmp_path / "f.pkl"
    plain.write_bytes(cloudpickle.dumps(add))
    assert safety.load_cloudpickle(plain, True)(1) == 8
    with gzip.open(tmp_path / "f.pkl.gz", "wb") as out:
        out.write(cloudpickle.dumps(add))
    assert safety.load_cloudpickle(tmp_path / "f.pkl.gz", True, compression="gzip")(2) == 9
    with lzma.open(tmp_path / "f.pkl.xz", "wb") as out:
        out.write(cloudpickle.dumps(add))
    assert safety.load_cloudpickle(tmp_path / "f.pkl.xz", True, compression="lzma")(3) == 10
    with pytest.raises(InvalidArgument, match="unknown pickle compression 'zip'"):
        safety.load_cloudpickle(plain, True, compression="zip")


def test_pickle_opt_in_scope_is_local_and_temporary(payload: tuple[Path, Path]) -> None:
    path, marker = payload
    seen_in_thread: list[bool] = []
    with safety.pickle_opt_in(True):
        assert safety.pickle_allowed() is True
        with safety.pickle_opt_in(False):  # an inner False does not withdraw the outer opt-in
            assert safety.pickle_allowed() is True
        thread = threading.Thread(target=lambda: seen_in_thread.append(safety.pickle_allowed()))
        thread.start()
        thread.join()
    assert seen_in_thread == [False]  # another thread is not opted in by this one
    assert safety.pickle_allowed() is False
    with safety.pickle_opt_in(None), pytest.raises(UnsafeModel):
        safety.load_pickle(path)
    assert not marker.exists()


def test_the_scope_ends_even_when_loading_fails() -> None:
    with pytest.raises(RuntimeError), safety.pickle_opt_in(True):
        raise RuntimeError("loader crashed")
    assert safety.pickle_allowed() is False


@pytest.mark.parametrize(
    ("loader_module", "target"),
    [
        ("cairn.flavors.sklearn", "cairn.flavors.sklearn"),
        ("cairn.flavors.pytorch", "cairn.flavors.pytorch"),
        ("cairn.flavors.lightning", "cairn.flavors.lightning"),
        ("cairn.flavors.transformers", "cairn.flavors.transformers"),
        ("cairn.flavors.onnx", "cairn.flavors.onnx"),
        ("cairn.flavors.pyfunc", "cairn.flavors.pyfunc"),
        ("mlflow.sklearn", "cairn.flavors.sklearn"),
        ("mlflow.pytorch", "cairn.flavors.pytorch"),
        ("mlflow.pyfunc.model", "cairn.flavors.pyfunc"),
    ],
)
def test_allowed_loader_modules_map_to_cairn_modules(loader_module: str, target: str) -> None:
    assert registry.resolve_loader_module(loader_module) == target


@pytest.mark.parametrize(
    "loader_module",
    [
        "os",
        "subprocess",
        "mlflow.pyfunc",
        "cairn.flavors",
        "cairn.flavors.registry",
        "cairn.flavors.sklearn ",
        42,
        None,
    ],
)
def test_anything_else_is_refused_naming_it_and_the_allowed_ones(loader_module: object) -> None:
    with pytest.raises(UnsafeModel) as refused:
        registry.import_loader_module(loader_module)
    message = str(refused.value)
    assert repr(loader_module) in message
    assert all(name in message for name in registry.ALLOWED_LOADER_MODULES)


def test_the_test_hook_is_scoped() -> None:
    with registry._allowed_for_tests("tests.safety.test_safety"):
        assert registry.import_loader_module("tests.safety.test_safety").__name__ == "tests.safety.test_safety"
        assert "tests.safety.test_safety" in registry.allowed_loader_modules()
    with pytest.raises(UnsafeModel):
        registry.resolve_loader_module("tests.safety.test_safety")


def test_cairn_never_imports_mlflow() -> None:
    """The allow-list maps MLflow's names to cairn modules; nothing in cairn imports mlflow itself."""
    import subprocess
    import sys

    code = (
        "import sys, cairn, cairn.pyfunc, cairn.models, cairn.safety, cairn.flavors.registry, cairn.models.packaging\n"
        "print('mlflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
