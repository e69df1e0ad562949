"""The PyTorch flavor: safetensors weights, architecture without pickle, ties, pyfunc, runs and state dicts."""

from __future__ import annotations

import _pickle
import hashlib
import json
import pickle
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[pytorch]')")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")

from torch import nn  # noqa: E402

import cairn  # noqa: E402
import cairn.pyfunc  # noqa: E402
from cairn.errors import (  # noqa: E402
    InvalidArgument,
    ModelIntegrityError,
    SchemaMismatch,
    StateMismatch,
    UnsafeModel,
)
from cairn.flavors import _torch_export, _torch_utils  # noqa: E402
from cairn.flavors import pytorch as flavor  # noqa: E402
from cairn.models import Model  # noqa: E402
from cairn.models.hashes import MANIFEST_SHA256_KEY, file_sha256, write_files_manifest  # noqa: E402
from cairn.models.loading import load_model as load_native  # noqa: E402
from cairn.models.loading import resolve_local_model_dir  # noqa: E402

# -- models (module level, so importable as tests.flavors.test_pytorch:<Name>) ---------------------------------


class MLP(nn.Module):
    def __init__(self, n_in: int = 6, hidden: int = 16, n_out: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self, channels: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(channels * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(h.flatten(1))


class TiedLM(nn.Module):
    """Input embedding and output projection share one weight (as in GPT-2)."""

    def __init__(self, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens))


class Buffers(nn.Module):
    """A transposed (non-contiguous) parameter, persistent and non-persistent buffers, a shared submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 4).t())
        self.register_buffer("scale", torch.full((4,), 2.0))
        self.register_buffer("offset", torch.arange(5, dtype=torch.float32), persistent=False)
        self.steps = nn.Parameter(torch.zeros(()), requires_grad=False)
        shared = nn.Linear(5, 5)
        self.first, self.second = shared, shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x * self.scale @ self.w + self.offset)) + self.steps


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.a = nn.Linear(6, 2)
        self.b = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return self.a(h), self.b(h)


class WithExtraState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.vocab: dict[str, Any] = {"tokens": ["a", "b"], "table": torch.zeros(2)}

    def get_extra_state(self) -> Any:
        return self.vocab

    def set_extra_state(self, state: Any) -> None:
        self.vocab = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class CountingMLP(MLP):
    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return super().forward(x)


class ValueInit(nn.Module):
    """A constructor that reads a tensor's value, which cannot run on the meta device."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(n, n)
        self.register_buffer("scale", torch.full((n,), float(torch.ones(2).sum().item())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


class PlainAttribute(nn.Module):
    """A tensor kept as a plain attribute (neither parameter nor buffer): built for real at load."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.offset = torch.arange(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.offset


def make_mlp(n_in: int = 6, n_out: int = 3) -> MLP:
    """A model factory, as ``model_factory="tests.flavors.test_pytorch:make_mlp"`` names it."""
    return MLP(n_in=n_in, hidden=10, n_out=n_out)


def _trained(model: nn.Module, x: torch.Tensor, steps: int = 3) -> nn.Module:
    """A few real optimizer steps so weights and BatchNorm statistics differ from their initial values."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).float().pow(2).mean().backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(autouse=True)
def _no_pickle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAIRN_ALLOW_PICKLE", raising=False)


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make every unpickling entry point raise: the block must load without pickle."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was used on a path that must not unpickle")

    import cloudpickle

    for module, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (_pickle, "load"),
        (_pickle, "loads"),
        (_pickle, "Unpickler"),
        (torch, "load"),
        (torch.serialization, "load"),
        (torch._C, "_pickle_load_obj"),
        (cloudpickle, "load"),
        (cloudpickle, "loads"),
    ]:
        monkeypatch.setattr(module, name, refuse)
    yield


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def _flavor_conf(path: Path) -> dict[str, Any]:
    return dict(Model.load(path).flavors["pytorch"])


def _reseal(model_dir: Path) -> None:
    """What someone who can write the model directory can do: recompute the file hashes after a change."""
    meta = Model.load(model_dir)
    meta.metadata[MANIFEST_SHA256_KEY] = write_files_manifest(model_dir)
    meta.save(model_dir / "MLmodel")


# -- round trips for each architecture kind ------------------------------------------------------------------

MLP_KWARGS = {"n_in": 6, "hidden": 12, "n_out": 3}
MODULE = __name__


@pytest.mark.parametrize(
    ("options", "kind", "allow_pickle"),
    [
        ({"init_kwargs": MLP_KWARGS}, "class", False),
        ({"module_class": f"{MODULE}:MLP", "init_kwargs": MLP_KWARGS}, "class", False),
        ({"module_class": MLP, "init_kwargs": MLP_KWARGS}, "class", False),
        ({"export": True}, "export", False),
        ({"export": False}, "skeleton", True),
    ],
    ids=["class-auto", "class-by-name", "class-object", "export", "skeleton"],
)
def test_mlp_round_trip_each_architecture(
    tmp_path: Path, options: dict[str, Any], kind: str, allow_pickle: bool
) -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 6)
    model = _trained(MLP(**MLP_KWARGS), x)
    with pytest.warns(UserWarning, match="skeleton") if kind == "skeleton" else _no_warning():
        saved = flavor.save_model(model, tmp_path / "m", input_example=x[:3], **options)

    conf = saved.flavors["pytorch"]
    assert conf["architecture"] == kind
    assert (tmp_path / "m" / "data" / "model.safetensors").is_file()
    assert (tmp_path / "m" / "data" / "model.pt2").is_file() == (kind == "export")
    assert (tmp_path / "m" / "data" / "skeleton.pkl").is_file() == (kind == "skeleton")
    if kind == "class":
        assert conf["module_class"] == f"{MODULE}:MLP"
        assert conf["init_kwargs"] == MLP_KWARGS
        assert conf["imports"] == [MODULE]

    loaded = flavor.load_model(tmp_path / "m", allow_pickle=allow_pickle)
    assert torch.equal(_predict(loaded, x), _predict(model, x))
    batch = torch.randn(11, 6)  # another batch size: the export's batch dimension is dynamic
    assert torch.equal(_predict(loaded, batch), _predict(model, batch))
    pyfunc = cairn.pyfunc.load_model(tmp_path / "m", allow_pickle=allow_pickle)
    np.testing.assert_array_equal(pyfunc.predict(x.numpy()), _predict(model, x).numpy())


