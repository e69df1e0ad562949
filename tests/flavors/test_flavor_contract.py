"""The flavor contract suite: every flavor module keeps the same promises (see DESIGN.md, "Flavor module").

Each flavor in :data:`cairn.flavors.registry.NATIVE_FLAVOR_MODULES` has a :class:`Case` here: a tiny real
model, how to save and log it, an input example and an input its signature refuses. Every test runs
on every case, so a new flavor joins by adding a builder to ``BUILDERS`` (``test_every_flavor_has_a_case``
fails until it does). Each model is built and saved once per module.
"""

from __future__ import annotations

import inspect
import json
import os
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import cairn
import cairn.pyfunc
from cairn import safety
from cairn.errors import InvalidArgument, SchemaMismatch, UnsafeModel
from cairn.flavors import lightning, onnx, pyfunc, pytorch, registry, sklearn, transformers
from cairn.models import FORMAT_VERSION, Model, ModelInfo, load_input_example
from cairn.models.flavor import CommonSaveOptions, Flavor, LogOptions, PyfuncLoader, SaveRecordOptions
from cairn.models.model import MLMODEL_FILE_NAME
from cairn.models.packaging import LOGGED_MODELS_TAG

#: Every native flavor module, typed: mypy checks each against the Flavor protocol here too.
FLAVOR_MODULES: dict[str, Flavor] = {
    "sklearn": sklearn,
    "pytorch": pytorch,
    "lightning": lightning,
    "transformers": transformers,
    "onnx": onnx,
    "python_function": pyfunc,
}

X = np.random.RandomState(0).randn(6, 4).astype("float32")
EXAMPLE = X[:2]
WRONG_SHAPE = X[:, :3]  # one feature short: every tensor signature below refuses it
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib")


class MLP(torch.nn.Module):
    """Importable by name, so the PyTorch flavor stores it as class + init_kwargs (no pickle)."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LitMLP(L.LightningModule):
    """Importable by name with its hparams, so the Lightning flavor stores it as class + hparams."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
        self.example_input_array = torch.zeros(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Doubler(cairn.pyfunc.PythonModel):
    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        return np.asarray(model_input) * 2


@dataclass
class Case:
    """One flavor's model and how the contract exercises it.

    Attributes:
        save: ``save(path, **options)`` saves the model with the flavor's ``save_model``.
        log: ``log(name, **options)`` logs it with the flavor's ``log_model``.
        native: the type ``load_model`` returns.
        reference: the model's own prediction on the example, for pyfunc to match (``None``: not comparable).
        needs_pickle: the default save is a pickle (custom Python models).
        pickled: saves a variant of the model that only a pickle can hold (``None``: the flavor has none).
        pickle_refused_at_save: the flavor refuses to save that variant at all (it never writes a pickle).
        loader_flavor: the flavor whose module the MLmodel names as pyfunc ``loader_module`` (default: its own).
    """

    flavor: str
    module: Flavor
    save: Callable[..., Model]
    log: Callable[..., ModelInfo]
    example: Any
    wrong_input: Any
    native: type | tuple[type, ...]
    reference: Callable[[Any], Any] | None = None
    needs_pickle: bool = False
    pickled: Callable[[Path], Any] | None = None
    pickle_refused_at_save: bool = False
    load_options: dict[str, Any] = field(default_factory=dict)
    loader_flavor: str | None = None

    @property
    def loader_module(self) -> str:
        return registry.NATIVE_FLAVOR_MODULES[self.loader_flavor or self.flavor]


def _torch_predict(model: torch.nn.Module, data: Any) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(torch.as_tensor(np.asarray(data))).numpy()


def _local_module_without_example(base: type) -> Any:
    """An instance of a class defined here, inside a function: not importable, so only a pickle holds it."""

    class Local(base):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x)

    return Local()


def _skeleton(flavor: ModuleType, base: type, path: Path) -> None:
    with pytest.warns(UserWarning, match="skeleton"):
        flavor.save_model(_local_module_without_example(base), path, export=False)


def _sklearn() -> Case:
    from sklearn.linear_model import LogisticRegression

    estimator = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    return Case(
        "sklearn",
        sklearn,
        partial(sklearn.save_model, estimator),
        partial(sklearn.log_model, estimator),
        EXAMPLE,
        WRONG_SHAPE,
        LogisticRegression,
        reference=estimator.predict,
        pickled=lambda path: sklearn.save_model(estimator, path, serialization_format="cloudpickle"),
    )


