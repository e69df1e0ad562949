"""PyTorch models as users write them: logged under autolog, defined in ``__main__``, exported with dynamic
dimensions, built from config dataclasses, returning ``None`` outputs; every load path gives eval mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'cairn[pytorch]')")

from torch import nn  # noqa: E402

import cairn  # noqa: E402
import cairn.pyfunc  # noqa: E402
from cairn.errors import InvalidArgument, UnsafeModel  # noqa: E402
from cairn.flavors import pytorch as flavor  # noqa: E402
from cairn.models import Model  # noqa: E402
from cairn.models.hashes import MANIFEST_SHA256_KEY, write_files_manifest  # noqa: E402


def run_script(source: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as ``__main__`` in a fresh interpreter, in ``cwd``, with no CAIRN_* settings inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env["CAIRN_CACHE_DIR"] = str(cwd / ".cairn-cache")
    script = cwd / "script.py"
    script.write_text(textwrap.dedent(source), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    return result


MAIN_MODEL = """
import json, sys
import torch
from torch import nn
import cairn

class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 50)

    def forward(self, idx):
        return self.fc(self.drop(self.emb(idx)))
"""


@pytest.mark.parametrize("autolog", [True, False], ids=["autolog", "plain"])
def test_a_main_model_logged_under_autolog_loads_without_the_opt_in(tmp_path: Path, autolog: bool) -> None:
    source = MAIN_MODEL + textwrap.dedent(f"""
        if {autolog}:
            cairn.pytorch.autolog()
        torch.manual_seed(0)
        model = TinyLM()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        example = torch.randint(0, 50, (2, 8))
        with cairn.start_run() as run:
            # before any training step, autolog's forward hook captures an example from the first forward
            first = cairn.pytorch.log_model(model, "untrained", input_example=example)
            for _ in range(3):
                opt.zero_grad(); model(torch.randint(0, 50, (6, 8))).sum().backward(); opt.step()
            info = cairn.pytorch.log_model(model, "model", input_example=example)
        assert cairn.pytorch.load_model(first.model_uri) is not None
        loaded = cairn.pytorch.load_model(info.model_uri)
        x = torch.randint(0, 50, (7, 8))  # a batch larger than autolog's captured example rows
        model.eval()
        with torch.no_grad():
            same = torch.allclose(loaded(x), model(x))
        conf = cairn.models.Model.load(cairn.models.loading.resolve_local_model_dir(info.model_uri)).flavors
        print(json.dumps({{"same": same, "arch": conf["pytorch"]["architecture"]}}))
    """)
    out = json.loads(run_script(source, tmp_path).stdout.strip().splitlines()[-1])
    assert out == {"same": True, "arch": "export"}


def test_export_under_autolog_leaves_no_hook_in_the_graph(tmp_path: Path) -> None:
    """autolog's global forward hooks (which slice an example out of the input) must not be traced."""
    from cairn.flavors import _torch_export

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    calls: list[str] = []
    from torch.nn.modules import module as module_module

    handle = module_module.register_module_forward_pre_hook(lambda m, a: calls.append(type(m).__name__))
    own = Net()
    own_handle = own.register_forward_pre_hook(lambda m, a: calls.append("own"))  # the user's: kept
    try:
        program = _torch_export.export_module(own, torch.randn(3, 4))
    finally:
        handle.remove()
        own_handle.remove()
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert not any("slice" in t for t in targets)
    assert "Net" not in calls and "Linear" not in calls  # the global hook did not run during export
    assert "own" in calls


def test_export_keeps_batch_and_sequence_dynamic_and_records_minus_one(tmp_path: Path) -> None:
    source = MAIN_MODEL + textwrap.dedent("""
        model = TinyLM()
        info = cairn.pytorch.save_model(model, "m", input_example=torch.randint(0, 50, (2, 8)))
        loaded = cairn.pytorch.load_model("m")
        print(json.dumps({
            "shape": list(loaded(torch.randint(0, 50, (3, 10))).shape),
            "inputs": info.signature.inputs.to_dict(),
            "outputs": info.signature.outputs.to_dict(),
        }))
    """)
    out = json.loads(run_script(source, tmp_path).stdout.strip().splitlines()[-1])
    assert out["shape"] == [3, 10, 50]
    assert out["inputs"][0]["tensor-spec"]["shape"] == [-1, -1]
    assert out["outputs"][0]["tensor-spec"]["shape"] == [-1, -1, 50]