def _no_warning() -> Any:
    import contextlib
    import warnings

    @contextlib.contextmanager
    def block() -> Iterator[None]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            yield

    return block()


@pytest.mark.parametrize(
    ("options", "kind"),
    [
        ({}, "class"),
        ({"model_factory": f"{MODULE}:make_mlp", "init_kwargs": {"n_in": 6, "n_out": 3}}, "factory"),
        ({"export": True}, "export"),
        ({"export": False, "init_kwargs": {"channels": 99}}, "skeleton"),
    ],
)
def test_cnn_and_factory_round_trips(tmp_path: Path, options: dict[str, Any], kind: str) -> None:
    torch.manual_seed(1)
    if kind == "factory":
        x = torch.randn(4, 6)
        model = _trained(make_mlp(6, 3), x)
    else:
        x = torch.randn(4, 1, 8, 8)
        model = _trained(SmallCNN(), x)  # BatchNorm running statistics are buffers that must survive
    if kind == "skeleton":  # init_kwargs that do not rebuild the model: the class is not used
        with pytest.warns(UserWarning, match="skeleton"):
            flavor.save_model(model, tmp_path / "m", input_example=x[:2], **options)
    else:
        flavor.save_model(model, tmp_path / "m", input_example=x[:2], **options)
    assert _flavor_conf(tmp_path / "m")["architecture"] == kind
    trusted = (MODULE,) if kind == "factory" else ()  # a factory is called only from a module the caller trusts
    loaded = flavor.load_model(tmp_path / "m", allow_pickle=kind == "skeleton", trusted_modules=trusted)
    assert torch.equal(_predict(loaded, x), _predict(model, x))
    if kind != "factory":
        assert torch.equal(dict(loaded.named_buffers())["bn.running_mean"], model.bn.running_mean)


def test_weights_file_is_plain_safetensors_of_the_state_dict(tmp_path: Path) -> None:
    model = _trained(SmallCNN(), torch.randn(3, 1, 8, 8))
    flavor.save_model(model, tmp_path / "m")
    tensors = safetensors_torch.load_file(tmp_path / "m" / "data" / "model.safetensors")
    state = model.state_dict()
    assert set(tensors) == set(state)
    for key, value in state.items():
        assert torch.equal(tensors[key], value), key
    conf = _flavor_conf(tmp_path / "m")
    assert conf["weights"] == "data/model.safetensors" and conf["model_data"] == "data"


