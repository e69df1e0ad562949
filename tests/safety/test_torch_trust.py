"""The PyTorch flavor's trust boundary: what a model file may make cairn import, call or hand to torch.

A model file names a class or factory (``module_class`` / ``model_factory``) and its keyword arguments,
and may carry a ``torch.export`` archive. Each test builds a real hostile model directory (resealed,
as whoever altered it would) and checks that loading it runs nothing: the marker file the payload
would write never appears.
"""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[pytorch]')")
pytest.importorskip("safetensors.torch", reason="safetensors is not installed")

from torch import nn  # noqa: E402

import cairn.pyfunc  # noqa: E402
from cairn import safety  # noqa: E402
from cairn.errors import UnsafeModel  # noqa: E402
from cairn.flavors import _torch_export  # noqa: E402
from cairn.flavors import pytorch as flavor  # noqa: E402
from cairn.models import Model  # noqa: E402
from cairn.models.hashes import MANIFEST_SHA256_KEY, write_files_manifest  # noqa: E402
from tests.safety.payloads import Marker  # noqa: E402

HERE = __name__


class Net(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def make_net(width: int = 3) -> Net:
    """A model factory defined in this (already imported) module."""
    return Net(width)


@pytest.fixture(autouse=True)
def _no_env_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(safety.ALLOW_PICKLE_ENV, raising=False)
    monkeypatch.delenv(safety.TRUSTED_MODULES_ENV, raising=False)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned.marker"


def _reseal(model_dir: Path) -> None:
    """What someone who can write the model directory can do: recompute the file hashes after a change."""
    meta = Model.load(model_dir)
    meta.metadata[MANIFEST_SHA256_KEY] = write_files_manifest(model_dir)
    meta.save(model_dir / "MLmodel")


def _name_in_file(model_dir: Path, kind: str, target: str, init_kwargs: dict[str, Any]) -> None:
    """Rewrite the MLmodel file so that it names ``target`` as its class or factory."""
    meta = Model.load(model_dir)
    conf = meta.flavors["pytorch"]
    conf.pop("module_class", None)
    conf.pop("model_factory", None)
    conf["architecture"] = kind
    conf["module_class" if kind == "class" else "model_factory"] = target
    conf["init_kwargs"] = init_kwargs
    meta.save(model_dir / "MLmodel")
    _reseal(model_dir)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A cairn PyTorch model directory of :class:`Net` (architecture ``class``)."""
    path = tmp_path / "m"
    flavor.save_model(Net(), path, module_class=Net, init_kwargs={"width": 3})
    return path


def _with_marker(init_kwargs: dict[str, Any], marker: Path) -> dict[str, Any]:
    """``init_kwargs`` with ``{marker}`` / ``{marker!r}`` replaced by the marker path (plain / quoted)."""
    text = json.dumps(init_kwargs).replace("{marker!r}", repr(str(marker))).replace("{marker}", str(marker))
    return dict(json.loads(text))


def _loaders() -> list[Callable[[Path], Any]]:
    return [flavor.load_model, cairn.pyfunc.load_model]


# -- callables that evaluate a string -------------------------------------------------------------------------


def _evaluating_callables() -> list[tuple[str, str]]:
    """(factory name, its string keyword) for installed functions that evaluate Python given as a string."""
    found = []
    for target, keyword, requirement in [
        ("sympy.core.sympify:sympify", "a", "sympy"),
        ("sympy.parsing.sympy_parser:parse_expr", "s", "sympy"),
    ]:
        try:
            __import__(requirement)
        except ImportError:
            continue
        found.append((target, keyword))
    return found


@pytest.mark.parametrize("loader", _loaders(), ids=["pytorch", "pyfunc"])
@pytest.mark.parametrize(("target", "keyword"), _evaluating_callables())
def test_a_factory_that_evaluates_a_string_is_never_called(
    saved: Path, marker: Path, loader: Callable[[Path], Any], target: str, keyword: str
) -> None:
    import importlib

    importlib.import_module(target.split(":")[0])  # even when its module is already imported
    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    _name_in_file(saved, "factory", target, {keyword: payload})
    with pytest.raises(UnsafeModel) as refused:
        loader(saved)
    message = str(refused.value)
    assert target in message and "trusted_modules=" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("target", "init_kwargs"),
    [
        ("os:system", {"command": "touch {marker}"}),
        ("subprocess:run", {"args": ["touch", "{marker}"]}),
        ("builtins:exec", {"source": "open({marker!r}, 'w')"}),
        ("torch:load", {"f": "{marker}"}),
        (f"{HERE}:make_net", {}),  # harmless, but nobody allowed this module's functions to be called
    ],
)
def test_factories_from_modules_the_caller_did_not_trust_are_refused(
    saved: Path, marker: Path, target: str, init_kwargs: dict[str, Any]
) -> None:
    _name_in_file(saved, "factory", target, _with_marker(init_kwargs, marker))
    with pytest.raises(UnsafeModel, match="model_factory") as refused:
        flavor.load_model(saved)
    assert target in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("target", "init_kwargs", "message"),
    [
        ("subprocess:Popen", {"args": ["touch", "{marker}"]}, "not a torch.nn.Module subclass"),
        ("os:system", {"command": "touch {marker}"}, "not a torch.nn.Module subclass"),
        (f"{HERE}:make_net", {}, "not a torch.nn.Module subclass"),
        ("torch.nn:Linear.__init__", {}, "plain Python identifiers"),
    ],
)
def test_a_class_must_be_a_module_subclass_before_anything_is_called(
    saved: Path, marker: Path, target: str, init_kwargs: dict[str, Any], message: str
) -> None:
    _name_in_file(saved, "class", target, _with_marker(init_kwargs, marker))
    for loader in _loaders():
        with pytest.raises(Exception, match=message):
            loader(saved)
    assert not marker.exists()


def test_a_factory_loads_when_the_caller_trusts_its_module(tmp_path: Path) -> None:
    path = tmp_path / "m"
    flavor.save_model(make_net(4), path, model_factory=make_net, init_kwargs={"width": 4})
    with pytest.raises(UnsafeModel, match=rf"trusted_modules=\('{HERE}',\)"):
        flavor.load_model(path)
    assert isinstance(flavor.load_model(path, trusted_modules=(HERE,)), Net)
    assert isinstance(flavor.load_model(path, trusted_modules=("tests",)), Net)  # a parent package
    with pytest.raises(UnsafeModel):
        flavor.load_model(path, trusted_modules=(f"{HERE}x", "tests.flavors"))  # a prefix is not a package
    with safety.trusted_modules((HERE,)):
        assert cairn.pyfunc.load_model(path).predict(torch.ones(2, 4).numpy()).shape == (2, 2)
    with pytest.raises(UnsafeModel):
        cairn.pyfunc.load_model(path)  # the scope ended
    assert isinstance(flavor.load_model(path, allow_pickle=True), Net)  # the pickle opt-in trusts everything


def test_the_environment_can_trust_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m"
    flavor.save_model(make_net(4), path, model_factory=make_net, init_kwargs={"width": 4})
    monkeypatch.setenv(safety.TRUSTED_MODULES_ENV, f"numpy, {HERE}")
    assert cairn.pyfunc.load_model(path).predict(torch.ones(1, 4).numpy()).shape == (1, 2)


def test_trusted_module_names_are_checked() -> None:
    for bad in ("", "os.", "a b", "x;y", "__main__", 3):
        with pytest.raises(Exception, match="trusted_modules"), safety.trusted_modules((bad,)):  # type: ignore[arg-type]
            pass


# -- imports -------------------------------------------------------------------------------------------------


@pytest.fixture
def evil_package(tmp_path: Path, marker: Path) -> Iterator[str]:
    """A module on sys.path whose import writes the marker (and that defines a usable module class)."""
    name = "cairn_trust_test_evil"
    source = tmp_path / "site"
    source.mkdir()
    (source / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib
            from torch import nn

            pathlib.Path({str(marker)!r}).write_text("imported")

            class Net(nn.Module):
                def __init__(self, width=3):
                    super().__init__()
                    self.fc = nn.Linear(width, 2)

                def forward(self, x):
                    return self.fc(x)
            """
        )
    )
    sys.path.insert(0, str(source))
    try:
        yield name
    finally:
        sys.path.remove(str(source))
        sys.modules.pop(name, None)


