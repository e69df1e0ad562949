"""``client=`` reaches the layers below the integrations: the final model of plain-PyTorch autolog and of
``CairnCallback`` is logged (recorded, registered) through the integration's client; a ``RunLeased`` raised
inside autolog's own code reaches the user."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import cairn
import cairn.transformers
from cairn.autolog import pytorch as autolog_pytorch
from cairn.errors import RunLeased
from cairn.models.packaging import LOGGED_MODELS_TAG
from cairn.tracking.client import Client
from tests.autolog.test_pytorch_autolog import Net, _loader
from tests.autolog.test_transformers_autolog import make_trainer
from tests.flavors.test_transformers import make_tokenizer


@pytest.fixture(autouse=True)
def _disable_after() -> Iterator[None]:
    yield
    autolog_pytorch.autolog(disable=True)


def _other_client(tmp_path: Path) -> Client:
    return Client(f"sqlite:///{tmp_path / 'other' / 'cairn.db'}")


def _fluent_store_is_empty() -> bool:
    fluent = Client()
    runs = fluent.search_runs([e.experiment_id for e in fluent.search_experiments()]).items
    return not runs and not fluent.search_registered_models()


def _train(steps: int, model: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = model or Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    done = 0
    while done < steps:
        for x, y in _loader():
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return model


def test_pytorch_autolog_client_logs_the_final_model_as_a_logged_model_of_that_store(tmp_path: Path) -> None:
    other = _other_client(tmp_path)
    autolog_pytorch.autolog(client=other)
    model = _train(4)
    autolog_pytorch.autolog(disable=True)  # ends the run: the model is logged into the client's store
    [run] = other.search_runs(["0"]).items
    run_id = run.info.run_id
    [recorded] = json.loads(run.data.tags[LOGGED_MODELS_TAG])  # the MLflow model history of that run
    assert (recorded["run_id"], recorded["artifact_path"]) == (run_id, "model")
    local = Path(other.download_artifacts(run_id, "model", dst_path=tmp_path / "download"))
    assert yaml.safe_load((local / "MLmodel").read_text())["run_id"] == run_id
    loaded = cairn.pytorch.load_model(str(local))
    x = torch.randn(3, 4)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    assert _fluent_store_is_empty()


def _rows(tokenizer: Any) -> list[dict[str, torch.Tensor]]:
    encoded = tokenizer(["the cat sat", "a dog ran"] * 4, padding="max_length", max_length=8, truncation=True)
    return [
        {
            "input_ids": torch.tensor(encoded["input_ids"][i]),
            "attention_mask": torch.tensor(encoded["attention_mask"][i]),
            "labels": torch.tensor(i % 2),
        }
        for i in range(8)
    ]


def test_cairn_callback_client_logs_and_registers_the_final_model_in_that_store(tmp_path: Path) -> None:
    other = _other_client(tmp_path)
    tokenizer = make_tokenizer()
    callback = cairn.transformers.CairnCallback(client=other, log_checkpoints=False, registered_model_name="tiny-bert")
    make_trainer(
        tokenizer, _rows(tokenizer), tmp_path / "out", callbacks=[callback], max_steps=2, save_strategy="no"
    ).train()
    assert callback.run_id is not None
    version = other.get_model_version("tiny-bert", 1)
    assert version.run_id == callback.run_id
    assert "MLmodel" in {Path(f.path).name for f in other.list_artifacts(callback.run_id, "model")}
    local = other.download_artifacts(callback.run_id, "model", dst_path=tmp_path / "download")
    assert cairn.pyfunc.load_model(local).predict("the cat sat").shape == (1, 2)
    assert _fluent_store_is_empty()


def test_transformers_checkpoint_path_with_client_resumes_the_run_in_that_store(tmp_path: Path) -> None:
    other = _other_client(tmp_path)
    tokenizer = make_tokenizer()
    rows = _rows(tokenizer)
    first = cairn.transformers.CairnCallback(client=other, log_models=False)
    make_trainer(tokenizer, rows, tmp_path / "a", callbacks=[first], max_steps=2, save_steps=2).train()
    assert first.run_id is not None
    path = cairn.transformers.checkpoint_path(first.run_id, client=other, dst=tmp_path / "dl")
    assert Path(path).name == "checkpoint-2" and Path(path).is_relative_to(tmp_path / "dl")

    second = cairn.transformers.CairnCallback(client=other, log_models=False)
    trainer = make_trainer(tokenizer, rows, tmp_path / "b", callbacks=[second], max_steps=4, save_steps=2)
    trainer.train(resume_from_checkpoint=path)
    assert second.run_id == first.run_id  # the same run, in the client's store
    assert [m.step for m in other.get_metric_history(first.run_id, "loss")] == [1, 2, 3, 4]
    assert _fluent_store_is_empty()


def test_run_leased_inside_autolog_while_it_continues_a_run_reaches_the_user() -> None:
    """Another process resuming the run (here: raised where autolog calls into the checkpoint's state) is not a
    failure of autolog's own to report and train on: it propagates out of the training loop."""
    autolog_pytorch.autolog(checkpoint_every_n_steps=2, log_models=False)
    _train(4)
    run_id = cairn.last_active_run().info.run_id
    cairn.end_run()

    # the run resumes at batch 4 of 6: step 5's checkpoint is taken before batch 6 is fetched
    state = autolog_pytorch.autolog(checkpoint_every_n_steps=1, log_models=False, resume=run_id)
    assert state is not None and state.resumed and state.step == 4
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[int] = []

    def loop_state() -> dict[str, Any]:
        calls.append(1)
        raise RunLeased(f"run {run_id} is being resumed by another process", run_id=run_id, holder="h:1:t")

    cairn.pytorch.track_state(loop_state)  # restores weights and optimizer from step 4
    with pytest.raises(RunLeased, match="another process"):
        for x, y in _loader():
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert len(calls) == 1  # raised at step 5's checkpoint, not reported and trained past
    assert [c.step for c in cairn.pytorch.list_run_checkpoints(run_id)] == [2, 4]


def test_run_leased_at_a_checkpoint_after_the_optimizer_step_reaches_the_user() -> None:
    """A loop without a DataLoader checkpoints right after the optimizer step (the optimizer-step hook): a
    RunLeased raised there propagates out of ``optimizer.step()`` instead of being reported and trained past."""
    autolog_pytorch.autolog(checkpoint_every_n_steps=2, log_models=False)
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[int] = []

    def loop_state() -> dict[str, Any]:
        calls.append(1)
        raise RunLeased("run r is being resumed by another process", run_id="r", holder="h:1:t")

    cairn.pytorch.track_state(loop_state)
    steps = 0
    with pytest.raises(RunLeased, match="another process"):
        for _ in range(4):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(6, 4)), torch.randint(0, 3, (6,))).backward()
            optimizer.step()
            steps += 1
    assert steps == 1 and len(calls) == 1  # the second step's checkpoint raised, inside optimizer.step()
    cairn.end_run()