# -- no pickle on the default path ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["class", "export"])
def test_default_load_path_runs_no_pickle(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    torch.manual_seed(2)
    x = torch.randn(5, 6)
    model = _trained(MLP(**MLP_KWARGS), x)
    options = {"init_kwargs": MLP_KWARGS} if kind == "class" else {"export": True}
    flavor.save_model(model, tmp_path / "m", input_example=x[:2], **options)
    with zipfile.ZipFile(tmp_path / "m" / "data" / "model.pt2") if kind == "export" else _nothing() as archive:
        if archive is not None:  # the program holds no weights (they are in model.safetensors) and no sample input
            sizes = {info.filename.split("/", 1)[1]: info.file_size for info in archive.infolist()}
            assert all(size <= 8 for name, size in sizes.items() if name.startswith("data/weights/weight_"))
            assert sizes["data/sample_inputs/model.pt"] == 0

    request.getfixturevalue("no_pickle")
    with pytest.raises(AssertionError):
        pickle.loads(pickle.dumps(1))  # the guard is armed
    loaded = flavor.load_model(tmp_path / "m")
    assert torch.equal(_predict(loaded, x), _predict(model, x))
    pyfunc = cairn.pyfunc.load_model(tmp_path / "m")
    np.testing.assert_array_equal(pyfunc.predict(x.numpy()), _predict(model, x).numpy())


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext(None)


def test_skeleton_needs_the_pickle_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = MLP(n_in=3, hidden=7, n_out=2).eval()  # no example, defaults do not rebuild it: only a skeleton
    with pytest.warns(UserWarning, match="allow_pickle=True"):
        flavor.save_model(model, tmp_path / "m")
    with pytest.raises(UnsafeModel, match="allow_pickle=True") as refused:
        flavor.load_model(tmp_path / "m")
    assert "skeleton" in str(refused.value) and "CAIRN_ALLOW_PICKLE=1" in str(refused.value)
    with pytest.raises(UnsafeModel):
        cairn.pyfunc.load_model(tmp_path / "m")

    x = torch.randn(4, 3)
    assert torch.equal(_predict(flavor.load_model(tmp_path / "m", allow_pickle=True), x), _predict(model, x))
    monkeypatch.setenv("CAIRN_ALLOW_PICKLE", "1")
    assert torch.equal(_predict(flavor.load_model(tmp_path / "m"), x), _predict(model, x))
    # The skeleton holds no weight data: every tensor in it is a meta stand-in.
    assert (tmp_path / "m" / "data" / "skeleton.pkl").stat().st_size < 4096


def test_pickle_free_only_raises_instead_of_pickling(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="without pickle") as refused:
        flavor.save_model(MLP(n_in=3, hidden=7, n_out=2), tmp_path / "m", allow_pickle_skeleton=False)
    assert "module_class=" in str(refused.value)
    assert not (tmp_path / "m").exists()


# -- ties, buffers, odd tensors ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["class", "export", "skeleton"])
def test_tied_weights_stay_tied(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(3)
    tokens = torch.randint(0, 20, (4, 5))
    model = _trained(TiedLM(), tokens)
    assert model.head.weight is model.emb.weight
    options: dict[str, Any] = {"class": {}, "export": {"export": True}, "skeleton": {"export": False}}[kind]
    if kind == "skeleton":
        options["init_kwargs"] = {"vocab": 21}  # does not rebuild: forces the skeleton
        with pytest.warns(UserWarning):
            flavor.save_model(model, tmp_path / "m", input_example=tokens[:2], **options)
    else:
        flavor.save_model(model, tmp_path / "m", input_example=tokens[:2], **options)
    stored = safetensors_torch.load_file(tmp_path / "m" / "data" / "model.safetensors")
    assert list(stored) == ["emb.weight"]  # written once
    index = json.loads((tmp_path / "m" / "data" / "weights.json").read_text())
    assert {s["name"]: s.get("alias_of") for s in index["slots"]} == {"emb.weight": None, "head.weight": "emb.weight"}

    loaded = flavor.load_model(tmp_path / "m", allow_pickle=kind == "skeleton")
    assert torch.equal(_predict(loaded, tokens), _predict(model, tokens))
    params = dict(loaded.named_parameters(remove_duplicate=False))
    emb, head = params["emb.weight"], params["head.weight"]
    assert emb is head or emb.untyped_storage().data_ptr() == head.untyped_storage().data_ptr()
    with torch.no_grad():
        emb[0, 0] = 123.0
    assert head[0, 0].item() == 123.0  # the tie holds: one tensor


def test_buffers_non_contiguous_and_shared_submodules(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = Buffers()
    with torch.no_grad():
        model.scale.mul_(3)
        model.offset.add_(1)  # a non-persistent buffer changed after construction: saved too
        model.steps.fill_(7)
    assert not model.w.is_contiguous()
    flavor.save_model(model, tmp_path / "m")
    assert _flavor_conf(tmp_path / "m")["architecture"] == "class"
    loaded = flavor.load_model(tmp_path / "m")
    x = torch.randn(3, 4)
    assert torch.equal(loaded.w, model.w) and loaded.w.is_contiguous()  # same values, stored contiguous
    # (a matmul with the other memory layout may round differently in the last bit)
    torch.testing.assert_close(_predict(loaded, x), _predict(model, x), rtol=1e-6, atol=1e-6)
    assert torch.equal(loaded.offset, model.offset) and "offset" not in loaded.state_dict()
    assert loaded.first is loaded.second
    assert loaded.steps.requires_grad is False and loaded.w.requires_grad is True
    assert isinstance(loaded.w, nn.Parameter) and not isinstance(loaded.scale, nn.Parameter)


def test_frozen_parameters_and_dtype_survive(tmp_path: Path) -> None:
    model = MLP(**MLP_KWARGS).to(torch.float64)
    model.net[0].requires_grad_(False)
    flavor.save_model(model, tmp_path / "m", init_kwargs=MLP_KWARGS)
    loaded = flavor.load_model(tmp_path / "m")
    assert loaded.net[0].weight.dtype == torch.float64
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("cls", [ValueInit, PlainAttribute])
def test_constructors_that_cannot_run_on_meta_still_rebuild(tmp_path: Path, cls: type[nn.Module]) -> None:
    torch.manual_seed(9)
    model = cls().eval()
    flavor.save_model(model, tmp_path / "m")
    assert _flavor_conf(tmp_path / "m")["architecture"] == "class"
    loaded = flavor.load_model(tmp_path / "m")
    assert not _torch_utils.meta_tensors_left(loaded)
    x = torch.randn(2, 4 if cls is ValueInit else 3)
    assert torch.equal(_predict(loaded, x), _predict(model, x))


def test_extra_state_round_trips_without_pickle(tmp_path: Path) -> None:
    model = WithExtraState()
    model.vocab = {"tokens": ["x", "y", "z"], "table": torch.arange(3.0)}
    flavor.save_model(model, tmp_path / "m")
    loaded = flavor.load_model(tmp_path / "m")
    assert loaded.vocab["tokens"] == ["x", "y", "z"] and torch.equal(loaded.vocab["table"], torch.arange(3.0))


def test_meta_device_model_is_refused(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = MLP()
    with pytest.raises(InvalidArgument, match="'meta' device") as refused:
        flavor.save_model(model, tmp_path / "m")
    assert "net.0.weight" in str(refused.value)
    assert not (tmp_path / "m").exists()
    with pytest.raises(InvalidArgument, match="meta"), cairn.start_run():
        flavor.log_model(model, "model")


def test_lazy_module_must_be_materialised(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not initialized"):
        flavor.save_model(nn.Sequential(nn.LazyLinear(3)), tmp_path / "m")


# -- architecture choice and its errors -------------------------------------------------------------------


def test_architecture_arguments_are_checked(tmp_path: Path) -> None:
    model = MLP(**MLP_KWARGS)
    with pytest.raises(InvalidArgument, match="does not rebuild") as mismatch:
        flavor.save_model(model, tmp_path / "a", module_class=f"{MODULE}:MLP", init_kwargs={"hidden": 5})
    assert "net.0.weight" in str(mismatch.value)
    with pytest.raises(InvalidArgument, match="does not match the model"):
        flavor.save_model(model, tmp_path / "b", module_class=f"{MODULE}:SmallCNN")
    with pytest.raises(InvalidArgument, match="JSON"):
        flavor.save_model(model, tmp_path / "c", init_kwargs={"n_in": object()})
    with pytest.raises(InvalidArgument, match="not both"):
        flavor.save_model(model, tmp_path / "d", module_class=MLP, model_factory=make_mlp)
    with pytest.raises(InvalidArgument, match="input_example"):
        flavor.save_model(model, tmp_path / "e", export=True)

    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(InvalidArgument, match="cannot be imported by name"):
        flavor.save_model(Local(), tmp_path / "f", module_class=Local)
    with pytest.warns(UserWarning, match="skeleton"):  # a local class: no class, no example -> skeleton
        assert flavor.save_model(Local(), tmp_path / "g").flavors["pytorch"]["architecture"] == "skeleton"
    x = torch.randn(2, 2)  # with an example the local class is exported instead, and loads without pickle
    flavor.save_model(Local(), tmp_path / "h", input_example=x)
    assert _flavor_conf(tmp_path / "h")["architecture"] == "export"
    assert not any((tmp_path / name).exists() for name in "abcdef")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model_factory", "os:system", "plain Python function"),
        ("model_factory", "subprocess:run", "trusted_modules=('subprocess',)"),
        ("model_factory", "torch:load", "plain Python function"),
        ("model_factory", "torch.serialization:load", "trusted_modules=('torch.serialization',)"),
        ("model_factory", "pandas.io.pickle:read_pickle", "plain Python function"),
        ("model_factory", f"{MODULE}:make_mlp", f"trusted_modules=('{MODULE}',)"),
        ("model_factory", f"{MODULE}:MLP", "plain Python function"),
        ("model_factory", f"{MODULE}:np", "plain Python function"),
        ("module_class", "os.path:join", "not a torch.nn.Module subclass"),
        ("module_class", f"{MODULE}:make_mlp", "not a torch.nn.Module subclass"),
    ],
)
def test_load_refuses_dangerous_classes_and_factories(tmp_path: Path, key: str, value: str, message: str) -> None:
    """A model file names a callable and its kwargs: a class must be an nn.Module, a factory's module trusted."""
    flavor.save_model(make_mlp(6, 3), tmp_path / "m", model_factory=make_mlp, init_kwargs={"n_in": 6, "n_out": 3})
    meta = Model.load(tmp_path / "m")
    conf = meta.flavors["pytorch"]
    conf.pop("model_factory")
    conf["architecture"] = "factory" if key == "model_factory" else "class"
    conf[key] = value
    conf["init_kwargs"] = {"command": "touch pwned"} if value == "os:system" else {}
    meta.save(tmp_path / "m" / "MLmodel")
    with pytest.raises(UnsafeModel) as refused:
        flavor.load_model(tmp_path / "m")
    assert message in str(refused.value) and value in str(refused.value)
    assert not (tmp_path / "pwned").exists()


def test_code_paths_make_the_class_importable_from_the_model(tmp_path: Path) -> None:
    package = tmp_path / "src" / "zoo_cairn_test"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Net(nn.Module):
                def __init__(self, width=3):
                    super().__init__()
                    self.fc = nn.Linear(width, 2)

                def forward(self, x):
                    return self.fc(x)
            """
        )
    )
    sys.path.insert(0, str(package.parent))
    try:
        import zoo_cairn_test

        model = zoo_cairn_test.Net(width=4)
        flavor.save_model(model, tmp_path / "m", init_kwargs={"width": 4}, code_paths=[package])
    finally:
        sys.path.remove(str(package.parent))
        sys.modules.pop("zoo_cairn_test", None)
    (tmp_path / "src" / "zoo_cairn_test" / "__init__.py").unlink()  # only the copy in the model remains
    try:
        with pytest.raises(UnsafeModel, match="trusted_modules=\\('zoo_cairn_test',\\)"):
            flavor.load_model(tmp_path / "m")  # importing code shipped in a model file needs the caller's trust
        assert "zoo_cairn_test" not in sys.modules
        loaded = flavor.load_model(tmp_path / "m", trusted_modules=("zoo_cairn_test",))
        assert type(loaded).__module__ == "zoo_cairn_test"
        assert str(tmp_path / "m" / "code") in sys.modules["zoo_cairn_test"].__file__
        x = torch.randn(2, 4)
        assert torch.equal(_predict(loaded, x), _predict(model, x))
    finally:
        sys.modules.pop("zoo_cairn_test", None)
        if str(tmp_path / "m" / "code") in sys.path:
            sys.path.remove(str(tmp_path / "m" / "code"))


# -- exported programs: the archive check ----------------------------------------------------------------------


def _rewrite_archive(path: Path, edit: Any) -> None:
    """Rewrite the .pt2 zip with ``edit(relative_name, content) -> content``."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in members:
            archive.writestr(name, edit(name.split("/", 1)[1], content))


def _edit_json(content: bytes, change: Any) -> bytes:
    data = json.loads(content)
    change(data)
    return json.dumps(data).encode()


def _first_node(program: dict[str, Any]) -> dict[str, Any]:
    return dict(program["graph_module"]["graph"]["nodes"][0])


@pytest.mark.parametrize(
    "attack",
    ["pickled-weight", "opaque-constant", "guards-code", "sympy-expression", "torch-attribute-target", "aoti"],
)
def test_crafted_exported_program_is_refused(tmp_path: Path, attack: str) -> None:
    torch.manual_seed(5)
    x = torch.randn(3, 6)
    flavor.save_model(MLP(**MLP_KWARGS), tmp_path / "m", input_example=x, export=True)
    program = tmp_path / "m" / "data" / "model.pt2"

    def set_node(data: dict[str, Any], key: str, value: Any) -> None:
        data["graph_module"]["graph"]["nodes"][0][key] = value

    def edit(rel: str, content: bytes) -> bytes:
        if attack == "pickled-weight" and rel.endswith("_weights_config.json"):
            return _edit_json(content, lambda d: [e.update(use_pickle=True) for e in d["config"].values()])
        if attack == "opaque-constant" and rel.endswith("_weights_config.json"):
            return _edit_json(content, lambda d: [e.update(path_name="opaque_obj_0") for e in d["config"].values()])
        if rel.startswith("models/") and attack == "guards-code":
            return _edit_json(content, lambda d: d.update(guards_code=["__import__('os').system('touch pwned')"]))
        if rel.startswith("models/") and attack == "sympy-expression":
            return content.replace(b"Symbol('s", b"__import__('os').system('touch pwned') + Symbol('s", 1)
        if rel.startswith("models/") and attack == "torch-attribute-target":
            return _edit_json(content, lambda d: set_node(d, "target", "torch.os.system"))
        return content

    _rewrite_archive(program, edit)
    if attack == "aoti":
        with zipfile.ZipFile(program, "a") as archive:
            archive.writestr("model/data/aotinductor/model/model.so", b"\x7fELF")
    if attack == "sympy-expression":
        assert b"__import__" in zipfile.ZipFile(program).read("model/models/model.json")
    _reseal(tmp_path / "m")  # whoever altered the file also fixed the recorded hashes

    with pytest.raises(UnsafeModel, match="allow_pickle=True"):
        flavor.load_model(tmp_path / "m")
    with pytest.raises(UnsafeModel):
        _torch_export.check_archive(program)
    assert not (tmp_path / "pwned").exists()


def test_sympy_expressions_accepted_by_the_check() -> None:
    safe = _torch_export._safe_expression
    assert safe("Symbol('s77', positive=True, integer=True)")
    assert safe("2*s0 + Max(1, s1) // 3 - FloorDiv(s2, 4)")
    assert safe("Eq(Mod(s0, 2), 0)")
    for bad in ("__import__('os')", "s0.__class__", "(lambda: 1)()", "Symbol('x; import os')", "s0[0]", "exec"):
        assert not safe(bad), bad


# -- pyfunc ------------------------------------------------------------------------------------------------


def test_pyfunc_numpy_pandas_tensor_inputs_and_signature(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = MLP(**MLP_KWARGS).eval()
    x = torch.randn(5, 6)
    saved = flavor.save_model(model, tmp_path / "m", input_example=x[:2].numpy(), init_kwargs=MLP_KWARGS)
    signature = saved.signature
    assert signature is not None and signature.inputs.to_dict()[0]["tensor-spec"] == {
        "dtype": "float32",
        "shape": [-1, 6],
    }
    assert [(p.name, p.default) for p in signature.params.params] == [("device", "cpu")]

    pyfunc = cairn.pyfunc.load_model(tmp_path / "m")
    expected = _predict(model, x).numpy()
    np.testing.assert_array_equal(pyfunc.predict(x.numpy()), expected)
    np.testing.assert_array_equal(pyfunc.predict(pd.DataFrame(x.numpy())), expected)
    np.testing.assert_array_equal(pyfunc.predict(x), expected)
    np.testing.assert_array_equal(pyfunc.predict(x.numpy(), params={"device": "cpu"}), expected)
    assert isinstance(pyfunc.predict(x), np.ndarray)
    assert isinstance(pyfunc.get_raw_model(), MLP)
    with pytest.raises(SchemaMismatch, match="shape") as wrong:
        pyfunc.predict(np.zeros((2, 5), dtype=np.float32))
    assert "(-1, 6)" in str(wrong.value)
    with pytest.raises(SchemaMismatch, match="dtype"):
        pyfunc.predict(np.zeros((2, 6), dtype=np.int64).astype(str))
    with pytest.raises(InvalidArgument, match="torch device"):
        pyfunc.predict(x.numpy(), params={"device": "toaster"})


def test_pyfunc_several_outputs_become_a_dict_of_arrays(tmp_path: Path) -> None:
    model = TwoHeads().eval()
    x = torch.randn(3, 4)
    saved = flavor.save_model(model, tmp_path / "m", input_example=x)
    assert [s.name for s in saved.signature.outputs.inputs] == ["output_0", "output_1"]
    out = cairn.pyfunc.load_model(tmp_path / "m").predict(x.numpy())
    a, b = _predict(model, x)
    np.testing.assert_array_equal(out["output_0"], a.numpy())
    np.testing.assert_array_equal(out["output_1"], b.numpy())


def test_signature_inference_runs_the_model_once(tmp_path: Path) -> None:
    CountingMLP.calls = 0
    flavor.save_model(
        CountingMLP(**MLP_KWARGS), tmp_path / "m", input_example=torch.randn(2, 6), init_kwargs=MLP_KWARGS
    )
    assert CountingMLP.calls == 1
    assert Model.load(tmp_path / "m").signature.outputs is not None


def test_pyfunc_runs_in_eval_mode_under_inference_mode(tmp_path: Path) -> None:
    model = MLP(**MLP_KWARGS).train()  # Dropout active while training
    flavor.save_model(model, tmp_path / "m", init_kwargs=MLP_KWARGS, signature=False)
    pyfunc = cairn.pyfunc.load_model(tmp_path / "m")
    x = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
    np.testing.assert_array_equal(pyfunc.predict(x), pyfunc.predict(x))  # deterministic: no dropout
    assert model.training  # saving did not change the caller's module


# -- runs, registry, generic loaders -------------------------------------------------------------------------


def test_log_model_into_a_run_registered_and_loaded_by_models_uri() -> None:
    torch.manual_seed(7)
    model = _trained(SmallCNN(), torch.randn(3, 1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    with cairn.start_run() as run:
        info = flavor.log_model(model, name="model", input_example=x, registered_model_name="cnn")
    assert info.model_uri == f"runs:/{run.info.run_id}/model"
    assert info.registered_model_version == 1
    history = json.loads(cairn.get_run(run.info.run_id).data.tags["mlflow.log-model.history"])
    assert history[0]["flavors"]["pytorch"]["architecture"] == "class"

    for uri in ("models:/cnn/1", info.model_uri):
        loaded = flavor.load_model(uri)
        assert torch.equal(_predict(loaded, x), _predict(model, x))
    assert isinstance(load_native("models:/cnn/1"), SmallCNN)
    pyfunc = cairn.pyfunc.load_model("models:/cnn/1")
    np.testing.assert_array_equal(pyfunc.predict(x.numpy()), _predict(model, x).numpy())


def test_log_model_accepts_artifact_path_and_run_id() -> None:
    with cairn.start_run() as run:
        pass
    info = flavor.log_model(
        MLP(**MLP_KWARGS), artifact_path="weights/mlp", run_id=run.info.run_id, init_kwargs=MLP_KWARGS
    )
    assert info.model_uri == f"runs:/{run.info.run_id}/weights/mlp"
    local = resolve_local_model_dir(info.model_uri)
    assert (local / "data" / "model.safetensors").is_file()
    with pytest.raises(InvalidArgument, match="disagree"):
        flavor.log_model(MLP(), "a", artifact_path="b")


def test_log_model_renames_files_into_a_local_store_without_rehashing(monkeypatch: pytest.MonkeyPatch) -> None:
    from cairn.models import hashes

    hashed: list[str] = []
    real_sha256 = hashes.file_sha256

    def recording(path: Any) -> str:
        hashed.append(Path(path).name)
        return real_sha256(path)

    monkeypatch.setattr(hashes, "file_sha256", recording)
    model = MLP(**MLP_KWARGS)
    with cairn.start_run():
        info = flavor.log_model(model, "model", init_kwargs=MLP_KWARGS)
    assert "model.safetensors" not in hashed  # digest computed while writing, not by reading the file back
    assert "weights.json" in hashed
    local = resolve_local_model_dir(info.model_uri)
    leftovers = [p.name for p in local.parent.iterdir() if p.name.startswith(".cairn-tmp-")]
    assert leftovers == []  # the staging directory inside the store is gone
    hashed.clear()
    loaded = flavor.load_model(info.model_uri)  # verification always reads the bytes
    assert "model.safetensors" in hashed
    x = torch.randn(2, 6)
    assert torch.equal(_predict(loaded, x), _predict(model.eval(), x))


def test_log_model_copies_when_the_model_is_staged_on_another_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model is staged on tmpfs (/dev/shm), the store is not: the files are copied in, not renamed."""
    import contextlib
    import os
    import shutil
    import tempfile

    from cairn.artifacts.local import LocalArtifactStore

    staged_on: list[int] = []
    real_staging_dir = LocalArtifactStore.staging_dir

    @contextlib.contextmanager
    def staging_on_tmpfs(self: LocalArtifactStore, artifact_path: str | None = None) -> Iterator[Path]:
        if staged_on:  # replace_dir's own copy next to the target
            with real_staging_dir(self, artifact_path) as near:
                yield near
            return
        path = tempfile.mkdtemp(dir="/dev/shm")
        staged_on.append(os.stat(path).st_dev)
        try:
            yield Path(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)

    monkeypatch.setattr(LocalArtifactStore, "staging_dir", staging_on_tmpfs)
    model = MLP(**MLP_KWARGS)
    with cairn.start_run():
        info = flavor.log_model(model, "model", init_kwargs=MLP_KWARGS)
    model_dir = Path(cairn.models.loading.resolve_local_model_dir(info.model_uri))
    weights = model_dir / "data" / "model.safetensors"
    assert staged_on and staged_on[0] != os.stat(model_dir).st_dev, "the staging must be on another filesystem"
    assert weights.is_file() and not weights.is_symlink()
    x = torch.randn(2, 6)
    assert torch.equal(_predict(flavor.load_model(info.model_uri), x), _predict(model.eval(), x))


def test_altered_weights_are_refused(tmp_path: Path) -> None:
    flavor.save_model(MLP(**MLP_KWARGS), tmp_path / "m", init_kwargs=MLP_KWARGS)
    weights = tmp_path / "m" / "data" / "model.safetensors"
    content = bytearray(weights.read_bytes())
    content[-1] ^= 0xFF
    weights.write_bytes(bytes(content))
    with pytest.raises(ModelIntegrityError, match=r"model\.safetensors"):
        flavor.load_model(tmp_path / "m")


def test_shape_mismatch_names_the_keys(tmp_path: Path) -> None:
    flavor.save_model(MLP(**MLP_KWARGS), tmp_path / "m", init_kwargs=MLP_KWARGS)
    meta = Model.load(tmp_path / "m")
    meta.flavors["pytorch"]["init_kwargs"] = {**MLP_KWARGS, "hidden": 4}
    meta.save(tmp_path / "m" / "MLmodel")
    with pytest.raises(StateMismatch, match=r"net\.0\.weight: saved \[12, 6\], module \[4, 6\]"):
        flavor.load_model(tmp_path / "m")


# -- writing: the digest computed alongside the write ------------------------------------------------------------


def test_weights_digest_is_computed_while_writing(tmp_path: Path) -> None:
    tensors = {
        "b.weight": torch.randn(3, 4, dtype=torch.bfloat16),
        "a.weight": torch.randn(5),
        "z.empty": torch.zeros(0),
        "ids": torch.arange(7),
        "mask": torch.tensor([True, False, True]),
        "half": torch.ones(2, 2, dtype=torch.float16),
        "é.unicode": torch.ones(1, dtype=torch.float64),
        "bytes": torch.arange(3, dtype=torch.uint8),
    }

    def no_rehash(path: Path) -> str:
        raise AssertionError("the file was read back to hash it")

    digest = _torch_utils.write_weights(tensors, tmp_path / "w.safetensors", file_sha256=no_rehash)
    assert digest == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    loaded = safetensors_torch.load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_weights_digest_falls_back_when_the_layout_is_not_as_predicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _torch_utils._predict_layout

    def wrong(tensors: dict[str, torch.Tensor]) -> Any:
        header, ordered = real(tensors)
        return header.replace(b'"F32"', b'"F16"'), ordered

    monkeypatch.setattr(_torch_utils, "_predict_layout", wrong)
    tensors = {"x": torch.randn(10)}
    digest = _torch_utils.write_weights(tensors, tmp_path / "w.safetensors", file_sha256=file_sha256)
    assert digest == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()


# -- state dicts -------------------------------------------------------------------------------------------------


def _assert_same_tree(a: Any, b: Any, path: str = "") -> None:
    assert type(a) is type(b) or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            _assert_same_tree(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    else:
        assert a == b, path


def _train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int, steps: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=generator)
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
        lambda params: torch.optim.Adam(params, lr=1e-3, betas=(0.8, 0.95), amsgrad=True),
    ],
    ids=["sgd-momentum", "adam"],
)
def test_state_dicts_round_trip_exactly_and_resume_identically(make_optimizer: Any, no_pickle: None) -> None:
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = make_optimizer(model.parameters())
    _train_steps(model, optimizer, seed=0, steps=3)
    with cairn.start_run() as run:
        flavor.log_state_dict(model.state_dict(), "checkpoint/model")
        flavor.log_state_dict(optimizer.state_dict(), "checkpoint/optimizer")
    model_state = flavor.load_state_dict(f"runs:/{run.info.run_id}/checkpoint/model")
    optimizer_state = flavor.load_state_dict(f"runs:/{run.info.run_id}/checkpoint/optimizer")
    _assert_same_tree(model_state, model.state_dict())
    _assert_same_tree(optimizer_state, optimizer.state_dict())
    assert all(isinstance(k, int) for k in optimizer_state["state"])  # int keys stay ints

    resumed = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    resumed.load_state_dict(model_state)
    resumed_optimizer = make_optimizer(resumed.parameters())
    resumed_optimizer.load_state_dict(optimizer_state)
    _train_steps(model, optimizer, seed=1, steps=3)
    _train_steps(resumed, resumed_optimizer, seed=1, steps=3)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_dict_of_a_tied_model_and_local_paths(tmp_path: Path) -> None:
    model = TiedLM()
    flavor.save_state_dict(model.state_dict(), tmp_path / "sd")
    loaded = flavor.load_state_dict(tmp_path / "sd")
    _assert_same_tree(loaded, model.state_dict())
    assert loaded["emb.weight"] is loaded["head.weight"]
    with pytest.raises(cairn.errors.ArtifactNotFound, match=r"state_dict\.json"):
        flavor.load_state_dict(tmp_path)


def test_pickled_state_dict_needs_the_opt_in(tmp_path: Path) -> None:
    state = {"w": torch.arange(4.0)}
    (tmp_path / "sd").mkdir()
    torch.save(state, tmp_path / "sd" / "state_dict.pth")  # what mlflow.pytorch.save_state_dict writes
    with pytest.raises(UnsafeModel, match="allow_pickle=True"):
        flavor.load_state_dict(tmp_path / "sd")
    assert torch.equal(flavor.load_state_dict(tmp_path / "sd", allow_pickle=True)["w"], state["w"])


def test_flavor_entry_is_yaml_readable(tmp_path: Path) -> None:
    flavor.save_model(MLP(**MLP_KWARGS), tmp_path / "m", init_kwargs=MLP_KWARGS)
    content = yaml.safe_load((tmp_path / "m" / "MLmodel").read_text())
    assert content["flavors"]["python_function"]["loader_module"] == "cairn.flavors.pytorch"
    assert content["flavors"]["python_function"]["data"] == "data"
    assert set(content["flavors"]["pytorch"]) >= {"pytorch_version", "model_data", "architecture", "weights"}
    requirements = (tmp_path / "m" / "requirements.txt").read_text()
    assert "torch" in requirements and "safetensors" in requirements and "cloudpickle" not in requirements
