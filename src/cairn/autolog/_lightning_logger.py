"""The body of the Lightning integration's ``CairnLogger`` and its hyperparameter handling
(see :mod:`cairn.autolog.lightning`)."""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from argparse import Namespace
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_only

from cairn.autolog._lightning_checkpoint_mirror import CheckpointMirror
from cairn.autolog._lightning_frameworks import _PARAM_BATCH, INTEGRATION
from cairn.autolog._lightning_resume import _experiment_id_for, _open_run
from cairn.autolog._lightning_uploads import _Uploader
from cairn.autolog.config import report_failure
from cairn.errors import CairnError, ParamConflict
from cairn.store.base import MetricPoint
from cairn.tracking import config as tracking_config
from cairn.tracking import validation
from cairn.tracking.entities import Param, RunStatus

if TYPE_CHECKING:
    from cairn.tracking.client import Client


# ------------------------------------------------------------------------------------------------ parameters


def _flatten_params(params: Any, prefix: str = "") -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, Namespace):
        params = vars(params)
    elif is_dataclass(params) and not isinstance(params, type):
        params = asdict(params)
    if not isinstance(params, Mapping):
        return {prefix or "params": params}
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Namespace | Mapping) or (is_dataclass(value) and not isinstance(value, type)):
            nested = _flatten_params(value, name)
            flat.update(nested if nested else {name: "{}"})
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    if callable(value) and isinstance(getattr(value, "__name__", None), str):
        value = value.__name__  # functions and classes by name (a module instance has none: its repr)
    elif isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    limit = validation.MAX_PARAM_VALUE_LENGTH
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clean_key(key: str, kind: str) -> str:
    """``key`` with characters cairn refuses replaced by ``_`` and cut to the key length limit."""
    cleaned = "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(key))
    cleaned = "/".join(part if part not in ("", ".", "..") else "_" for part in cleaned.split("/"))
    cleaned = cleaned[: validation.MAX_KEY_LENGTH] or "_"
    if cleaned != key:
        warnings.warn(f"cairn: {kind} name {key!r} logged as {cleaned!r}", UserWarning, stacklevel=4)
    return validation.validate_key(cleaned, kind)


# ------------------------------------------------------------------------------------------------ the logger


def _lightning_status(status: str) -> RunStatus:
    """Lightning's ``finalize`` status as a run status.

    ``"success"`` is FINISHED; ``"failed"`` is FAILED, or KILLED when a ``KeyboardInterrupt`` is being
    handled (Lightning reports Ctrl-C as "failed"); ``"finished"`` comes from the SLURM requeue handler,
    which stops the job to requeue it: KILLED. A run status name (``"KILLED"``) is taken as is.
    """
    text = str(status).lower()
    if text == "success":
        return RunStatus.FINISHED
    if text == "finished":
        return RunStatus.KILLED
    current = sys.exc_info()[0]
    if current is not None and issubclass(current, KeyboardInterrupt):
        return RunStatus.KILLED
    if text.upper() in RunStatus.__members__:
        return RunStatus.parse(text)
    return RunStatus.FAILED