@pytest.mark.parametrize("kind", ["class", "factory"])
@pytest.mark.parametrize("loader", _loaders(), ids=["pytorch", "pyfunc"])
def test_a_module_named_by_the_file_is_not_imported(
    saved: Path, marker: Path, evil_package: str, loader: Callable[[Path], Any], kind: str
) -> None:
    _name_in_file(saved, kind, f"{evil_package}:Net", {"width": 3})
    with pytest.raises(UnsafeModel) as refused:
        loader(saved)
    message = str(refused.value)
    assert evil_package in message and "importing it runs its code" in message
    assert f"trusted_modules=('{evil_package}',)" in message and "CAIRN_TRUSTED_MODULES" in message
    assert not marker.exists() and evil_package not in sys.modules


@pytest.mark.parametrize(
    "target",
    [
        "numpy.f2py.__main__:main",  # importing it runs f2py's command line
        "antigravity:geohash",  # importing it opens a web browser
        "this:d",
    ],
)
def test_not_yet_imported_modules_are_refused_before_import(saved: Path, target: str) -> None:
    module = target.split(":")[0]
    if module in sys.modules:
        pytest.skip(f"{module} is already imported in this process")
    _name_in_file(saved, "class", target, {})
    with pytest.raises(Exception, match=r"plain Python identifiers|importing it runs its code"):
        flavor.load_model(saved)
    assert module not in sys.modules


