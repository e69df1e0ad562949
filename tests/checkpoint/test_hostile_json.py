"""A checkpoint whose JSON is malformed but correctly hashed (the attacker recomputed the manifest).

Whatever shape the JSON takes (wrong types, missing keys, deep nesting, huge numbers, wrong tensor
references, out-of-range steps, RNG states of the wrong length or dtype), reading the checkpoint
raises :class:`CheckpointCorrupt` naming the file, and no other exception.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cairn.checkpoint import (
    ResumableLoader,
    capture_training_state,
    load_component,
    read_manifest,
    restore_training_state,
    scan_checkpoints,
    write_checkpoint,
)
from cairn.checkpoint.manifest import MANIFEST_NAME
from cairn.checkpoint.state_tree import load_state_tree
from cairn.errors import CheckpointCorrupt
from tests.checkpoint._helpers import TinyNet, train_steps

Json = Any
Mutation = Callable[[Json], Json]
"""Takes the parsed JSON of a file, returns what to write instead: a JSON value, or a ``str`` written as is."""

_DEEP = 100_000


# -- building and damaging a checkpoint ------------------------------------------------------------


def _objects(seed: int = 0) -> tuple[TinyNet, torch.optim.Optimizer, Any, ResumableLoader]:
    torch.manual_seed(seed)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    dataset = TensorDataset(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    loader = ResumableLoader(DataLoader(dataset, batch_size=4, shuffle=True))
    return model, optimizer, scheduler, loader


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real checkpoint with every component: model, optimizer, scheduler, extra, loader position, RNG."""
    model, optimizer, scheduler, loader = _objects()
    train_steps(model, optimizer, 2, scheduler)
    next(iter(loader))
    extra = {"best": 0.5, "history": np.arange(3, dtype=np.float32), "where": torch.device("cpu")}
    state = capture_training_state(
        model=model, optimizer=optimizer, scheduler=scheduler, step=2, epoch=0, extra=extra, dataloader=loader
    )
    return write_checkpoint(state, tmp_path_factory.mktemp("pristine")).path


def _damage(pristine: Path, target: Path, name: str, mutate: Mutation) -> Path:
    """Copy the checkpoint, rewrite ``name`` with ``mutate`` and record its new size and sha256 in the manifest."""
    checkpoint = target / pristine.name
    shutil.copytree(pristine, checkpoint)
    path = checkpoint / name
    replaced = mutate(json.loads(path.read_text(encoding="utf-8")))
    path.write_text(replaced if isinstance(replaced, str) else json.dumps(replaced), encoding="utf-8")
    if name != MANIFEST_NAME:
        manifest_path = checkpoint / MANIFEST_NAME
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        data = path.read_bytes()
        manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
        read_manifest(checkpoint)  # the hashes agree: only the structure is wrong
    return checkpoint


def _restore_everything(checkpoint: Path) -> None:
    model, optimizer, scheduler, loader = _objects(seed=1)
    restored = restore_training_state(
        checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, dataloader=loader
    )
    for batch in restored.fast_forward(loader.loader):
        assert batch is not None


# -- mutations ---------------------------------------------------------------------------------------


def _set(**values: Any) -> Mutation:
    def mutate(data: Json) -> Json:
        data.update(values)
        return data

    return mutate


def _drop(key: str) -> Mutation:
    def mutate(data: Json) -> Json:
        del data[key]
        return data

    return mutate


def _item(node: Json, key: str) -> Json:
    """The value node of dict node ``node`` under the (plain string) key ``key``."""
    for pair in node["items"]:
        if pair[0] == key:
            return pair[1]
    raise KeyError(key)


def _tree(edit: Callable[[Json], None]) -> Mutation:
    """Edit the ``tree`` node of a structure file in place."""

    def mutate(data: Json) -> Json:
        edit(data["tree"])
        return data

    return mutate


def _tensor(entry: str, /, **changes: Any) -> Mutation:
    """Change (``None`` deletes) fields of the tensor node of a dict-rooted tree stored under ``entry``."""

    def edit(tree: Json) -> None:
        node = _item(tree, entry)
        for field, value in changes.items():
            if value is None:
                node.pop(field, None)
            else:
                node[field] = value

    return _tree(edit)


def _replace_item(key: str, value: Json) -> Mutation:
    def edit(tree: Json) -> None:
        for pair in tree["items"]:
            if pair[0] == key:
                pair[1] = value
                return
        raise KeyError(key)

    return _tree(edit)


def _raw_tree(text: str) -> Mutation:
    """Put ``text`` (raw JSON, possibly too deep for any parser) where the tree was."""

    def mutate(data: Json) -> str:
        return json.dumps({**data, "tree": "@@"}).replace('"@@"', text)

    return mutate


def _nested_lists(depth: int) -> str:
    return '{"$":"list","items":[' * depth + "1" + "]}" * depth