class _CairnLoggerImpl:
    """The body of :class:`CairnLogger` (shared by the ``lightning`` and ``pytorch_lightning`` variants)."""

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        run_id: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        log_model: bool = True,
        *,
        prefix: str = "",
        save_dir: str | os.PathLike[str] | None = None,
        client: Client | None = None,
    ) -> None:
        super().__init__()
        self._requested_run_id = run_id
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tags = dict(tags or {})
        self._log_model = log_model
        self._prefix = prefix
        self._save_dir = os.fspath(save_dir) if save_dir is not None else None
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._owned = False
        self._injected_client = client
        self._client: Client | None = None
        self._add: Callable[[MetricPoint], None] | None = None
        self._keys: dict[str, str] = {}
        self._last_epoch: tuple[int, float] | None = None
        self._callback: Any = None
        self._mirror: CheckpointMirror | None = None
        self._created_ns = time.time_ns()
        self._run_lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (``ddp_spawn`` pickles the Trainer): the run id travels, the live handles do not.

        Raises:
            pickle.PicklingError: a ``client=`` was injected (a client holds open connections; the spawned
                process would log elsewhere without a word).
        """
        _refuse_injected_client(self._injected_client, "CairnLogger")
        state = dict(self.__dict__)
        for name in ("_client", "_add", "_callback", "_mirror", "_run_lock"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = self._add = self._callback = self._mirror = None
        self._run_lock = threading.RLock()
        if self._run_id is not None:
            self._requested_run_id, self._run_id = self._run_id, None  # re-attached on first use

    # -- the run ------------------------------------------------------------------------------------

    def _ensure_run(self) -> str:
        if self._run_id is not None:
            return self._run_id
        with self._run_lock:
            if self._run_id is None:
                self._attach()
            assert self._run_id is not None
            return self._run_id

    def _attach(self) -> None:
        from cairn.tracking import fluent

        client = self._injected_client or fluent._get_client()
        experiment_id = _experiment_id_for(client, self._experiment_name) if self._experiment_name else None
        run_id, self._owned = _open_run(
            self._requested_run_id,
            client=self._injected_client,
            experiment_id=experiment_id,
            run_name=self._run_name,
            tags=self._tags,
        )
        self._experiment_id = client.get_run(run_id).info.experiment_id
        self._client = client
        self._add = tracking_config.get_batcher(client.store).add
        self._run_id = run_id

    @property
    def client(self) -> Client | None:
        """The client the run is logged through (the injected one, else the fluent API's; ``None`` before use)."""
        return self._client

    @property
    def run_id(self) -> str | None:
        """The run's id (the run is created or attached on first use; ``None`` on non-zero ranks)."""
        _ = self.experiment
        return self._run_id

    @property
    def experiment(self) -> Any:
        """The cairn :class:`~cairn.Client` bound to the run's store (``self.logger.experiment.log_artifact(
        self.logger.run_id, path)``); a no-op stand-in on non-zero ranks."""
        return _rank_zero_experiment(self)

    @property
    def experiment_id(self) -> str | None:
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> str | None:
        """The experiment id (a safe directory name; ``ModelCheckpoint`` puts files under ``name/version``)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:
        """The run id."""
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    # -- logging ------------------------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Queue one point per metric at ``step`` (no I/O here; strings are skipped with a warning).

        Rank zero only, like the ``rank_zero_only`` methods, checked inline: the decorator's wrapper
        would be a third of this hot path's cost.
        """
        if getattr(rank_zero_only, "rank", 0) != 0:
            return
        run_id = self._run_id or self._ensure_run()
        add = self._add
        assert add is not None
        timestamp = time.time_ns() // 1_000_000
        at = 0 if step is None else int(step)
        keys = self._keys
        for key, value in metrics.items():
            name = keys.get(key)
            if name is None:
                name = self._metric_key(key)
            kind = type(value)
            if kind is not float:
                if isinstance(value, str):
                    self._keys.pop(key, None)
                    warnings.warn(f"cairn: metric {key!r} has the string value {value!r}; skipped", stacklevel=2)
                    continue
                value = float(value)
            if name == "epoch":
                if self._last_epoch == (at, value):
                    continue  # Lightning repeats it with every call at the same step
                self._last_epoch = (at, value)
            add(MetricPoint(run_id, name, value, timestamp, at))

    def _metric_key(self, key: str) -> str:
        full = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}" if self._prefix else key
        name = _clean_key(full, "metric")
        self._keys[key] = name
        return name

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Log hyperparameters (dict, ``Namespace``, ``AttributeDict``, dataclass; nested ones flattened
        with ``/``) as params. Values are text cut to the param length limit. A value differing from one
        the run already holds (a resumed run with changed hparams) is reported, not raised."""
        run_id = self._ensure_run()
        client = self._client
        assert client is not None
        flat = _flatten_params(params)
        items = [Param(_clean_key(k, "param"), _param_text(v)) for k, v in flat.items()]
        existing = client.get_run(run_id).data.params
        for start in range(0, len(items), _PARAM_BATCH):
            chunk = [p for p in items[start : start + _PARAM_BATCH] if existing.get(p.key) != p.value]
            if not chunk:
                continue
            try:
                client.log_batch(run_id, params=chunk)
            except ParamConflict as exc:
                warnings.warn(
                    f"cairn: hyperparameters differ from the ones run {run_id} already holds, kept the old "
                    f"values: {exc}",
                    UserWarning,
                    stacklevel=2,
                )

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        return None

    @rank_zero_only
    def save(self) -> None:
        return None

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Lightning's hook, called right after a ``ModelCheckpoint`` saved: the attached
        :class:`CairnCheckpointCallback` uploads the new files (with steps, RNG state and exact resume); without
        one, and with ``log_model`` set, the logger uploads them itself and deletes pruned ones from the run."""
        if self._callback is not None:
            self._callback._checkpoint_saved(checkpoint_callback)
            return
        if not self._log_model:
            return
        run_id = self._ensure_run()
        if self._mirror is None:
            assert self._client is not None
            self._mirror = CheckpointMirror(_Uploader(self._client, run_id, silent=False))
            # files from before this logger existed (restored with a checkpoint) were uploaded by an earlier fit
            self._mirror.watch([checkpoint_callback], older_than_ns=self._created_ns)
        # scan_dir: a save_on_exception file is in none of ModelCheckpoint's public attributes
        self._mirror.sync([checkpoint_callback], {"global_step": None, "log_step": None}, saved=True, scan_dir=True)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush metrics, wait for uploads, and end the run if this logger started (or resumed) it."""
        if self._run_id is None or self._client is None:
            return
        if self._callback is not None:
            self._callback._cleanup()
        if self._mirror is not None:
            self._mirror.sync_removals()  # ModelCheckpoint prunes after it notifies loggers
            self._mirror.uploader.drain()
        try:
            self._client.flush()
        except CairnError as exc:
            report_failure(INTEGRATION, "writing metrics", exc, silent=False)
        if not self._owned:
            return
        self._end(_lightning_status(status))

    def _end(self, status: RunStatus) -> None:
        from cairn.tracking import fluent

        assert self._run_id is not None and self._client is not None
        active = fluent.active_run()
        if active is not None and any(r.info.run_id == self._run_id for r in fluent._run_stack):
            fluent.end_run(status, _run_id=self._run_id)
        else:
            self._client.set_terminated(self._run_id, status)


def _refuse_injected_client(client: Client | None, owner: str) -> None:
    if client is not None:
        import pickle

        raise pickle.PicklingError(
            f"{owner}(client=...) cannot be sent to another process (ddp_spawn): its client holds open store "
            f"connections; use {owner}() with CAIRN_TRACKING_URI set in the environment instead"
        )


def _rank_zero_experiment(self: _CairnLoggerImpl) -> Any:
    if getattr(rank_zero_only, "rank", 0) != 0:
        return _NoOpExperiment()
    self._ensure_run()
    return self._client


class _NoOpExperiment:
    """What ``experiment`` gives on non-zero ranks: every call does nothing."""

    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None
