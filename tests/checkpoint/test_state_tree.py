"""State trees: exact round trips through safetensors + JSON, and clear refusals."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from cairn.checkpoint.state_tree import flatten_state_tree, load_state_tree, save_state_tree
from cairn.errors import CheckpointCorrupt, InvalidArgument
from tests.checkpoint._helpers import TinyNet, assert_tree_identical, train_steps


def roundtrip(tree: Any, tmp_path: Path, name: str = "state") -> Any:
    save_state_tree(tree, tmp_path, name=name)
    return load_state_tree(tmp_path, name=name)


def test_model_state_dict_keeps_ordered_dict_metadata_and_readable_keys(tmp_path: Path) -> None:
    model = TinyNet()
    state = model.state_dict()
    restored = roundtrip(state, tmp_path, "model")
    assert_tree_identical(state, restored)
    assert restored._metadata == state._metadata  # module versions, used by load_state_dict hooks
    # The tensors file is a plain safetensors state dict under the parameter names.
    plain = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert set(plain) == set(state)
    assert torch.equal(plain["bn.num_batches_tracked"], state["bn.num_batches_tracked"])
    TinyNet().load_state_dict(restored)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
        lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.95), amsgrad=True),
        lambda p: torch.optim.AdamW(p, lr=1e-2),
    ],
    ids=["sgd-momentum", "adam-amsgrad", "adamw"],
)
def test_optimizer_state_after_real_steps(tmp_path: Path, make_optimizer: Any) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = make_optimizer(model.parameters())
    train_steps(model, optimizer, 3)
    state = optimizer.state_dict()
    assert all(type(k) is int for k in state["state"])  # the exactness under test: int keys stay ints
    restored = roundtrip(state, tmp_path, "optimizer")
    assert_tree_identical(state, restored)
    # ...and it loads into a fresh optimizer, which then steps exactly like the original.
    twin = TinyNet()
    twin.load_state_dict(model.state_dict())
    twin_opt = make_optimizer(twin.parameters())
    twin_opt.load_state_dict(restored)
    torch.manual_seed(1)  # same dropout masks for both
    train_steps(model, optimizer, 2)
    torch.manual_seed(1)
    train_steps(twin, twin_opt, 2)
    assert_tree_identical(model.state_dict(), twin.state_dict())


def _schedulers(opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "step": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        "onecycle": torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=20),
        "cosine-restarts": torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3),
        "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=1),
    }


@pytest.mark.parametrize("kind", ["step", "onecycle", "cosine-restarts", "plateau"])
def test_scheduler_state(tmp_path: Path, kind: str) -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = _schedulers(opt)[kind]
    for i in range(4):
        opt.step()
        sched.step(1.0 / (i + 1)) if kind == "plateau" else sched.step()
    state = sched.state_dict()
    restored = roundtrip(state, tmp_path, "scheduler")
    assert_tree_identical(state, restored)
    fresh = _schedulers(torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9))[kind]
    fresh.load_state_dict(restored)
    assert_tree_identical(fresh.state_dict(), state)


def test_plateau_scheduler_keeps_infinite_floats(tmp_path: Path) -> None:
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0))
    state = sched.state_dict()
    assert state["best"] == float("inf")
    assert roundtrip(state, tmp_path)["best"] == float("inf")
    text = (tmp_path / "state.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_grad_scaler_state_on_cpu(tmp_path: Path) -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        opt.zero_grad()
        scaler.scale(model(torch.ones(2, 3)).sum()).backward()
        scaler.step(opt)
        scaler.update()
    state = scaler.state_dict()
    assert state and isinstance(state["scale"], float)
    restored = roundtrip(state, tmp_path, "scaler")
    assert_tree_identical(state, restored)
    fresh = torch.amp.GradScaler("cpu")
    fresh.load_state_dict(restored)
    assert fresh.get_scale() == scaler.get_scale()
    assert fresh.state_dict() == state


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path: Path) -> None:
    model = Tied()
    state = model.state_dict()
    restored = roundtrip(state, tmp_path)
    assert len(safetensors.torch.load_file(tmp_path / "state.safetensors")) == 1
    assert restored["embed.weight"].data_ptr() == restored["head.weight"].data_ptr()
    assert_tree_identical(state, restored)
    twin = Tied()
    twin.load_state_dict(restored)
    assert twin.head.weight is twin.embed.weight and torch.equal(twin.embed.weight, model.embed.weight)


def test_overlapping_views_non_contiguous_zero_dim_and_dtypes(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tree = {
        "base": base,
        "row_view": base[1],  # overlaps base: stored as its own copy
        "transposed": base.t(),  # non-contiguous
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),  # zero stride
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 5),
        "bf16": torch.randn(3, 3).to(torch.bfloat16),
        "fp16": torch.tensor([float("nan"), -0.0, float("inf")], dtype=torch.float16),
        "int64": torch.tensor([2**62, -(2**62)]),
        "bool": torch.tensor([True, False, True]),
        "uint8": torch.arange(256, dtype=torch.uint8),
        "complex128": torch.randn(2, 2, dtype=torch.complex128),  # not a safetensors dtype: stored as bytes
        "param": nn.Parameter(torch.ones(2)),
        "frozen": nn.Parameter(torch.ones(2), requires_grad=False),
    }
    restored = roundtrip(tree, tmp_path)
    assert_tree_identical(tree, restored)
    assert type(restored["param"]) is nn.Parameter and restored["param"].requires_grad
    assert not restored["frozen"].requires_grad
    assert restored["transposed"].is_contiguous()


def test_scalars_and_containers_keep_exact_types(tmp_path: Path) -> None:
    tree = {
        3: "int key",
        "3": "str key",
        None: [1, 1.0, -0.0, 1e300, float("nan"), float("-inf"), True, None, "", "ünïcode"],
        (1, "a"): (),
        "nested": OrderedDict([("b", [()]), ("a", ([1], (2,)))]),
        "size": torch.Size([2, 3]),
        "dtype": torch.bfloat16,
        "device": torch.device("cpu"),
        "big": 2**100,
        False: {},
    }
    assert_tree_identical(tree, roundtrip(tree, tmp_path))


def test_numpy_leaves(tmp_path: Path) -> None:
    tree = {
        "f32": np.linspace(0, 1, 7, dtype=np.float32),
        "big_endian": np.arange(5, dtype=">i4"),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "u32": np.arange(4, dtype=np.uint32),
        "bool": np.array([True, False]),
        "zero_dim": np.array(2.5),
        "np_scalar": np.float64(0.1),
        "np_int": np.int16(-3),
        "complex": np.array([1 + 2j]),
    }
    restored = roundtrip(tree, tmp_path)
    assert_tree_identical(tree, restored)
    assert restored["big_endian"].dtype.str == ">i4"


@pytest.mark.parametrize(
    ("tree", "path", "type_name"),
    [
        ({"state": {3: {"momentum_buffer": object()}}}, "optimizer.state.3.momentum_buffer", "builtins.object"),
        ({"param_groups": [{"lr": {1, 2}}]}, "optimizer.param_groups.0.lr", "builtins.set"),
        ({"fn": len}, "optimizer.fn", "builtin_function_or_method"),
        ({"arr": np.array(["a"])}, "optimizer.arr", "<U1"),
    ],
)
def test_unsupported_leaf_names_its_path_and_type(tree: Any, path: str, type_name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        flatten_state_tree(tree, root="optimizer")
    assert path in str(info.value) and type_name in str(info.value)


def test_unsupported_key_and_cycle() -> None:
    with pytest.raises(InvalidArgument, match=r"state\.inner: dict keys of type frozenset"):
        flatten_state_tree({"inner": {frozenset(): 1}})
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidArgument, match="cycle"):
        flatten_state_tree({"loop": loop})


def test_meta_device_tensor_is_a_clear_error(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = nn.Linear(3, 2)
    with pytest.raises(InvalidArgument, match=r"model\.weight: tensor is on the 'meta' device"):
        save_state_tree(model.state_dict(), tmp_path, name="model")
    assert not (tmp_path / "model.json").exists()


def test_snapshot_copy_is_independent_of_later_updates() -> None:
    weight = torch.zeros(3)
    flat = flatten_state_tree({"w": weight, "t": weight.t()}, copy=True)
    weight.add_(1)
    assert torch.equal(flat.tensors["w"], torch.zeros(3))
    shared = flatten_state_tree({"w": weight})
    assert shared.tensors["w"].data_ptr() == weight.data_ptr()  # without copy: no copy taken


def test_damaged_files_are_reported_as_corrupt(tmp_path: Path) -> None:
    save_state_tree({"w": torch.ones(3)}, tmp_path)
    structure = json.loads((tmp_path / "state.json").read_text())
    structure["tree"]["items"][0][1]["shape"] = [4]
    (tmp_path / "state.json").write_text(json.dumps(structure))
    with pytest.raises(CheckpointCorrupt, match="structure says"):
        load_state_tree(tmp_path)
    (tmp_path / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointCorrupt, match="cannot read tensors"):
        load_state_tree(tmp_path)
    (tmp_path / "state.json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointCorrupt, match=r"not a cairn\.state_tree"):
        load_state_tree(tmp_path)
