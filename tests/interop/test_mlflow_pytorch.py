"""PyTorch models cross between cairn and the real ``mlflow`` package, both directions.

Needs the ``interop`` extra (``pip install 'cairn[interop]'``); without mlflow these tests skip,
except under ``CI=true``, where they fail. cairn itself never imports mlflow: here only the tests do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[pytorch]')")
pytest.importorskip("safetensors", reason="safetensors is not installed (pip install 'cairn[pytorch]')")

from torch import nn  # noqa: E402

import cairn  # noqa: E402
import cairn.pyfunc  # noqa: E402
from cairn.errors import UnsafeModel  # noqa: E402
from cairn.flavors import pytorch as flavor  # noqa: E402
from cairn.models.loading import resolve_local_model_dir  # noqa: E402


class Net(nn.Module):
    def __init__(self, n_in: int = 5, n_out: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def mlflow() -> ModuleType:
    try:
        import mlflow
        import mlflow.exceptions
        import mlflow.pyfunc
        import mlflow.pytorch
    except ImportError as exc:
        reason = f"mlflow is not installed (pip install 'cairn[interop]'): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the interop tests to run: {reason}")
        pytest.skip(reason)
    return mlflow


@pytest.fixture(autouse=True)
def _mlflow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep MLflow's state in this test's directory; both pickle gates stay closed."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    monkeypatch.delenv("CAIRN_ALLOW_PICKLE", raising=False)
    yield


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def _x(rows: int = 6) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((rows, 5)).astype(np.float32)


def _predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


# -- cairn writes, MLflow reads -------------------------------------------------------------------------


@pytest.mark.parametrize("export", [False, True], ids=["class", "export"])
def test_cairn_logged_model_loads_in_mlflow_pyfunc(mlflow: ModuleType, net: Net, export: bool) -> None:
    x = _x()
    with cairn.start_run():
        info = flavor.log_model(net, "model", input_example=x[:2], export=export or None)
    local_dir = resolve_local_model_dir(info.model_uri)
    assert (local_dir / "data" / "model.safetensors").is_file()

    loaded = mlflow.pyfunc.load_model(str(local_dir))
    assert loaded.metadata.flavors["python_function"]["loader_module"] == "cairn.flavors.pytorch"
    assert isinstance(loaded._model_impl, flavor.TorchPyfunc)  # MLflow called our _load_pyfunc
    np.testing.assert_array_equal(loaded.predict(x), _predict(net, x))
    # MLflow enforces the signature cairn wrote, including the declared device param.
    np.testing.assert_array_equal(loaded.predict(x, params={"device": "cpu"}), _predict(net, x))
    assert [p.name for p in loaded.metadata.signature.params.params] == ["device"]
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"[Ss]hape"):
        loaded.predict(x[:, :4])


def test_cairn_skeleton_in_mlflow_still_needs_cairn_opt_in(
    mlflow: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = Net(n_in=5, n_out=3).eval()  # defaults do not rebuild it and there is no example: a skeleton
    with pytest.warns(UserWarning, match="skeleton"):
        flavor.save_model(local, tmp_path / "m")
    with pytest.raises(UnsafeModel, match="CAIRN_ALLOW_PICKLE=1"):
        mlflow.pyfunc.load_model(str(tmp_path / "m"))
    monkeypatch.setenv("CAIRN_ALLOW_PICKLE", "1")
    x = _x()
    np.testing.assert_array_equal(mlflow.pyfunc.load_model(str(tmp_path / "m")).predict(x), _predict(local, x))


# -- MLflow writes, cairn reads -------------------------------------------------------------------------


def test_mlflow_pickled_model_loads_in_cairn_only_with_opt_in(mlflow: ModuleType, net: Net, tmp_path: Path) -> None:
    x = _x()
    path = tmp_path / "mlflow-pickle"
    mlflow.pytorch.save_model(net, str(path), serialization_format="pickle", pip_requirements=["torch"])
    assert (path / "data" / "model.pth").is_file()

    with pytest.raises(UnsafeModel, match="allow_pickle=True") as refused:
        flavor.load_model(path)
    assert "model.pth" in str(refused.value)
    with pytest.raises(UnsafeModel):
        cairn.pyfunc.load_model(path)

    native = flavor.load_model(path, allow_pickle=True)
    assert isinstance(native, nn.Module) and not native.training
    np.testing.assert_array_equal(_predict(native, x), _predict(net, x))
    loaded = cairn.pyfunc.load_model(path, allow_pickle=True)
    assert loaded.loader_module == "mlflow.pytorch"
    np.testing.assert_array_equal(loaded.predict(x), _predict(net, x))


def test_mlflow_pt2_model_loads_in_cairn_without_pickle(mlflow: ModuleType, net: Net, tmp_path: Path) -> None:
    x = _x()
    path = tmp_path / "mlflow-pt2"
    mlflow.pytorch.save_model(net, str(path), input_example=x[:3], pip_requirements=["torch"])  # pt2 by default
    assert (path / "data" / "model.pt2").is_file()

    native = flavor.load_model(path)  # the archive passes cairn's check: raw tensors, plain graph
    np.testing.assert_array_equal(_predict(native, x), _predict(net, x))
    np.testing.assert_array_equal(cairn.pyfunc.load_model(path).predict(x), _predict(net, x))


def test_mlflow_state_dict_needs_opt_in_and_cairn_state_dict_is_plain_safetensors(
    mlflow: ModuleType, net: Net, tmp_path: Path
) -> None:
    import safetensors.torch

    mlflow.pytorch.save_state_dict(net.state_dict(), str(tmp_path / "mlflow-sd"))
    with pytest.raises(UnsafeModel, match=r"state_dict\.pth"):
        flavor.load_state_dict(tmp_path / "mlflow-sd")
    loaded = flavor.load_state_dict(tmp_path / "mlflow-sd", allow_pickle=True)
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())

    flavor.save_state_dict(net.state_dict(), tmp_path / "cairn-sd")
    flat = safetensors.torch.load_file(tmp_path / "cairn-sd" / "state_dict.safetensors")  # readable by anyone
    assert set(flat) == set(net.state_dict())
    assert all(torch.equal(flat[k], v) for k, v in net.state_dict().items())