def _rng(edit: Callable[[Json], None]) -> Mutation:
    """Edit the rng tree (a dict node with python, numpy and torch entries) in place."""
    return _tree(edit)


def _python_state(tree: Json) -> Json:
    return _item(tree, "python")["items"]  # [version, {"$": "tuple", "items": [625 ints]}, gauss]


def _python_words(count: int, value: int | None = None) -> Callable[[Json], None]:
    def edit(tree: Json) -> None:
        words = _python_state(tree)[1]["items"]
        words[:] = words[:count] if value is None else [value] * count

    return edit


def _numpy_field(index: int, value: Json) -> Callable[[Json], None]:
    def edit(tree: Json) -> None:
        _item(tree, "numpy")["items"][index] = value

    return edit


def _torch_state_from_numpy(tree: Json) -> None:
    """Make the torch state point at the numpy state's tensor (a uint32 array of 624): valid reference, wrong state."""
    numpy_array = _item(tree, "numpy")["items"][1]
    reference = {key: value for key, value in numpy_array.items() if key in ("key", "dtype", "shape", "encoding")}
    _replace_in(tree, "torch", {"$": "tensor", **reference})


def _replace_in(tree: Json, key: str, value: Json) -> None:
    for pair in tree["items"]:
        if pair[0] == key:
            pair[1] = value


def _first_model_tensor(**changes: Any) -> Mutation:
    return _tensor("fc1.weight", **changes)


def _model_metadata(value: Json) -> Mutation:
    def edit(tree: Json) -> None:
        tree["metadata"] = value

    return _tree(edit)


def _loader(edit: Callable[[Json], None]) -> Mutation:
    return _tree(edit)


def _loader_batch(value: Json) -> Callable[[Json], None]:
    def edit(tree: Json) -> None:
        _replace_in(tree, "batch_in_epoch", value)

    return edit


def _loader_generators(value: Json) -> Callable[[Json], None]:
    def edit(tree: Json) -> None:
        _replace_in(_item(tree, "epoch_start"), "generators", value)

    return edit


def _loader_rng(edit_rng: Callable[[Json], None]) -> Callable[[Json], None]:
    def edit(tree: Json) -> None:
        edit_rng(_item(_item(tree, "epoch_start"), "rng"))

    return edit


def _manifest_file(rel: str) -> Mutation:
    def mutate(data: Json) -> Json:
        data["files"][rel] = {"size": 1, "sha256": "0" * 64}
        return data

    return mutate