def _pytorch() -> Case:
    torch.manual_seed(0)
    net = MLP().eval()
    return Case(
        "pytorch",
        pytorch,
        partial(pytorch.save_model, net),
        partial(pytorch.log_model, net),
        EXAMPLE,
        WRONG_SHAPE,
        MLP,
        reference=partial(_torch_predict, net),
        pickled=partial(_skeleton, pytorch, torch.nn.Module),
    )


def _lightning() -> Case:
    torch.manual_seed(0)
    module = LitMLP(hidden=6).eval()
    return Case(
        "lightning",
        lightning,
        partial(lightning.save_model, module),
        partial(lightning.log_model, module),
        EXAMPLE,
        WRONG_SHAPE,
        LitMLP,
        reference=partial(_torch_predict, module),
        pickled=partial(_skeleton, lightning, L.LightningModule),
        loader_flavor="pytorch",  # a LightningModule predicts as the nn.Module it is
    )


def _transformers() -> Case:
    from transformers import BertForSequenceClassification, Pipeline

    from tests.flavors.test_transformers import make_tokenizer, tiny_bert_config

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=2)).eval()
    components = {"model": model, "tokenizer": tokenizer}

    def pickled(path: Path) -> None:  # a checkpoint whose weights are a pickle (pytorch_model.bin)
        checkpoint = path.parent / "bin-checkpoint"
        model.config.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        torch.save(model.state_dict(), checkpoint / "pytorch_model.bin")
        transformers.save_model(str(checkpoint), path)

    return Case(
        "transformers",
        transformers,
        partial(transformers.save_model, components, task="text-classification"),
        partial(transformers.log_model, components, task="text-classification"),
        ["i love this movie", "this film was terrible"],
        [[1.0, 2.0]],
        Pipeline,
        pickled=pickled,
        pickle_refused_at_save=True,
    )


def _onnx() -> Case:
    import onnx as onnx_lib
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.RandomState(1).randn(4, 2).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return Case(
        "onnx",
        onnx,
        partial(onnx.save_model, proto),
        partial(onnx.log_model, proto),
        EXAMPLE,
        WRONG_SHAPE,
        onnx_lib.ModelProto,
        reference=lambda data: np.asarray(data) @ weights,
    )


def _pyfunc() -> Case:
    return Case(
        "python_function",
        pyfunc,
        lambda path, **options: pyfunc.save_model(path, python_model=Doubler(), **options),
        lambda name, **options: pyfunc.log_model(name, python_model=Doubler(), **options),
        EXAMPLE,
        WRONG_SHAPE,
        cairn.pyfunc.PyFuncModel,
        reference=lambda data: np.asarray(data) * 2,
        needs_pickle=True,
        pickled=lambda path: pyfunc.save_model(path, python_model=Doubler()),
        load_options={"allow_pickle": True},
    )


#: flavor (as named in cairn.flavors.registry.NATIVE_FLAVOR_MODULES) -> builder of its case.
BUILDERS: dict[str, Callable[[], Case]] = {
    "sklearn": _sklearn,
    "pytorch": _pytorch,
    "lightning": _lightning,
    "transformers": _transformers,
    "onnx": _onnx,
    "python_function": _pyfunc,
}


def test_every_flavor_has_a_case() -> None:
    assert set(BUILDERS) == set(registry.NATIVE_FLAVOR_MODULES) == set(FLAVOR_MODULES)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_env_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(safety.ALLOW_PICKLE_ENV, raising=False)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def case(request: pytest.FixtureRequest) -> Case:
    return BUILDERS[request.param]()


