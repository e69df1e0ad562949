"""Plain-PyTorch autolog: the start and the end of a session (one run's training).

The start: the run (started or found, its id broadcast under ``torch.distributed``), then at each
optimizer's first step its params, learning-rate keys and the model summary. The end: the last
checkpoint if due, the queued metrics, the final model, system metrics. Part of
:mod:`cairn.autolog.pytorch`; what lives there (``_state``, ``_report``, ...) is reached through that
module at call time.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cairn.autolog._pytorch_background import _log_params, _log_text, _submit, drain_metrics, model_summary
from cairn.autolog._pytorch_checkpoints import _checkpoint_now

if TYPE_CHECKING:
    from cairn.autolog.pytorch import PyTorchAutologConfig, _Session

# -- the step hook: the start of a session -------------------------------------------------------------


def _start_session() -> _Session:
    from cairn.autolog import pytorch as core
    from cairn.tracking import fluent

    state = core._state
    config = state.config
    assert config is not None
    dist = core._dist()
    rank = dist.get_rank() if dist is not None else 0
    run_id: str | None = None
    created = False
    if rank == 0:
        try:
            active = fluent.active_run()
            if active is None:
                active = fluent.start_run(tags=dict(config.extra_tags))
                created = True
            run_id = active.info.run_id
        except Exception as exc:
            core._report("starting a run", exc)
    if dist is not None and dist.get_world_size() > 1 and not state.broadcast_done:
        state.broadcast_done = True
        shared = [run_id]
        dist.broadcast_object_list(shared, src=0)
        state.distributed_run_id = shared[0]
    session = core._Session(run_id=run_id if rank == 0 else None, created_run=created)
    if session.run_id is not None:
        try:
            from cairn.tracking import config as tracking_config

            session.add_points = tracking_config.get_batcher(fluent._get_client().store).add_many
        except Exception as exc:
            core._report("finding the metric writer", exc)
    if state.resume_step is not None:
        session.step = state.resume_step
        session.last_ckpt_step = state.resume_step  # the checkpoint resumed from (no final one at the same step)
        state.resume_step = None
    state.session = session
    if session.run_id is not None and config.log_system_metrics:
        _start_monitor(session, config)
    return session


def _first_step_of(session: _Session, optimizer: Any) -> str:
    from cairn.autolog import pytorch as core

    state = core._state
    if core._driven_elsewhere(optimizer):  # a Lightning or Transformers Trainer's optimizer
        session.roles[optimizer] = "ignored"
        return "ignored"
    role = "primary" if session.primary is None else "secondary"
    session.roles[optimizer] = role
    if role == "primary":
        session.primary = optimizer
    session.optimizers.append(optimizer)
    session.lr_keys = _lr_keys(session.optimizers)
    session.lr_groups = [group for o in session.optimizers for group in o.param_groups]
    if session.run_id is None:
        return role
    config = state.config
    assert config is not None
    params = _optimizer_params(optimizer, len(session.optimizers) - 1, state.built_groups.get(optimizer))
    run_id = session.run_id
    _submit(lambda: _log_params(run_id, params), "logging optimizer params")
    if session.model is None:
        model, example = core._model_for(optimizer)
        if model is not None:
            session.model = weakref.ref(model)
            session.example = example
            if config.log_models:
                summary = model_summary(model)
                _submit(lambda: _log_text(run_id, summary, core.SUMMARY_FILE), "logging the model summary")
    return role


def _lr_keys(optimizers: list[Any]) -> list[str]:
    keys = []
    for i, optimizer in enumerate(optimizers):
        groups = len(optimizer.param_groups)
        prefix = "lr" if len(optimizers) == 1 else f"lr/opt{i}"
        keys += [prefix if groups == 1 else f"{prefix}/group{j}" for j in range(groups)]
    return keys


def _optimizer_params(optimizer: Any, index: int, built: list[dict[str, str]] | None = None) -> dict[str, str]:
    """``optimizer_name``, the constructor's hyperparameters (``optimizer.defaults``), and per param group
    the values it was built with (:func:`built_groups`; ``group<j>.`` prefixed): all of them for groups
    beyond the first, those that differ from the defaults for the first (``group0.``).

    Not the groups' values at the first step: a loop that sets ``param_group['lr']`` by hand (warm-up) or
    a scheduler has changed them by then. Without ``built`` (an optimizer built before ``autolog()``, or
    groups added later) a group's current values are used, with ``initial_lr`` (a scheduler's record of
    the configured rate) as its ``lr``.
    """
    prefix = "" if index == 0 else f"optimizer{index}."
    defaults = _hyperparameters(optimizer.defaults)
    params = {f"{prefix}optimizer_name": type(optimizer).__name__}
    params.update({f"{prefix}{key}": value for key, value in defaults.items()})
    for j, group in enumerate(optimizer.param_groups):
        values = built[j] if built is not None and j < len(built) else _hyperparameters(group)
        for key, value in values.items():
            if j > 0 or defaults.get(key) != value:
                params[f"{prefix}group{j}.{key}"] = value
    return params


def built_groups(optimizer: Any) -> list[dict[str, str]]:
    """Each param group's hyperparameters as the optimizer was built (noted by autolog's constructor hook)."""
    return [_hyperparameters(group) for group in optimizer.param_groups]


def _hyperparameters(values: Any) -> dict[str, str]:
    """A param group's (or ``defaults``') hyperparameters as param values: ``params`` and ``None`` left out."""
    out = {}
    for key, value in values.items():
        if key in ("params", "initial_lr") or value is None:
            continue
        if key == "lr" and "initial_lr" in values:
            value = values["initial_lr"]  # a scheduler may have changed lr already; initial_lr is the configured one
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else value.tolist()
        out[key] = str(value)
    return out


# -- end of a run --------------------------------------------------------------------------------------


def _on_run_end(run_id: str, status: Any) -> None:
    """End-run hook: last checkpoint if due, metrics, final model, system metrics (never raises)."""
    from cairn.autolog import pytorch as core

    state = core._state
    session = state.session
    if session is None or session.run_id != run_id:
        return
    try:
        config = state.config
        track = state.train_track
        if config is not None:
            every = config.checkpoint_every_n_epochs or 0
            epoch_due = every > 0 and track is not None and track.finished and (track.epoch + 1) % every == 0
            checkpointing = config.checkpoint_every_n_steps or config.checkpoint_every_n_epochs
            final_due = bool(checkpointing) and session.step > max(session.last_ckpt_step, 0)  # the last step's
            if session.ckpt_due or epoch_due or final_due:
                _checkpoint_now(session, track, boundary=bool(track is not None and track.finished))
        drain_metrics()
        if config is not None and config.log_models and session.model is not None:
            model = session.model()
            if model is not None:
                _log_final_model(run_id, model, session.example)
        _stop_monitor(session)
        if session.last_ckpt_step >= 0:
            from cairn.checkpoint import runs

            runs.flush_checkpoints(run_id)
    except Exception as exc:
        core._report("finishing the run", exc)
    finally:
        if state.session is session:
            state.session = None
            state.train_track = None
            state.current = None
            state.losses = []
            if state.config is not None and not state.forward_handles:
                from torch.nn.modules import module as module_module

                state.top_modules = weakref.WeakKeyDictionary()
                core._arm_forward_hooks(module_module)  # the next session finds its model the same way


def _log_final_model(run_id: str, model: nn.Module, example: Any) -> None:
    from cairn.autolog import pytorch as core

    try:
        from cairn.flavors import pytorch as flavor
    except ImportError as exc:
        core._report("logging the model (cairn.flavors.pytorch is unavailable)", exc)
        return
    try:
        flavor.log_model(model, "model", input_example=example, run_id=run_id)
    except Exception as exc:
        if example is None:
            core._report("logging the model", exc)
            return
        try:  # an example the model cannot be traced with must not cost the model itself
            flavor.log_model(model, "model", run_id=run_id)
        except Exception as second:
            core._report("logging the model", second)


def _start_monitor(session: _Session, config: PyTorchAutologConfig) -> None:
    from cairn.autolog import pytorch as core
    from cairn.autolog.system_metrics import SystemMetricsMonitor
    from cairn.tracking import config as tracking_config
    from cairn.tracking import fluent

    try:
        batcher = tracking_config.get_batcher(fluent._get_client().store)
        assert session.run_id is not None
        session.monitor = SystemMetricsMonitor(
            session.run_id,
            batcher.add,
            interval=config.system_metrics_interval,
            step_source=lambda: session.step,  # the run's step: samples chart against training steps
        )
        session.monitor.start()
    except Exception as exc:
        core._report("starting system metrics", exc)


def _stop_monitor(session: _Session) -> None:
    from cairn.autolog import pytorch as core

    monitor, session.monitor = session.monitor, None
    if monitor is not None:
        try:
            monitor.stop()
        except Exception as exc:
            core._report("stopping system metrics", exc)
