"""Plain-PyTorch autolog as an object: ``client=``, one registered instance, nothing stale after disable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import cairn  # noqa: E402
from cairn.autolog import pytorch as autolog_pytorch  # noqa: E402
from cairn.tracking.client import Client  # noqa: E402
from tests.autolog.test_pytorch_autolog import Net, _loader, _train  # noqa: E402


@pytest.fixture(autouse=True)
def _disable_after() -> Iterator[None]:
    yield
    autolog_pytorch.autolog(disable=True)


def _other_client(tmp_path: Path) -> Client:
    return Client(
        tracking_uri=f"sqlite:///{tmp_path / 'other' / 'cairn.db'}", artifact_root=str(tmp_path / "other-art")
    )


def _runs(client: Client) -> list[Any]:
    return client.search_runs(["0"]).items


def test_client_logs_run_params_metrics_and_model_into_its_store_not_the_fluent_one(tmp_path: Path) -> None:
    other = _other_client(tmp_path)
    fluent_client = Client()
    assert other.store is not fluent_client.store
    autolog_pytorch.autolog(client=other, log_every_n_steps=2)
    _model, losses, _ = _train(epochs=1)  # 6 steps; the model is logged while it lives (kept here)
    assert cairn.active_run() is None  # nothing started in the fluent API
    autolog_pytorch.autolog(disable=True)  # ends the run autolog created in the client's store

    [run] = _runs(other)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer_name"] == "SGD"
    history = other.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [2, 4, 6]
    assert [m.value for m in history] == pytest.approx([(losses[i] + losses[i + 1]) / 2 for i in (0, 2, 4)], rel=1e-6)
    artifacts = {f.path for f in other.list_artifacts(run.info.run_id)}
    assert {"model", "model_summary.txt"} <= artifacts
    assert "MLmodel" in {Path(f.path).name for f in other.list_artifacts(run.info.run_id, "model")}
    assert _runs(fluent_client) == []  # the fluent default store saw nothing


def test_client_of_another_store_checkpoints_and_resumes_there(tmp_path: Path) -> None:
    """autolog(client=Client(other store)) writes its checkpoints into that store's artifacts and a resume with
    the same client continues the run there, bit-exact with an uninterrupted run; the fluent store sees nothing."""
    other = _other_client(tmp_path)
    fluent_client = Client()
    autolog_pytorch.autolog(client=other, log_models=False, checkpoint_every_n_steps=3)
    _model, first, _ = _train(epochs=1)  # 6 steps, checkpoints at 3 and 6
    autolog_pytorch.autolog(disable=True)
    [run] = _runs(other)
    run_id = run.info.run_id
    assert [c.step for c in cairn.pytorch.list_run_checkpoints(run_id, client=other)] == [3, 6]
    assert cairn.pytorch.checkpoint_path(run_id, client=other).is_relative_to(tmp_path / "other")

    state: Any = autolog_pytorch.autolog(client=other, log_models=False, checkpoint_every_n_steps=3, resume=run_id)
    assert state.resumed and state.step == 6 and cairn.active_run() is None
    _again, second, _ = _train(epochs=1)  # restored at the loader's first iter(); steps 7..12
    autolog_pytorch.autolog(disable=True)
    _reference, uninterrupted, _ = _train(epochs=2)  # autolog off: the same loop, never stopped
    assert first + second == uninterrupted
    assert [c.step for c in cairn.pytorch.list_run_checkpoints(run_id, client=other)] == [6, 9, 12]
    assert [m.step for m in other.get_metric_history(run_id, "loss")] == list(range(1, 13))
    assert other.get_run(run_id).info.status == "FINISHED"
    assert _runs(fluent_client) == []
    artifacts = tmp_path / "cairn-runs" / "artifacts"
    assert not artifacts.exists() or not any(p.is_file() for p in artifacts.rglob("*"))


def test_autolog_again_reconfigures_the_one_registered_integration() -> None:
    autolog_pytorch.autolog(log_every_n_steps=1)
    first = autolog_pytorch.active()
    autolog_pytorch.autolog(log_every_n_steps=3)
    assert autolog_pytorch.active() is first and first is not None and first.config.log_every_n_steps == 3
    _train(epochs=1)
    run = cairn.active_run()
    assert run is not None
    cairn.end_run()
    assert [m.step for m in Client().get_metric_history(run.info.run_id, "loss")] == [3, 6]


def test_disable_then_enable_leaves_no_stale_state() -> None:
    """A session, a tracked loader, a pending resume and track_state's getter end with the integration."""
    autolog_pytorch.autolog(log_models=False, checkpoint_every_n_steps=2)
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = _loader()
    autolog_pytorch.track_state(lambda: {"stale": 1})
    for i, (x, y) in enumerate(loader):  # stop in the middle of an epoch, with a run going
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if i == 2:
            break
    old = autolog_pytorch.active()
    first_run = cairn.active_run()
    assert old is not None and old.session is not None and first_run is not None
    cairn.pytorch.flush_checkpoints(first_run.info.run_id)  # the step-2 checkpoint, taken before batch 3
    state: Any = autolog_pytorch.autolog(log_models=False, checkpoint_every_n_steps=2, resume=first_run.info.run_id)
    assert state.resumed and old.restorer.pending is not None
    autolog_pytorch.autolog(disable=True)
    assert autolog_pytorch.active() is None and old.session is None and old.restorer.pending is None
    cairn.end_run()

    autolog_pytorch.autolog(log_models=False, checkpoint_every_n_steps=2)
    new = autolog_pytorch.active()
    assert new is not None and new is not old
    assert new.session is None and new.restorer.pending is None and new.checkpoints.user_state is None
    assert len(new.data.loaders) == 0 and new.resume_step is None and new.losses.values == []
    before = [p.detach().clone() for p in model.parameters()]
    for x, y in loader:  # a new run: steps from 1, epoch 0, nothing restored from the old run's checkpoint
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        break
    assert all(torch.equal(a, b) is False for a, b in zip(before, model.parameters(), strict=True))
    second_run = cairn.active_run()
    assert second_run is not None and second_run.info.run_id != first_run.info.run_id
    cairn.end_run()
    client = Client()
    assert [m.step for m in client.get_metric_history(second_run.info.run_id, "loss")] == [1]
    assert [m.value for m in client.get_metric_history(second_run.info.run_id, "epoch")] == [0.0]
    [checkpoint] = cairn.pytorch.list_run_checkpoints(second_run.info.run_id)  # the final one, at step 1
    assert checkpoint.step == 1


