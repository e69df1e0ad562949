"""``PyTorchIntegration``: plain-PyTorch autolog as one object that owns its state.

``cairn.pytorch.autolog()`` creates it (or gives an enabled one new options) and registers it as *the*
active integration, reached by :func:`active` (hooks hold the integration that installed them; only
module-level entry points such as ``track_state`` and :mod:`cairn.checkpoint.runs` go through
:func:`active`). It owns:

- the options (:class:`~cairn.autolog.torch.config.PyTorchAutologConfig`) and the client it logs into
  (``client=``, else the fluent API's);
- the hooks into torch (:mod:`~cairn.autolog.torch.hooks`), the losses recorded between steps
  (:mod:`~cairn.autolog.torch.losses`), the DataLoaders (:mod:`~cairn.autolog.torch.loaders`), what
  the loop trains (:mod:`~cairn.autolog.torch.discovery`);
- the session of the run being trained (:mod:`~cairn.autolog.torch.session`) and its worker in the
  background service (:mod:`~cairn.autolog.torch.worker`);
- the checkpoint policy (:mod:`~cairn.autolog.torch.checkpoints`) and a pending resume
  (:mod:`~cairn.autolog.torch.resume`);
- the hand-off to the Lightning integration (:mod:`~cairn.autolog.torch.lightning_handoff`).

Runs: the first optimizer step starts a run if none is active (it stays active, as with
``cairn.log_metric``). With ``client=`` the run is created in that client's store and ended by
``autolog(disable=True)`` or at interpreter exit (the fluent ``end_run`` does not know it). Under
``torch.distributed`` only rank 0 starts the run and logs; the run id is broadcast to the other ranks at
the first optimizer step of the process (:meth:`PyTorchIntegration.current_run_id` returns it there).
Every rank takes part in the step and epoch checkpoints (its own RNG and data position; see
:mod:`cairn.checkpoint.distributed`); the final one at run end is rank 0's alone.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cairn.autolog.torch.checkpoints import CheckpointPolicy
from cairn.autolog.torch.config import FailureReporter, PyTorchAutologConfig
from cairn.autolog.torch.discovery import Constructed, ModelDiscovery
from cairn.autolog.torch.hooks import arm_forward_hooks, arm_step_hook, patch_torch
from cairn.autolog.torch.lightning_handoff import LightningHandoff, driven_elsewhere
from cairn.autolog.torch.loaders import DataTracking, LoaderTrack, PositionView
from cairn.autolog.torch.losses import LossRecorder
from cairn.autolog.torch.model_logging import log_final_model
from cairn.autolog.torch.params import model_summary, optimizer_params
from cairn.autolog.torch.resume import Restorer, elastic_tags, prepare_resume
from cairn.autolog.torch.session import IGNORED, PRIMARY, Session
from cairn.autolog.torch.worker import MetricConversion, submit_task
from cairn.errors import InvalidArgument, RunLeased
from cairn.tracking.client import Client

__all__ = ["PyTorchIntegration", "active", "autolog"]

SUMMARY_FILE = "model_summary.txt"
DEFAULT_EXPERIMENT_ID = "0"


class PyTorchIntegration:
    """Autologging of plain PyTorch training loops, for one configuration and one client."""

    def __init__(self, config: PyTorchAutologConfig, *, client: Client | None = None) -> None:
        self.config = config
        self.client = client  # None: the fluent API's client, looked up when needed
        self.report = FailureReporter(silent=config.silent)
        self.losses = LossRecorder()
        self.data = DataTracking()
        self.constructed = Constructed(self.report)
        self.models = ModelDiscovery(self.report)
        self.checkpoints = CheckpointPolicy(
            config, constructed=self.constructed, data=self.data, losses=self.losses, report=self.report, client=client
        )
        self.restorer = Restorer(
            constructed=self.constructed,
            data=self.data,
            losses=self.losses,
            report=self.report,
            watch_forwards=self._watch_forwards,
            quiet=self.steps_ignored,
        )
        self.lightning = LightningHandoff(self.report)
        self.session: Session | None = None
        self.resume_step: int | None = None  # the step a resumed run continues from, for the next session
        self.resume_run_id: str | None = None  # with client=: the run a resume continues
        self.foreign: weakref.WeakSet[Any] = weakref.WeakSet()  # optimizers another integration drives
        self.suppress = 0
        self.ignore_steps = 0  # > 0: optimizer steps are not training steps (see steps_ignored)
        self.distributed_run_id: str | None = None
        self._broadcast_done = False
        self._patches: Any = None
        self._step_handle: Any = None
        self._forward_handles: list[Any] = []
        self._conversion: MetricConversion | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def enable(self) -> None:
        """Install the hooks and patches and start the worker."""
        from cairn.tracking import fluent

        self._step_handle = arm_step_hook(self)
        self._watch_forwards()
        self._patches = patch_torch(self)
        fluent.add_end_run_hook(self._on_fluent_run_end)
        if self.client is not None:
            from cairn import background

            background.add_exit_hook(self.end_run)  # ends a run it created at exit; removed by disable()
        self._conversion = MetricConversion(self._convert_metrics, self.report)
        self.lightning.enable(self.config)

    def reconfigure(self, config: PyTorchAutologConfig) -> None:
        """New options for the hooks already installed (the session in progress goes on)."""
        self.config = config
        self.checkpoints.config = config
        self.report.reset(silent=config.silent)
        self.lightning.enable(config)

    def disable(self) -> None:
        """Undo every hook and patch; the active session logs nothing more (with ``client=``, it ends)."""
        from cairn.tracking import fluent

        if self.client is not None:
            from cairn import background

            self.end_run()
            background.remove_exit_hook(self.end_run)  # the service no longer keeps this object (and its client)
        session, self.session = self.session, None
        if session is not None:
            self.drain_metrics(session)
            session.stop_monitor(self.report)
        if self._step_handle is not None:
            self._step_handle.remove()
            self._step_handle = None
        self._unwatch_forwards()
        if self._patches is not None:
            self._patches.restore()
            self._patches = None
        fluent.remove_end_run_hook(self._on_fluent_run_end)
        if self._conversion is not None:
            self._conversion.close()
            self._conversion = None
        self.lightning.disable()
        self.restorer.clear()
        self.checkpoints.user_state = None

    def end_run(self) -> None:
        """Finish the session's run now: last checkpoint, metrics, model; with ``client=``, a run autolog
        created is marked finished too."""
        from cairn import background

        session = self.session
        if session is None or session.run_id is None:
            return
        self._finish_session(session)
        background.drain(session.run_id)  # its params and summary tasks, system metrics, metric points
        if self.client is not None and session.created_run:
            try:
                self.client.set_terminated(session.run_id)
            except Exception as exc:
                self.report("ending the run", exc)

    # -- the run -----------------------------------------------------------------------------------------

    def tracking_client(self) -> Client:
        from cairn.tracking import fluent

        return self.client if self.client is not None else fluent._get_client()

    def prepare_resume(self, resume: bool | str) -> Any:
        """Continue the run named by ``resume=`` now; its checkpoint is restored when training starts."""
        from cairn.checkpoint import runs

        dist = _dist()
        rank0 = dist is None or dist.get_rank() == 0
        activate = runs._activate if self.client is None else None
        state, pending = prepare_resume(
            resume, self.tracking_client(), rank0=rank0, activate=activate, experiment_id=self._experiment_id()
        )
        if self.client is not None and state.run_id is not None:
            self.resume_run_id = state.run_id
        if pending is not None:
            self.restorer.pending = pending
            self.resume_step = pending.step
        return state

    def _experiment_id(self) -> str:
        """The experiment a run autolog starts goes into."""
        if self.client is not None:
            return DEFAULT_EXPERIMENT_ID
        from cairn.tracking import fluent

        return fluent._resolve_experiment_id(None)

    def _run_to_log_into(self) -> tuple[str, bool]:
        """The run id and whether autolog opened it (created it, or with ``client=`` continues it): then
        autolog ends it too."""
        if self.client is not None:
            resumed, self.resume_run_id = self.resume_run_id, None
            if resumed is not None:
                return resumed, True
            run = self.client.create_run(DEFAULT_EXPERIMENT_ID, tags={**self.config.extra_tags, **elastic_tags()})
            return run.info.run_id, True
        from cairn.tracking import fluent

        active = fluent.active_run()
        if active is not None:
            return active.info.run_id, False
        return fluent.start_run(tags={**self.config.extra_tags, **elastic_tags()}).info.run_id, True

    def _start_session(self) -> Session:
        from cairn.tracking import config as tracking_config

        dist = _dist()
        rank = dist.get_rank() if dist is not None else 0
        run_id: str | None = None
        created = False
        if rank == 0:
            try:
                run_id, created = self._run_to_log_into()
            except Exception as exc:
                self.report("starting a run", exc)
        if dist is not None and dist.get_world_size() > 1 and not self._broadcast_done:
            self._broadcast_done = True
            shared = [run_id]
            dist.broadcast_object_list(shared, src=0)
            self.distributed_run_id = shared[0]
        session = Session(run_id=run_id if rank == 0 else None, created_run=created)
        session.peer = rank > 0 and self.distributed_run_id is not None
        if session.run_id is not None:
            try:
                batcher = tracking_config.get_batcher(self.tracking_client().store)
                session.add_points = batcher.add_many
                if self.config.log_system_metrics:
                    session.start_monitor(self.config, batcher.add)
            except Exception as exc:
                self.report("starting the metric writer and system metrics", exc)
        if self.resume_step is not None:
            session.step = self.resume_step
            session.last_ckpt_step = self.resume_step  # the checkpoint resumed from (no final one at the same step)
            self.resume_step = None
        self.session = session
        return session

    def _first_step_of(self, session: Session, optimizer: Any) -> str:
        """An optimizer's first step in the session: its role, params, lr keys, the model and its summary."""
        if driven_elsewhere(optimizer):  # a Lightning or Transformers Trainer's optimizer
            session.ignore(optimizer)
            return IGNORED
        role = session.add_optimizer(optimizer)
        run_id = session.run_id
        if run_id is None and not session.peer:
            return role
        if run_id is not None:
            groups = self.constructed.built_groups.get(optimizer)
            params = optimizer_params(optimizer, len(session.optimizers) - 1, groups)
            self._submit(lambda: self._log_params(run_id, params), "logging optimizer params")
        if session.model is None:  # a peer rank too: it checkpoints at the same moments as rank 0
            model, example = self.models.model_for(optimizer)
            if model is not None:
                session.model = weakref.ref(model)
                session.example = example
                if self.config.log_models and run_id is not None:
                    summary = model_summary(model)
                    client = self.tracking_client()
                    self._submit(lambda: client.log_text(run_id, summary, SUMMARY_FILE), "logging the model summary")
        return role

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Log params the run does not have yet (a resumed run keeps its first values)."""
        from cairn.tracking.entities import Param

        client = self.tracking_client()
        existing = client.get_run(run_id).data.params
        new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
        if new:
            client.log_batch(run_id, params=new)

    def _submit(self, task: Callable[[], None], what: str) -> None:
        submit_task(task, what, self.report)

    def _on_fluent_run_end(self, run_id: str, status: Any) -> None:
        session = self.session
        if session is not None and session.run_id == run_id:
            self._finish_session(session, failed=str(getattr(status, "value", status)) != "FINISHED")

    def _finish_session(self, session: Session, *, failed: bool = False) -> None:
        """Last checkpoint if due, metrics, final model, system metrics (never raises). ``failed``: the run
        ends through an exception or a signal."""
        run_id = session.run_id
        assert run_id is not None
        try:
            self.checkpoints.at_run_end(session, failed=failed)
            self.drain_metrics(session)
            model = session.current_model()
            if self.config.log_models and model is not None:
                log_final_model(run_id, model, session.example, client=self.client, report=self.report)
            session.stop_monitor(self.report)
            if session.last_ckpt_step >= 0:
                from cairn.checkpoint import runs

                runs.flush_checkpoints(run_id)
        except Exception as exc:
            self.report("finishing the run", exc)
        finally:
            if self.session is session:
                self.session = None
                self.data.forget_session()
                self.losses.clear()
                if self._patches is not None and not self._forward_handles:
                    self.models.reset()
                    self._watch_forwards()  # the next session finds its model the same way

    # -- metrics -----------------------------------------------------------------------------------------

    def drain_metrics(self, session: Session | None = None) -> None:
        """Turn the session's queued step values into metric points in the store's metric writer now."""
        session = session or self.session
        if session is not None:
            session.drain()

    def _convert_metrics(self, hold_newest: bool) -> None:
        session = self.session
        if session is not None:
            session.drain(hold_newest=hold_newest)

    # -- hooks (see cairn.autolog.torch.hooks) -----------------------------------------------------------

    def on_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.ignore_steps:
            return
        try:
            session = self.session
            if session is None:
                if optimizer in self.foreign:
                    self.losses.clear()
                    return
                if self.suppress or driven_elsewhere(optimizer):
                    if not self.suppress:
                        self.foreign.add(optimizer)  # asked once per Lightning/Trainer optimizer, not per step
                    self.losses.clear()
                    self._unwatch_forwards()
                    return
                session = self._start_session()
            role = session.role_of(optimizer)
            if role is None:
                role = self._first_step_of(session, optimizer)
                self._unwatch_forwards()
            if role == IGNORED or (session.run_id is None and not session.peer) or self.suppress:
                self.losses.clear()
                return
            if role != PRIMARY:
                return
            if len(self.losses.values) > 1 and (args[1] if len(args) > 1 else kwargs.get("closure")) is not None:
                self.losses.keep_first()
            session.step += 1
            session.interval_steps += 1
            track = self.data.current
            if track is not None and not track.train:
                self.data.mark_training(track)
            config = self.config
            if session.run_id is None:  # a peer rank: logs nothing, counts steps for the checkpoints
                self.losses.clear()
            elif session.step % config.log_every_n_steps == 0:
                session.emit(self.losses, config, self.data.train_track)
            self.checkpoints.after_step(session)
        except RunLeased:  # another process is resuming the run: training on would write into it twice
            raise
        except Exception as exc:
            self.report("logging the optimizer step", exc)

    def on_forward(self, module: nn.Module, args: Any) -> None:
        restorer = self.restorer
        if restorer.pending is not None or restorer.pending_model is not None:
            restorer.at_forward(module)
        self.models.note(module, args)

    def on_iter(self, loader: DataLoader[Any]) -> tuple[LoaderTrack | None, Any]:
        track = None
        try:
            track = self.data.track(loader)
            session = self.session
            if session is not None:
                self.checkpoints.at_epoch_start(session, track)
            self.restorer.at_iter(loader, track)
            return track, self.data.begin_epoch(loader, track)
        except RunLeased:  # another process is resuming the run: training on would write into it twice
            raise
        except Exception as exc:
            self.report("tracking the DataLoader epoch", exc)
            return track, None

    def before_batch(self, session: Session, track: LoaderTrack) -> None:
        self.checkpoints.before_batch(session, track)

    def after_scheduler_step(self) -> None:
        session = self.session
        if session is not None:
            self.checkpoints.after_scheduler_step(session)

    def note_constructed(self, kind: str, obj: Any) -> None:
        self.constructed.note(kind, obj)

    def _watch_forwards(self) -> None:
        if not self._forward_handles:
            self._forward_handles = arm_forward_hooks(self)

    def _unwatch_forwards(self) -> None:
        for handle in self._forward_handles:
            handle.remove()
        self._forward_handles = []

    # -- what users and cairn.checkpoint.runs call --------------------------------------------------------

    @contextlib.contextmanager
    def suppressed(self) -> Iterator[None]:
        """Log nothing from plain-loop hooks inside this block (for integrations that log themselves)."""
        self.suppress += 1
        try:
            yield
        finally:
            self.suppress -= 1

    @contextlib.contextmanager
    def steps_ignored(self) -> Iterator[None]:
        """Optimizer steps inside this block are not training steps, and autolog does not see them: DCP's
        ``set_optimizer_state_dict`` steps a fresh optimizer with zero gradients to build its state before
        loading a sharded checkpoint (counted, that step would start the session early, without its model,
        and shift the step count)."""
        self.ignore_steps += 1
        try:
            yield
        finally:
            self.ignore_steps -= 1

    def current_run_id(self) -> str | None:
        session = self.session
        if session is not None and session.run_id is not None:
            return session.run_id
        return self.distributed_run_id

    def track_state(self, getter: Callable[[], Mapping[str, Any]]) -> dict[str, Any] | None:
        if not callable(getter):
            raise InvalidArgument("track_state() takes a function returning a dict, e.g. lambda: {'iter_num': it}")
        self.checkpoints.user_state = getter
        return self.restorer.at_track_state()

    def loader_position(self, loader: Any) -> PositionView | None:
        if not isinstance(loader, DataLoader):
            return None
        return PositionView(self.data.track(loader).position(boundary=False))

    def arm_loader(self, loader: DataLoader[Any], tree: dict[str, Any] | None, epoch: int | None = None) -> None:
        self.data.track(loader).armed = (tree, epoch)

    def note_resumed(self, step: int, loader: Any = None, epoch: int | None = None) -> None:
        session = self.session
        if session is not None:
            session.step = step
        else:
            self.resume_step = step
        inner = getattr(loader, "loader", loader)
        if epoch is not None and isinstance(inner, DataLoader):
            track = self.data.track(inner)
            track.epoch = epoch - 1  # the next iter() starts epoch `epoch` (or continues it, for a ResumableLoader)
            if track.armed is not None:
                track.armed = (track.armed[0], epoch)


def _dist() -> Any:
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


# -- the one registered instance ------------------------------------------------------------------------

_active: PyTorchIntegration | None = None


def active() -> PyTorchIntegration | None:
    """The enabled plain-PyTorch integration (the one ``autolog()`` registered), or None."""
    return _active


def autolog(config: PyTorchAutologConfig, *, client: Client | None = None) -> Any:
    """Enable (or re-configure, or with ``config.disable`` disable) the one plain-PyTorch integration.

    Returns the ResumeState with ``config.resume``, else None. See :func:`cairn.autolog.pytorch.autolog`.
    """
    global _active
    current = _active
    if config.disable:
        _active = None
        if current is not None:
            current.disable()
        return None
    _check_options(config)
    if current is not None and current.client is not client:
        _active = None
        current.disable()
        current = None
    if current is None:
        current = PyTorchIntegration(config, client=client)
        current.enable()
        _active = current
    else:
        current.reconfigure(config)
    if config.resume:
        return current.prepare_resume(config.resume)
    return None


def _check_options(config: PyTorchAutologConfig) -> None:
    if config.log_every_n_steps < 1:
        raise InvalidArgument(f"log_every_n_steps must be >= 1, got {config.log_every_n_steps}")