_CASES: dict[str, tuple[str, Mutation]] = {
    # training_state.json
    "state: not an object": ("training_state.json", lambda data: [data]),
    "state: step is a string": ("training_state.json", _set(step="2")),
    "state: step is a float": ("training_state.json", _set(step=2.0)),
    "state: step is a bool": ("training_state.json", _set(step=True)),
    "state: negative step": ("training_state.json", _set(step=-1)),
    "state: huge step": ("training_state.json", _set(step=2**70)),
    "state: negative epoch": ("training_state.json", _set(epoch=-3)),
    "state: epoch is a list": ("training_state.json", _set(epoch=[0])),
    "state: batch_in_epoch is a string": ("training_state.json", _set(batch_in_epoch="1")),
    "state: run_id is a number": ("training_state.json", _set(run_id=7)),
    "state: components is an object": ("training_state.json", _set(components={"model": 1})),
    "state: component is an object": ("training_state.json", _set(components=[{"model": 1}])),
    "state: component escapes the directory": ("training_state.json", _set(components=["../pristine"])),
    "state: component without files": ("training_state.json", _set(components=["model", "ghost"])),
    "state: classes is a list": ("training_state.json", _set(classes=["torch.optim.Adam"])),
    "state: class is a number": ("training_state.json", _set(classes={"optimizer": 5})),
    "state: missing components": ("training_state.json", _drop("components")),
    "state: huge number literal": (
        "training_state.json",
        lambda data: json.dumps(data)[:-1] + ', "x": 1' + "0" * 5000 + "}",
    ),
    # model.json (a state tree)
    "tree: not an object": ("model.json", lambda data: [data]),
    "tree: wrong version": ("model.json", _set(version="1")),
    "tree: deeply nested lists": ("model.json", _raw_tree(_nested_lists(_DEEP))),
    "tree: deeply nested raw arrays": ("model.json", _raw_tree("[" * _DEEP + "]" * _DEEP)),
    "tree: nested lists deeper than cairn writes": ("model.json", _raw_tree(_nested_lists(500))),
    "tree: unknown node type": ("model.json", _replace_item("fc1.weight", {"$": "pickle", "value": "x"})),
    "tree: node is an array": ("model.json", _replace_item("fc1.weight", [1, 2])),
    "tree: list without items": ("model.json", _replace_item("fc1.weight", {"$": "list"})),
    "tree: items is an object": ("model.json", _replace_item("fc1.weight", {"$": "tuple", "items": {"a": 1}})),
    "tree: dict item is not a pair": ("model.json", _tree(lambda tree: tree["items"].append([1, 2, 3]))),
    "tree: unhashable dict key": (
        "model.json",
        _tree(lambda tree: tree["items"].append([{"$": "list", "items": []}, 1])),
    ),
    "tree: tensor as dict key": (
        "model.json",
        _tree(lambda tree: tree["items"].append([_item(tree, "fc1.bias"), 1])),
    ),
    "tree: metadata on a plain dict": ("model.json", _tree(lambda tree: tree.update({"$": "dict"}))),
    "tree: metadata is a list": ("model.json", _model_metadata({"$": "list", "items": [1]})),
    "tree: metadata version is a string": (
        "model.json",
        _model_metadata({"$": "dict", "items": [["bn", {"$": "dict", "items": [["version", "2"]]}]]}),
    ),
    "tree: bad float": ("model.json", _replace_item("fc1.weight", {"$": "float", "value": "1e999999"})),
    "tree: bad device": ("model.json", _replace_item("fc1.weight", {"$": "device", "value": "quantum:0"})),
    "tree: huge device index": ("model.json", _replace_item("fc1.weight", {"$": "device", "value": "cpu:" + "9" * 30})),
    "tree: dtype node of a non-dtype": ("model.json", _replace_item("fc1.weight", {"$": "dtype", "value": "Tensor"})),
    "tree: size of strings": ("model.json", _replace_item("fc1.weight", {"$": "size", "items": ["a"]})),
    "tree: negative size": ("model.json", _replace_item("fc1.weight", {"$": "size", "items": [-1]})),
    "tree: tensor key missing": ("model.json", _first_model_tensor(key=None)),
    "tree: tensor key is a number": ("model.json", _first_model_tensor(key=3)),
    "tree: tensor key unknown": ("model.json", _first_model_tensor(key="nothing.here")),
    "tree: tensor key of another shape": ("model.json", _first_model_tensor(key="fc2.weight")),
    "tree: tensor dtype unknown": ("model.json", _first_model_tensor(dtype="float99")),
    "tree: tensor dtype not a dtype": ("model.json", _first_model_tensor(dtype="Tensor")),
    "tree: tensor dtype is a number": ("model.json", _first_model_tensor(dtype=7)),
    "tree: tensor shape missing": ("model.json", _first_model_tensor(shape=None)),
    "tree: tensor shape of strings": ("model.json", _first_model_tensor(shape=["8", "4"])),
    "tree: tensor shape negative": ("model.json", _first_model_tensor(shape=[-8, -4])),
    "tree: tensor shape huge": ("model.json", _first_model_tensor(shape=[2**62, 2**62])),
    "tree: tensor shape of floats": ("model.json", _first_model_tensor(shape=[8.0, 4.0])),
    "tree: tensor shape of infinities": (
        "model.json",
        lambda data: json.dumps(_first_model_tensor(shape=[0])(data)).replace('"shape": [0]', '"shape": [1e999]'),
    ),
    "tree: raw bytes claimed for a float tensor": ("model.json", _first_model_tensor(encoding="bytes")),
    "tree: parameter flag is a string": ("model.json", _first_model_tensor(parameter="yes")),
    "tree: integer tensor requires grad": ("model.json", _tensor("bn.num_batches_tracked", requires_grad=True)),
    "tree: one key with two shapes": (
        "model.json",
        _tree(lambda tree: tree["items"].append(["twin", {**_item(tree, "fc1.weight"), "shape": [32]}])),
    ),
    # extra.json (numpy arrays and devices)
    "extra: numpy dtype object": ("extra.json", _tensor("history", numpy_dtype="|O")),
    "extra: numpy dtype structured": ("extra.json", _tensor("history", numpy_dtype="i4,i4")),
    "extra: numpy dtype of another size": ("extra.json", _tensor("history", numpy_dtype="<f8")),
    "extra: numpy dtype is a number": ("extra.json", _tensor("history", numpy_dtype=5)),
    "extra: numpy dtype is a list": ("extra.json", _tensor("history", numpy_dtype=[["a", "<i4"]])),
    "extra: numpy scalar with a shape": ("extra.json", _tensor("history", scalar=True)),
    # rng.json
    "rng: not a dict": ("rng.json", _replace_item("python", 1)),
    "rng: tree is a list": ("rng.json", _tree(lambda tree: tree.update({"$": "list", "items": [1, 2, 3]}))),
    "rng: torch state missing": ("rng.json", _tree(lambda tree: tree["items"].pop())),
    "rng: python state too short": ("rng.json", _rng(_python_words(10))),
    "rng: python state of huge words": ("rng.json", _rng(_python_words(625, 2**40))),
    "rng: python state of negative words": ("rng.json", _rng(_python_words(625, -1))),
    "rng: python version unknown": ("rng.json", _rng(lambda tree: _python_state(tree).__setitem__(0, 99))),
    "rng: python gauss is a string": ("rng.json", _rng(lambda tree: _python_state(tree).__setitem__(2, "x"))),
    "rng: numpy algorithm unknown": ("rng.json", _rng(_numpy_field(0, "PCG64"))),
    "rng: numpy position huge": ("rng.json", _rng(_numpy_field(2, 2**70))),
    "rng: numpy position negative": ("rng.json", _rng(_numpy_field(2, -5))),
    "rng: numpy gauss flag is a string": ("rng.json", _rng(_numpy_field(3, "1"))),
    "rng: numpy array is a list": ("rng.json", _rng(_numpy_field(1, {"$": "list", "items": [1, 2]}))),
    "rng: torch state of the wrong dtype and length": ("rng.json", _rng(_torch_state_from_numpy)),
    "rng: torch state is a number": ("rng.json", _rng(lambda tree: _replace_in(tree, "torch", 1.5))),
    "rng: cuda states not a list": ("rng.json", _rng(lambda tree: tree["items"].append(["cuda", 3]))),
    # dataloader.json
    "loader: negative batch_in_epoch": ("dataloader.json", _loader(_loader_batch(-2))),
    "loader: huge batch_in_epoch": ("dataloader.json", _loader(_loader_batch(2**70))),
    "loader: batch_in_epoch is a float": ("dataloader.json", _loader(_loader_batch(1.0))),
    "loader: generators is a list": ("dataloader.json", _loader(_loader_generators({"$": "list", "items": []}))),
    "loader: generator is a number": (
        "dataloader.json",
        _loader(_loader_generators({"$": "dict", "items": [["loader", 1]]})),
    ),
    "loader: epoch-start RNG too short": ("dataloader.json", _loader(_loader_rng(_python_words(3)))),
    "loader: epoch-start torch state wrong": ("dataloader.json", _loader(_loader_rng(_torch_state_from_numpy))),
    # manifest.json
    "manifest: not an object": (MANIFEST_NAME, lambda data: [data]),
    "manifest: negative step": (MANIFEST_NAME, _set(step=-1)),
    "manifest: huge step": (MANIFEST_NAME, _set(step=2**70)),
    "manifest: epoch is a string": (MANIFEST_NAME, _set(epoch="0")),
    "manifest: metric is a huge integer": (MANIFEST_NAME, _set(metrics={"loss": 10**400})),
    "manifest: metric is a list": (MANIFEST_NAME, _set(metrics={"loss": [1]})),
    "manifest: files is a list": (MANIFEST_NAME, _set(files=[])),
    "manifest: file path with a NUL byte": (MANIFEST_NAME, _manifest_file("model\u0000.json")),
    "manifest: file path escaping": (MANIFEST_NAME, _manifest_file("../x")),
    "manifest: negative file size": (
        MANIFEST_NAME,
        lambda data: _set(files={**data["files"], "model.json": {"size": -1, "sha256": "0" * 64}})(data),
    ),
    "manifest: deeply nested metadata": (
        MANIFEST_NAME,
        lambda data: json.dumps({**data, "metadata": "@@"}).replace('"@@"', "[" * _DEEP + "]" * _DEEP),
    ),
}