@pytest.fixture(scope="module")
def saved(case: Case, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The case's model saved once with its input example (tests read it, never change it)."""
    path = tmp_path_factory.mktemp(case.flavor) / "model"
    case.save(path, input_example=case.example)
    return path


def _mlmodel(model_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((model_dir / MLMODEL_FILE_NAME).read_text())


def _rows(output: Any) -> int:
    if isinstance(output, dict):
        return len(next(iter(output.values())))
    return len(output)


# -- the module ---------------------------------------------------------------------------------------


def test_module_exposes_the_protocol(case: Case) -> None:
    module = typing.cast(ModuleType, case.module)
    name = registry.NATIVE_FLAVOR_MODULES[case.flavor]
    assert isinstance(module, Flavor)
    assert (module.__name__, module.FLAVOR_NAME) == (name, case.flavor)
    assert registry.resolve_loader_module(name) == name
    hook: PyfuncLoader = module._load_pyfunc  # MLflow's pyfunc hook, not a Flavor member (see PyfuncLoader)
    inspect.signature(hook).bind("model-dir", None)


def _keyword_types(function: Callable[..., Any]) -> dict[str, Any]:
    """Every keyword ``function`` takes -> its type, with ``**options: Unpack[TD]`` expanded to TD's keys."""
    hints = typing.get_type_hints(function, include_extras=True)
    found: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            (options,) = typing.get_args(hints[parameter.name])  # Unpack[TD] -> TD
            found.update(typing.get_type_hints(options))
        elif parameter.kind is not parameter.VAR_POSITIONAL:
            found[parameter.name] = hints[parameter.name]
    return found


def test_log_model_takes_exactly_the_save_options(case: Case) -> None:
    """log_model accepts every option of save_model, with the same type, plus the log options: nothing drifts."""
    save = _keyword_types(case.module.save_model)
    log = _keyword_types(case.module.log_model)
    for positional in ("path", "name"):
        save.pop(positional, None)
        log.pop(positional, None)
    for recorded in SaveRecordOptions.__annotations__:  # set by log_model, not the caller's to pass
        del save[recorded]
    log_only = {key: log.pop(key) for key in LogOptions.__annotations__}
    assert log == save
    assert log_only == typing.get_type_hints(LogOptions)
    assert set(CommonSaveOptions.__annotations__) <= set(save)
    assert {k: save[k] for k in CommonSaveOptions.__annotations__} == typing.get_type_hints(CommonSaveOptions)


def test_save_model_refuses_an_unknown_option(case: Case, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'signatur'"):
        case.save(tmp_path / "model", signatur=None)
    assert not (tmp_path / "model" / MLMODEL_FILE_NAME).exists()


def test_log_model_refuses_an_unknown_option_before_touching_a_run(case: Case) -> None:
    with pytest.raises(TypeError, match="signatur"):
        case.log("model", signatur=None)
    assert cairn.active_run() is None


# -- the saved directory ------------------------------------------------------------------------------


def test_mlmodel_has_the_model_format_keys(case: Case, saved: Path) -> None:
    content = _mlmodel(saved)
    flavors = content["flavors"]
    assert case.flavor in flavors
    assert flavors["python_function"]["loader_module"] == case.loader_module
    assert len(content["model_uuid"]) == 32 and int(content["model_uuid"], 16) >= 0
    assert content["utc_time_created"]
    assert content["metadata"]["cairn_format"] == FORMAT_VERSION
    assert content.get("run_id") is None  # saved, not logged
    assert (saved / "requirements.txt").is_file() and (saved / "python_env.yaml").is_file()


def test_input_example_is_saved(case: Case, saved: Path) -> None:
    assert _mlmodel(saved)["saved_input_example_info"]["artifact_path"]
    loaded = load_input_example(saved)
    if isinstance(case.example, np.ndarray):
        np.testing.assert_array_equal(np.asarray(loaded), case.example)
    else:
        assert list(pd.DataFrame(loaded).iloc[:, 0]) == case.example


def test_signature_round_trips_and_is_enforced(case: Case, saved: Path) -> None:
    written = Model.load(saved).signature
    assert written is not None and written.inputs is not None
    assert _mlmodel(saved)["signature"] == written.to_dict()
    model = cairn.pyfunc.load_model(saved, allow_pickle=case.needs_pickle)
    assert model.metadata.signature == written
    with pytest.raises(SchemaMismatch):
        model.predict(case.wrong_input)


def test_pyfunc_predicts_the_input_example(case: Case, saved: Path) -> None:
    output = cairn.pyfunc.load_model(saved, allow_pickle=case.needs_pickle).predict(case.example)
    assert _rows(output) == len(case.example)
    if case.reference is not None:
        np.testing.assert_allclose(np.asarray(output), np.asarray(case.reference(case.example)), rtol=1e-5, atol=1e-6)


def test_default_save_writes_no_pickle_unless_it_must(case: Case, saved: Path) -> None:
    pickles = sorted(p.name for p in saved.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    assert pickles == (["python_model.pkl"] if case.needs_pickle else [])


# -- pickle refusal -----------------------------------------------------------------------------------


def test_a_pickled_model_is_refused_without_the_opt_in(case: Case, tmp_path: Path) -> None:
    if case.pickled is None:
        assert case.flavor == "onnx"  # a protobuf graph: no variant of an ONNX model is a pickle
        return
    path = tmp_path / "pickled"
    if case.pickle_refused_at_save:
        with pytest.raises(InvalidArgument, match="safetensors"):
            case.pickled(path)
        assert not (path / MLMODEL_FILE_NAME).exists()
        return
    case.pickled(path)
    for load in (case.module.load_model, cairn.pyfunc.load_model):
        with pytest.raises(UnsafeModel, match="allow_pickle=True"):
            load(str(path))
    assert cairn.pyfunc.load_model(path, allow_pickle=True).predict(EXAMPLE) is not None


# -- logging ------------------------------------------------------------------------------------------


def test_log_model_then_load_by_runs_uri(case: Case) -> None:
    with cairn.start_run() as run:
        info = case.log("model", input_example=case.example, registered_model_name=f"contract-{case.flavor}")
    run_id = run.info.run_id
    assert info.model_uri == f"runs:/{run_id}/model"
    assert info.registered_model_version == 1
    assert info.run_id == run_id and info.flavors.keys() >= {case.flavor, "python_function"}
    native = case.module.load_model(info.model_uri, **case.load_options)
    assert isinstance(native, case.native)
    logged = cairn.pyfunc.load_model(info.model_uri, allow_pickle=case.needs_pickle)
    assert logged.metadata.run_id == run_id and logged.metadata.artifact_path == "model"
    assert _rows(logged.predict(case.example)) == len(case.example)


def test_log_model_with_client_lands_in_that_store_only(case: Case, tmp_path: Path) -> None:
    """``client=`` (a shared log option): uploaded, recorded and registered in that client's store."""
    other = cairn.Client(f"sqlite:///{tmp_path / 'other' / 'cairn.db'}")
    run_id = other.create_run("0").info.run_id
    name = f"contract-{case.flavor}"
    info = case.log("model", input_example=case.example, registered_model_name=name, run_id=run_id, client=other)
    assert info.model_uri == f"runs:/{run_id}/model" and info.registered_model_version == 1
    assert other.get_model_version(name, 1).run_id == run_id
    [recorded] = json.loads(other.get_run(run_id).data.tags[LOGGED_MODELS_TAG])
    assert (recorded["run_id"], recorded["artifact_path"]) == (run_id, "model")
    local = other.download_artifacts(run_id, "model", dst_path=tmp_path / "download")
    logged = cairn.pyfunc.load_model(local, allow_pickle=case.needs_pickle)
    assert logged.metadata.run_id == run_id and _rows(logged.predict(case.example)) == len(case.example)
    fluent = cairn.Client()  # the default store: no run, no registered model, no artifact
    assert fluent.search_runs([e.experiment_id for e in fluent.search_experiments()]).items == []
    assert list(fluent.search_registered_models()) == []
    assert not (tmp_path / "cairn-runs" / "artifacts").exists() or not any(
        p.is_file() for p in (tmp_path / "cairn-runs" / "artifacts").rglob("*")
    )


def test_log_model_with_client_needs_the_run_id(case: Case, tmp_path: Path) -> None:
    other = cairn.Client(f"sqlite:///{tmp_path / 'other' / 'cairn.db'}")
    with pytest.raises(InvalidArgument, match="run_id"):
        case.log("model", client=other)
    assert cairn.active_run() is None


# -- MLflow interop -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow() -> ModuleType:
    try:
        import mlflow
        import mlflow.pyfunc
    except ImportError as exc:
        reason = f"mlflow is not installed (pip install 'cairn[interop]'): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the interop tests to run: {reason}")
        pytest.skip(reason)
    return mlflow


def test_mlflow_pyfunc_loads_the_cairn_model(
    case: Case, saved: Path, mlflow: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    if case.needs_pickle:
        monkeypatch.setenv(safety.ALLOW_PICKLE_ENV, "1")
    loaded = mlflow.pyfunc.load_model(str(saved))
    assert loaded.metadata.flavors["python_function"]["loader_module"] == case.loader_module
    output = loaded.predict(case.example)
    assert _rows(output) == len(case.example)
    if case.reference is not None:
        np.testing.assert_allclose(np.asarray(output), np.asarray(case.reference(case.example)), rtol=1e-5, atol=1e-6)
