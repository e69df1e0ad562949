"""The body of the Lightning integration's ``CairnCheckpointCallback`` (see :mod:`cairn.autolog.lightning`)."""

from __future__ import annotations

import contextlib
import time
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from cairn.autolog._lightning_checkpoint_mirror import CheckpointMirror
from cairn.autolog._lightning_frameworks import (
    INTEGRATION,
    LOADERS_KEY,
    LOG_STEP_KEY,
    RNG_KEY,
    RUN_ID_KEY,
    _rng_from_checkpoint,
    _rng_to_checkpoint,
)
from cairn.autolog._lightning_loaders import LoaderPositions
from cairn.autolog._lightning_logger import _CairnLoggerImpl, _refuse_injected_client
from cairn.autolog._lightning_ranks import RANKS_KEY
from cairn.autolog._lightning_ranks import gather as gather_ranks
from cairn.autolog._lightning_ranks import own as own_rank_entry
from cairn.autolog._lightning_resume import _log_step, _open_run, _supersede_once
from cairn.autolog._lightning_uploads import _Uploader
from cairn.autolog._pickled_model import log_announcing_pickle
from cairn.autolog.base import loops
from cairn.autolog.config import report_failure, safe_autolog
from cairn.autolog.torch.discovery import example_of  # the plain-loop autolog's capture, one definition
from cairn.autolog.torch.params import grad_norm  # the plain-loop autolog's, one definition
from cairn.store.base import MetricPoint
from cairn.tracking import config as tracking_config
from cairn.tracking import system_tags
from cairn.tracking.entities import RunStatus

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from cairn.models.model import ModelInfo
    from cairn.tracking.client import Client


# ------------------------------------------------------------------------------------------------ the callback