@pytest.fixture(params=sorted(_CASES), ids=lambda case: case.replace(" ", "_").replace(":", ""))
def damaged(request: pytest.FixtureRequest, pristine: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    name, mutate = _CASES[request.param]
    yield _damage(pristine, tmp_path, name, mutate), name


def test_hostile_json_is_refused_as_corrupt_naming_the_file(damaged: tuple[Path, str]) -> None:
    checkpoint, name = damaged
    with pytest.raises(CheckpointCorrupt) as caught:
        _restore_everything(checkpoint)
    assert name in str(caught.value), str(caught.value)


def test_hostile_json_is_refused_by_every_reader(damaged: tuple[Path, str]) -> None:
    """The other entry points: listing (which skips a damaged manifest) and reading one tree alone."""
    checkpoint, name = damaged
    if name == MANIFEST_NAME:
        assert scan_checkpoints(checkpoint.parent) == []
        with pytest.raises(CheckpointCorrupt, match=name):
            read_manifest(checkpoint)
    elif name in ("model.json", "extra.json"):  # trees whose every check is structural
        component = name.removesuffix(".json")
        with pytest.raises(CheckpointCorrupt, match=name):
            load_component(checkpoint, component)
        with pytest.raises(CheckpointCorrupt, match=name):
            load_state_tree(checkpoint, name=component)


def test_the_pristine_checkpoint_restores(pristine: Path) -> None:
    _restore_everything(pristine)