def test_a_dimension_the_model_fixes_stays_static(tmp_path: Path) -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1))

    info = flavor.save_model(Flat(), tmp_path / "m", input_example=torch.randn(2, 3, 4), export=True)
    assert info.signature is not None
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == [-1, 3, 4]
    loaded = flavor.load_model(tmp_path / "m")
    assert loaded(torch.randn(5, 3, 4)).shape == (5, 2)


class WithDropout(nn.Module):
    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(n, n)
        self.drop = nn.Dropout(0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc(x))


def make_with_dropout(n: int = 4) -> WithDropout:
    return WithDropout(n)


@pytest.mark.parametrize("how", ["class", "factory", "export"])
def test_every_load_path_gives_eval_mode(tmp_path: Path, how: str) -> None:
    model = WithDropout().train()
    kwargs: dict[str, Any] = {"input_example": torch.randn(3, 4)}
    if how == "factory":
        kwargs["model_factory"] = make_with_dropout
    elif how == "export":
        kwargs["export"] = True
    flavor.save_model(model, tmp_path / "m", **kwargs)
    assert model.training  # the caller's model keeps its mode
    loaded = flavor.load_model(tmp_path / "m", trusted_modules=(__name__,))
    assert not any(m.training for m in loaded.modules())
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), loaded(x))  # dropout is off


# -- config dataclasses as constructor arguments --------------------------------------------------------------

GPT_MODULE = """
from dataclasses import dataclass, field
import torch
from torch import nn

@dataclass
class GPTConfig:
    vocab_size: int = 50
    n_embd: int = 8
    block_size: int = 16
    bias: bool = True
    dims: list = field(default_factory=lambda: [1, 2])

class Other:
    pass

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert isinstance(config, GPTConfig), type(config)
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)

    def forward(self, idx, targets=None):
        logits = self.head(self.wte(idx))
        loss = None if targets is None else logits.sum()
        return logits, loss

def make_gpt(config):
    return GPT(config)
"""


@pytest.fixture
def gpt_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "nanogpt_model.py").write_text(GPT_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(package))
    import importlib

    module = importlib.import_module("nanogpt_model")
    yield module
    sys.modules.pop("nanogpt_model", None)


def test_a_config_dataclass_argument_round_trips(tmp_path: Path, gpt_module: Any) -> None:
    config = gpt_module.GPTConfig(vocab_size=30, n_embd=6, bias=False, dims=[3])
    model = gpt_module.GPT(config)
    info = flavor.save_model(
        model,
        tmp_path / "m",
        module_class="nanogpt_model:GPT",
        init_kwargs={"config": config},
        input_example=torch.randint(0, 30, (2, 5)),
    )
    conf = info.flavors["pytorch"]
    assert conf["architecture"] == "class"
    assert conf["init_kwargs"] == {
        "config": {
            "__dataclass__": "nanogpt_model:GPTConfig",
            "fields": {"vocab_size": 30, "n_embd": 6, "block_size": 16, "bias": False, "dims": [3]},
        }
    }
    loaded = flavor.load_model(tmp_path / "m")
    assert isinstance(loaded.config, gpt_module.GPTConfig) and loaded.config == config
    assert not loaded.training
    x = torch.randint(0, 30, (2, 5))
    assert torch.equal(loaded(x)[0], model.eval()(x)[0])