class _CheckpointCallbackImpl:
    """The body of :class:`CairnCheckpointCallback` (shared by both Lightning packages)."""

    def __init__(
        self,
        *,
        upload_checkpoints: bool = True,
        log_model: bool = True,
        model_name: str = "model",
        restore_rng: bool = True,
        resumable_dataloaders: bool = True,
        log_system_metrics: bool = False,
        system_metrics_interval: float = 10.0,
        log_grad_norm: bool = False,
        silent: bool = False,
        client: Client | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.upload_checkpoints = upload_checkpoints
        self.log_system_metrics = log_system_metrics
        self.system_metrics_interval = system_metrics_interval
        self.log_grad_norm = log_grad_norm
        self.log_model = log_model
        self.model_name = model_name
        self.restore_rng = restore_rng
        self.resumable_dataloaders = resumable_dataloaders
        self.silent = silent
        self._run_id: str | None = None
        self._owned_run = False
        self._mirror: CheckpointMirror | None = None
        self._checkpoint_callbacks: list[Any] = []
        self._trainer_ref: weakref.ref[Any] | None = None
        self._saves_pending = False
        self._watching = False
        self._positions = LoaderPositions()
        self._rng_after_load: dict[str, Any] | None = None
        self._warning_filter: Any = None
        self._save_info: dict[str, Any] = {}
        self._failed = False
        self._status = RunStatus.FAILED
        self._monitor: Any = None
        self._driven: list[Any] | None = None  # the optimizers claimed in ``loops`` during fit
        self._add_point: Callable[[MetricPoint], None] | None = None
        self._example: Any = None  # a few rows of the first forward call's input (the model's input example)
        self._example_hook: Any = None  # the one-shot forward pre-hook that captures it

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (``ddp_spawn`` pickles the Trainer): settings travel, the per-fit state does not.

        Raises:
            pickle.PicklingError: a ``client=`` was injected (see :class:`CairnLogger`).
        """
        _refuse_injected_client(self.client, "CairnCheckpointCallback")
        state = dict(self.__dict__)
        fit_only = ("_mirror", "_warning_filter", "_monitor", "_add_point", "_driven", "_example", "_example_hook")
        state.update(dict.fromkeys(fit_only), _positions=LoaderPositions(), _checkpoint_callbacks=[])
        state["_trainer_ref"] = None
        return state

    # -- the run ------------------------------------------------------------------------------------

    def _cairn_loggers(self, trainer: Any) -> list[_CairnLoggerImpl]:
        return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, _CairnLoggerImpl)]

    def _client(self, trainer: Any) -> Client:
        """The injected client, else the attached CairnLogger's, else the fluent API's."""
        from cairn.tracking import fluent

        if self.client is not None:
            return self.client
        for cairn_logger in self._cairn_loggers(trainer):
            if cairn_logger.run_id is not None and cairn_logger.client is not None:
                return cairn_logger.client
        return fluent._get_client()

    def _resolve_run(self, trainer: Any) -> str:
        if self._run_id is not None:
            return self._run_id
        for cairn_logger in self._cairn_loggers(trainer):
            run_id = cairn_logger.run_id
            if run_id is not None:
                self._run_id = run_id
                return run_id
        self._run_id, self._owned_run = _open_run(None, client=self.client)
        return self._run_id

    # -- hooks --------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if _stage_name(stage) != "fit":
            return
        self._failed = False
        for cairn_logger in self._cairn_loggers(trainer):
            cairn_logger._callback = self
        if not trainer.is_global_zero:
            return
        with safe_autolog(INTEGRATION, "preparing checkpoint uploads", silent=self.silent):
            run_id = self._resolve_run(trainer)
            if self.upload_checkpoints:
                if self._mirror is None or self._mirror.uploader.run_id != run_id:
                    self._mirror = CheckpointMirror(_Uploader(self._client(trainer), run_id, silent=self.silent))
                self._checkpoint_callbacks = list(trainer.checkpoint_callbacks)
                self._trainer_ref = weakref.ref(trainer)

    # -- checkpoint uploads (see _lightning_checkpoint_mirror) -----------------------------------------

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.log_model and trainer.is_global_zero:
            with safe_autolog(INTEGRATION, "preparing the input example capture", silent=self.silent):
                self._arm_example_capture(pl_module)
        if self.resumable_dataloaders:
            self._positions.fit_started()  # the state the fit's first DataLoader iterator draws from
        if self._mirror is not None and self._checkpoint_callbacks:
            with safe_autolog(INTEGRATION, "reading the checkpoint files already present", silent=self.silent):
                self._mirror.watch(self._checkpoint_callbacks)  # e.g. restored with the checkpoint: not new
                self._watching = True

    def _checkpoint_saved(self, checkpoint_callback: Any) -> None:
        """From ``CairnLogger.after_save_checkpoint``: ``checkpoint_callback`` has just saved."""
        self._sync_checkpoints(saved_by=checkpoint_callback)

    def _sync_checkpoints(self, *, saved_by: Any = None, saved: bool = False) -> None:
        mirror = self._mirror
        if mirror is None or not self._watching:
            return
        info, self._save_info, self._saves_pending = self._save_info, {}, False
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        with safe_autolog(INTEGRATION, "queueing checkpoint uploads", silent=self.silent):
            meta = {**(_position(trainer) if trainer is not None else {}), **info}
            # after on_exception, a save is ModelCheckpoint's save_on_exception one: its file is found in dirpath
            mirror.sync(self._checkpoint_callbacks, meta, saved_by=saved_by, saved=saved, scan_dir=self._failed)

    def _sync_pending(self, trainer: Any) -> None:
        """At a hook after ``ModelCheckpoint``'s: upload what it wrote (without a CairnLogger to tell us)."""
        if trainer.is_global_zero:
            self._sync_checkpoints(saved=self._saves_pending)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._saves_pending:
            self._sync_pending(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sync_pending(trainer)
        if self.resumable_dataloaders:
            with safe_autolog(INTEGRATION, "recording the DataLoader's epoch start", silent=self.silent):
                self._positions.epoch_started(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sync_pending(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sync_pending(trainer)

    def _quiet_lightnings_resume_warning(self) -> None:
        """Lightning warns that a mid-epoch resume with a plain DataLoader is unreliable; here it is not."""
        if self._warning_filter is None:
            warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch")
            self._warning_filter = warnings.filters[0]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._driven = list(trainer.optimizers)  # this fit drives them: plain-PyTorch autolog stands down
        loops.claim(INTEGRATION, self._driven)
        if self._positions.pending:
            with safe_autolog(INTEGRATION, "continuing the DataLoader's epoch", silent=self.silent):
                self._positions.resume(trainer, self._rng_after_load)
        if trainer.is_global_zero and (self.log_system_metrics or self.log_grad_norm):
            with safe_autolog(INTEGRATION, "starting system metrics and grad-norm logging", silent=self.silent):
                self._start_extra_metrics(trainer)

    def _start_extra_metrics(self, trainer: Any) -> None:
        run_id = self._resolve_run(trainer)
        self._add_point = tracking_config.get_batcher(self._client(trainer).store).add
        if self.log_system_metrics and self._monitor is None:
            from cairn.autolog.system_metrics import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                run_id, self._add_point, interval=self.system_metrics_interval, step_source=lambda: _log_step(trainer)
            )
            self._monitor.start()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        add = self._add_point
        if not self.log_grad_norm or add is None or self._run_id is None:
            return
        norm = grad_norm(optimizer)
        if norm is not None:
            key = "grad_norm" if len(trainer.optimizers) == 1 else f"grad_norm/opt{trainer.optimizers.index(optimizer)}"
            add(MetricPoint(self._run_id, key, float(norm), int(time.time() * 1000), _log_step(trainer)))

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        from cairn.checkpoint.rng import capture_rng_state

        log_step = _log_step(trainer)
        self._save_info = _position(trainer)
        self._saves_pending = True
        checkpoint[RNG_KEY] = _rng_to_checkpoint(capture_rng_state())
        checkpoint[LOG_STEP_KEY] = log_step
        loaders = self._positions.state(trainer) if self.resumable_dataloaders else []
        if loaders:
            checkpoint[LOADERS_KEY] = loaders
        if not self._failed:  # after an exception only the failing rank saves: no collective (see _lightning_ranks)
            ranks = gather_ranks(trainer, {RNG_KEY: checkpoint[RNG_KEY], LOADERS_KEY: loaders})
            if ranks is not None:
                checkpoint[RANKS_KEY] = ranks
        if self._run_id is not None:
            checkpoint[RUN_ID_KEY] = self._run_id

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        from cairn.checkpoint.rng import restore_rng_state

        self._rng_after_load = None
        mine = own_rank_entry(trainer, checkpoint) or checkpoint  # this rank's own states when every rank's are there
        if self.restore_rng and RNG_KEY in mine:
            with safe_autolog(INTEGRATION, "restoring the RNG states", silent=self.silent):
                self._rng_after_load = _rng_from_checkpoint(mine[RNG_KEY])
                restore_rng_state(self._rng_after_load)
        if self.resumable_dataloaders:
            with safe_autolog(INTEGRATION, "reading the DataLoader's position", silent=self.silent):
                self._positions.load(mine.get(LOADERS_KEY) or None)
                self._positions.fit_started()  # a strategy restoring after setup calls this after on_fit_start
                if self._positions.pending:
                    self._quiet_lightnings_resume_warning()
        source = checkpoint.get(RUN_ID_KEY)
        step = checkpoint.get(LOG_STEP_KEY)
        if not trainer.is_global_zero or not isinstance(source, str) or not isinstance(step, int):
            return
        with safe_autolog(INTEGRATION, "continuing the run's metrics", silent=self.silent):
            run_id = self._resolve_run(trainer)
            client = self._client(trainer)
            if run_id == source:
                _supersede_once(client, run_id, step)
            elif client.get_run(run_id).data.tags.get(system_tags.FORKED_FROM) != source:
                warnings.warn(
                    f"cairn: this checkpoint was written by run {source}, but training now logs into run {run_id}; "
                    f"to continue run {source}, get the checkpoint with cairn.lightning.checkpoint_path({source!r}) "
                    "and start no other run",
                    UserWarning,
                    stacklevel=2,
                )

    # -- the trained model ------------------------------------------------------------------------

    def _arm_example_capture(self, pl_module: Any) -> None:
        """Without ``example_input_array``, take the model's input example from its first forward call: a
        forward pre-hook that removes itself at that call (no cost on the steps after it)."""
        self._disarm_example_capture()
        self._example = None
        if getattr(pl_module, "example_input_array", None) is not None:
            return

        def capture(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            self._disarm_example_capture()
            with safe_autolog(INTEGRATION, "capturing the input example", silent=self.silent):
                self._example = example_of(args if args or not kwargs else (kwargs,))  # forward(x=...): a dict

        self._example_hook = pl_module.register_forward_pre_hook(capture, with_kwargs=True)

    def _disarm_example_capture(self) -> None:
        hook, self._example_hook = self._example_hook, None
        if hook is not None:
            hook.remove()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._disarm_example_capture()
        example, self._example = self._example, None
        if not self.log_model or not trainer.is_global_zero or self._failed:
            return
        with safe_autolog(INTEGRATION, "logging the trained model", silent=self.silent):
            self._log_model_at_fit_end(trainer, pl_module, example)

    def _log_model_at_fit_end(self, trainer: Any, pl_module: Any, captured: Any) -> None:
        """Log the module with ``example_input_array`` as example, else ``captured`` (the first forward's input;
        if the module cannot be logged with it, it is logged without, and that is reported)."""
        run_id = self._resolve_run(trainer)
        client = self._client(trainer)
        given = getattr(pl_module, "example_input_array", None)
        if given is not None:
            example = given.detach().cpu().numpy() if isinstance(given, torch.Tensor) else given
            captured = None
            if not hasattr(example, "shape"):
                example = None
        else:
            example = captured

        def log() -> ModelInfo:
            try:
                return _log_trained_model(client, run_id, pl_module, self.model_name, example)
            except Exception as exc:
                if captured is None:
                    raise
                what = "logging the model with the input of its first forward call as input example"
                report_failure(INTEGRATION, what, exc, silent=self.silent)
                return _log_trained_model(client, run_id, pl_module, self.model_name, None)

        log_announcing_pickle(
            log, integration=INTEGRATION, model=pl_module, advice=_LIGHTNING_ADVICE, silent=self.silent
        )

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._failed = True
        self._status = RunStatus.KILLED if isinstance(exception, KeyboardInterrupt) else RunStatus.FAILED
        if not self._cairn_loggers(trainer):
            self._warn_exception_checkpoints_not_uploaded()
            self._cleanup()  # no CairnLogger.finalize will follow (Lightning skips teardown hooks on errors)

    def _warn_exception_checkpoints_not_uploaded(self) -> None:
        """Lightning runs ``ModelCheckpoint``'s ``on_exception`` (its ``save_on_exception`` save) after every other
        callback's and then calls only ``Logger.finalize``: without a CairnLogger nothing of cairn's runs after it."""
        if self._mirror is None or self._run_id is None:
            return
        saving = [cb for cb in self._checkpoint_callbacks if getattr(cb, "save_on_exception", False)]
        if saving:
            where = ", ".join(str(getattr(cb, "dirpath", "?")) for cb in saving)
            warnings.warn(
                f"cairn: the checkpoint ModelCheckpoint(save_on_exception=True) writes for this exception is not "
                f"uploaded into run {self._run_id} (it stays in {where}): Lightning saves it after every other "
                "callback's on_exception and calls no callback hook after it; attach a CairnLogger (autolog does), "
                "which Lightning tells of that save",
                UserWarning,
                stacklevel=2,
            )

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if _stage_name(stage) == "fit":
            self._sync_pending(trainer)
            self._cleanup()

    def _cleanup(self) -> None:
        """Wait for uploads, undo the patches, end the run if this callback started it (idempotent)."""
        self._disarm_example_capture()
        self._example = None
        driven, self._driven = self._driven, None
        if driven:
            loops.release(driven)
        monitor, self._monitor, self._add_point = self._monitor, None, None
        if monitor is not None:
            with safe_autolog(INTEGRATION, "stopping system metrics", silent=self.silent):
                monitor.stop()
        self._drain()
        self._restore()
        if self._owned_run and self._run_id is not None:
            from cairn.tracking import fluent

            status = self._status if self._failed else RunStatus.FINISHED
            with safe_autolog(INTEGRATION, "ending the run", silent=self.silent):
                if self.client is not None:
                    self.client.set_terminated(self._run_id, status)
                else:
                    fluent.end_run(status, _run_id=self._run_id)
        self._owned_run = False
        self._run_id = None
        self._checkpoint_callbacks = []
        self._watching = False

    def _drain(self) -> None:
        if self._mirror is not None:
            self._mirror.uploader.drain()

    def _restore(self) -> None:
        if self._warning_filter is not None:
            filters: list[Any] = warnings.filters  # type: ignore[assignment]
            with contextlib.suppress(ValueError):
                filters.remove(self._warning_filter)
            warnings._filters_mutated()  # type: ignore[attr-defined]
            self._warning_filter = None
        self._positions.close()
        self._rng_after_load = None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None


def _stage_name(stage: Any) -> str:
    return str(getattr(stage, "value", stage))


_LIGHTNING_ADVICE = (
    "define the LightningModule in an importable module (not in the script run as __main__) and call "
    "self.save_hyperparameters() in its __init__, so that it is rebuilt from its class; or set "
    "self.example_input_array to an input its forward can be torch.export-ed with (without it autolog takes "
    "a few rows of the first forward call's tensor input)"
)


def _log_trained_model(client: Client, run_id: str, module: Any, name: str, example: Any) -> ModelInfo:
    """``cairn.lightning.log_model`` into ``run_id`` of ``client`` (recorded and uploaded through it)."""
    import cairn.flavors.lightning as lightning_flavor

    return lightning_flavor.log_model(module, name, run_id=run_id, input_example=example, client=client)


def _position(trainer: Any) -> dict[str, int]:
    """Where training is, for a checkpoint's index entry."""
    return {
        "global_step": int(trainer.global_step),
        "epoch": int(trainer.current_epoch),
        "log_step": _log_step(trainer),
    }