def _three_steps() -> nn.Module:
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).pow(2).mean().backward()
        optimizer.step()
    return model


def test_the_metric_conversion_is_a_worker_of_the_background_service() -> None:
    from cairn import background
    from cairn.autolog.torch.worker import MetricConversion

    autolog_pytorch.autolog(log_models=False)
    assert [w for w in background.service().workers() if isinstance(w, MetricConversion)]
    with cairn.start_run() as run:
        _three_steps()
        background.drain()  # the service's drain converts the newest step too (the 0.2 s tick holds it back)
        Client().flush()
        assert [m.step for m in Client().get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    autolog_pytorch.autolog(disable=True)
    assert not [w for w in background.service().workers() if isinstance(w, MetricConversion)]


def test_a_failing_autolog_task_is_a_warning_not_an_error_of_the_next_logging_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import warnings

    from cairn.autolog import AutologWarning
    from cairn.autolog.torch.integration import PyTorchIntegration

    def broken(self: Any, run_id: str, params: Any) -> None:
        raise RuntimeError("params refused")

    monkeypatch.setattr(PyTorchIntegration, "_log_params", broken)
    autolog_pytorch.autolog(log_models=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cairn.start_run() as run:
            _three_steps()
        cairn.log_metric("after", 1.0)  # nothing deferred to raise here
    messages = [str(w.message) for w in caught if issubclass(w.category, AutologWarning)]
    assert any("logging optimizer params failed" in m and "params refused" in m for m in messages), messages
    assert [m.step for m in Client().get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    cairn.end_run()


def test_client_mode_resume_continues_the_run_in_that_client_without_the_fluent_stack() -> None:
    """With ``client=`` (here the default store, where checkpoints can go), a resumed run is continued and
    ended by autolog itself; the fluent API never has an active run."""
    client = Client()
    autolog_pytorch.autolog(client=client, log_models=False, checkpoint_every_n_steps=3)
    _model, _, _ = _train(epochs=1)  # 6 steps, checkpoints at 3 and 6
    autolog_pytorch.autolog(disable=True)
    [run] = _runs(client)
    assert run.info.status == "FINISHED"

    state: Any = autolog_pytorch.autolog(
        client=client, log_models=False, checkpoint_every_n_steps=3, resume=run.info.run_id
    )
    assert state.resumed and state.step == 6 and cairn.active_run() is None
    _again, _, _ = _train(epochs=1)  # restored at the loader's first iter(); steps 7..12
    assert cairn.active_run() is None
    autolog_pytorch.autolog(disable=True)
    assert [r.info.run_id for r in _runs(client)] == [run.info.run_id]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 13))
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