def test_a_config_dataclass_round_trips_for_a_factory(tmp_path: Path, gpt_module: Any) -> None:
    config = gpt_module.GPTConfig(vocab_size=12)
    flavor.save_model(
        gpt_module.GPT(config), tmp_path / "m", model_factory="nanogpt_model:make_gpt", init_kwargs={"config": config}
    )
    loaded = flavor.load_model(tmp_path / "m", trusted_modules=("nanogpt_model",))
    assert loaded.config == config


def test_a_config_from_another_module_is_refused_at_save(tmp_path: Path, gpt_module: Any) -> None:
    from dataclasses import make_dataclass

    Foreign = make_dataclass("Foreign", [("vocab_size", int)])  # defined in dataclasses' "types" module
    with pytest.raises(InvalidArgument, match="dataclass"):
        flavor.save_model(
            gpt_module.GPT(gpt_module.GPTConfig()),
            tmp_path / "m",
            module_class="nanogpt_model:GPT",
            init_kwargs={"config": Foreign(3)},
        )


@pytest.mark.parametrize(
    "name",
    ["nanogpt_model:Other", "nanogpt_model:make_gpt", "os:PathLike", "dataclasses:Field", "nanogpt_model:GPT"],
)
def test_a_hostile_typed_argument_is_refused_at_load(tmp_path: Path, gpt_module: Any, name: str) -> None:
    config = gpt_module.GPTConfig()
    flavor.save_model(
        gpt_module.GPT(config), tmp_path / "m", module_class="nanogpt_model:GPT", init_kwargs={"config": config}
    )
    mlmodel = tmp_path / "m" / "MLmodel"
    data = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    data["flavors"]["pytorch"]["init_kwargs"]["config"]["__dataclass__"] = name
    mlmodel.write_text(yaml.safe_dump(data), encoding="utf-8")
    meta = Model.load(tmp_path / "m")  # an attacker recomputes the file hashes
    meta.metadata[MANIFEST_SHA256_KEY] = write_files_manifest(tmp_path / "m")
    meta.save(mlmodel)
    with pytest.raises(UnsafeModel, match="dataclass"):
        flavor.load_model(tmp_path / "m")


# -- None outputs through pyfunc -------------------------------------------------------------------------------


def test_pyfunc_drops_none_outputs(tmp_path: Path, gpt_module: Any) -> None:
    config = gpt_module.GPTConfig()
    model = gpt_module.GPT(config)
    x = torch.randint(0, 50, (2, 5))
    info = flavor.save_model(
        model, tmp_path / "m", module_class="nanogpt_model:GPT", init_kwargs={"config": config}, input_example=x
    )
    assert info.signature is not None and info.signature.outputs is not None
    assert [spec["name"] for spec in info.signature.outputs.to_dict()] == ["output_0"]
    predicted = cairn.pyfunc.load_model(str(tmp_path / "m")).predict(x.numpy())
    assert list(predicted) == ["output_0"]
    np.testing.assert_allclose(predicted["output_0"], model.eval()(x)[0].detach().numpy(), rtol=1e-6)


def test_pyfunc_of_a_model_returning_none(tmp_path: Path) -> None:
    class Nothing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> None:
            return None

    flavor.save_model(Nothing(), tmp_path / "m", input_example=torch.randn(2, 2), export=True)
    assert cairn.pyfunc.load_model(str(tmp_path / "m")).predict(np.zeros((2, 2), np.float32)) is None
    assert Model.load(tmp_path / "m").signature is not None


def test_a_one_row_example_still_gives_a_dynamic_batch(tmp_path: Path) -> None:
    """torch specializes size-1 dimensions; the export tries size-oblivious shapes first."""
    model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 4))
    info = flavor.save_model(model, tmp_path / "m", input_example=torch.randint(0, 50, (1, 8)), export=True)
    assert info.signature is not None
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == [-1, -1]
    loaded = flavor.load_model(tmp_path / "m")
    x = torch.randint(0, 50, (3, 5))
    assert torch.allclose(loaded(x), model.eval()(x))
    predicted = cairn.pyfunc.load_model(str(tmp_path / "m")).predict(x.numpy())
    assert predicted.shape == (3, 5, 4)