def test_a_trusted_module_is_imported(saved: Path, marker: Path, evil_package: str) -> None:
    _name_in_file(saved, "class", f"{evil_package}:Net", {"width": 3})
    loaded = flavor.load_model(saved, trusted_modules=(evil_package,))
    assert type(loaded).__module__ == evil_package and marker.read_text() == "imported"


def test_the_pickle_opt_in_allows_the_import(saved: Path, marker: Path, evil_package: str) -> None:
    _name_in_file(saved, "class", f"{evil_package}:Net", {"width": 3})
    assert type(cairn.pyfunc.load_model(saved, allow_pickle=True).get_raw_model()).__module__ == evil_package
    assert marker.exists()


def test_attribute_lookup_runs_no_module_getattr(saved: Path, marker: Path, tmp_path: Path) -> None:
    """A module-level ``__getattr__`` (lazy imports) is not triggered by looking the name up."""
    name = "cairn_trust_test_lazy"
    (tmp_path / f"{name}.py").write_text(
        f"def __getattr__(name):\n    open({str(marker)!r}, 'w').write(name)\n    raise AttributeError(name)\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        __import__(name)
        _name_in_file(saved, "class", f"{name}:Anything", {})
        with pytest.raises(ImportError, match="no attribute"):
            flavor.load_model(saved)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
    assert not marker.exists()


def test_code_shipped_in_the_model_is_not_put_on_sys_path_without_trust(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "m"
    flavor.save_model(Net(), path, module_class=Net, init_kwargs={"width": 3})
    code = path / "code"
    code.mkdir()
    (code / "cairn_trust_test_shadow.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    meta = Model.load(path)
    meta.flavors["pytorch"]["code"] = "code"
    meta.save(path / "MLmodel")
    _reseal(path)
    before = list(sys.path)
    flavor.load_model(path)
    assert sys.path == before


# -- torch.export archives with ambiguous entries --------------------------------------------------------------


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    path = tmp_path / "e"
    flavor.save_model(Net(), path, input_example=torch.randn(2, 3), export=True)
    assert Model.load(path).flavors["pytorch"]["architecture"] == "export"
    return path


def _hostile_config(benign: bytes, weight: str) -> bytes:
    config = json.loads(benign)
    for entry in config["config"].values():
        entry["use_pickle"] = True
        entry["path_name"] = weight
    return json.dumps(config).encode()


def _rewrite(program: Path, entries: list[tuple[str, bytes]]) -> None:
    with warnings.catch_warnings(), zipfile.ZipFile(program, "w", compression=zipfile.ZIP_STORED) as archive:
        warnings.simplefilter("ignore")  # zipfile warns "Duplicate name"
        for name, content in entries:
            archive.writestr(name, content)


def _members(program: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(program) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _with_hostile_copy(program: Path, marker: Path, *, hostile_first: bool, rename: Callable[[str], str]) -> None:
    """Add a hostile copy of the weights config (under ``rename(name)``) before or after the benign one."""
    members = _members(program)
    root = members[0][0].split("/")[0]
    weight = "weight_9"
    rebuilt: list[tuple[str, bytes]] = []
    for name, content in members:
        if name.endswith("_weights_config.json"):
            hostile = (rename(name), _hostile_config(content, weight))
            rebuilt.extend([hostile, (name, content)] if hostile_first else [(name, content), hostile])
        else:
            rebuilt.append((name, content))
    rebuilt.append((f"{root}/data/weights/{weight}", pickle.dumps(Marker(marker))))
    _rewrite(program, rebuilt)


@pytest.mark.parametrize("hostile_first", [True, False], ids=["hostile-first", "hostile-last"])
@pytest.mark.parametrize(
    "rename",
    [
        lambda name: name,
        lambda name: name.replace("data/weights", "DATA/weights"),
        lambda name: name.replace("model_weights_config", "MODEL_weights_config"),
        lambda name: "other" + name[name.index("/") :],
    ],
    ids=["same-name", "case-differs-in-folder", "case-differs-in-name", "second-root"],
)
def test_an_archive_with_ambiguous_entries_is_refused(
    exported: Path, marker: Path, hostile_first: bool, rename: Callable[[str], str]
) -> None:
    program = exported / "data" / "model.pt2"
    _with_hostile_copy(program, marker, hostile_first=hostile_first, rename=rename)
    _reseal(exported)
    for loader in _loaders():
        with pytest.raises(UnsafeModel, match="allow_pickle=True"):
            loader(exported)
    with pytest.raises(UnsafeModel):
        _torch_export.check_archive(program)
    assert not marker.exists()


def test_torch_is_given_the_checked_copy_not_the_file(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch reads a new archive written from the entries the check read, never the file on disk."""
    program = exported / "data" / "model.pt2"
    received: list[list[str]] = []
    original = torch.export.load

    def spy(source: Any, *args: Any, **kwargs: Any) -> Any:
        assert not isinstance(source, (str, Path)), "torch was given the unchecked file"
        received.append(zipfile.ZipFile(source).namelist())
        source.seek(0)
        return original(source, *args, **kwargs)

    monkeypatch.setattr(torch.export, "load", spy)
    loaded = flavor.load_model(exported)
    assert received == [[name for name, _ in _members(program)]]
    assert loaded(torch.randn(4, 3)).shape == (4, 2)  # usable after the copy is gone


def test_an_untouched_export_still_loads_without_pickle(exported: Path) -> None:
    loaded = flavor.load_model(exported)
    assert loaded(torch.ones(5, 3)).shape == (5, 2)


def test_a_malformed_trusted_modules_entry_is_reported_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(safety.TRUSTED_MODULES_ENV, "my-pkg, mypkg")
    with pytest.warns(UserWarning, match=r"CAIRN_TRUSTED_MODULES holds 'my-pkg'.*trusts nothing"):
        assert safety.module_trusted("mypkg.models")
