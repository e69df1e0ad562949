"""Lightning integration: a native ``Logger``, a checkpoint callback, exact resume, and autologging.

Works with ``lightning`` (``lightning.pytorch``) and, when it is installed, ``pytorch_lightning``.

- :class:`CairnLogger` is a Lightning ``Logger``: ``self.log`` values reach the run at Lightning's
  logging step (queued, no I/O on the training thread), hyperparameters become params, and the run is
  ended with the status Lightning reports (FINISHED, FAILED, KILLED on ``KeyboardInterrupt``). Only
  global rank zero logs.
- :class:`CairnCheckpointCallback` uploads every ``.ckpt`` file a ``ModelCheckpoint`` writes into the
  run (``lightning_checkpoints/``, by a background thread), deletes from the run the files
  ``ModelCheckpoint`` prunes (``save_top_k``), stores in each checkpoint what Lightning leaves out
  (the Python/numpy/torch RNG states under ``"cairn_rng"``, the run id under ``"cairn_run_id"``, the
  logging step under ``"cairn_log_step"``), makes the training DataLoader resumable in the middle of
  an epoch, and logs the trained model when ``fit`` ends.
- :func:`checkpoint_path` downloads a checkpoint of a run so ``trainer.fit(model, ckpt_path=...)``
  resumes exactly, in the same run: the next CairnLogger re-attaches to it and the points the dead
  process logged after the checkpoint are superseded (kept, hidden), so no curve has a duplicate or
  backward step. Resuming from an older checkpoint while newer ones exist forks a new run instead.
- :func:`enable` / :func:`disable` patch ``Trainer.__init__`` so every Trainer gets a CairnLogger
  (added beside the user's loggers) and the callback (``cairn.lightning.autolog()``,
  ``cairn.pytorch.autolog()``).

Why Lightning alone does not resume exactly in the middle of an epoch (Lightning 2.6): the fit loop
restores its batch counters, but a plain ``DataLoader`` has no ``state_dict``, so Lightning starts a
*fresh* iteration (a new shuffle) and only shortens the epoch to the batches that were left; it warns
that the loader is not resumable. It also restores no global RNG, so dropout and the next shuffles
differ too. The callback therefore tracks the training DataLoader (through the strategy's
``process_dataloader``): the random state at the epoch's start and the batches consumed go into the
checkpoint (``"cairn_loaders"``) and are replayed on resume (same permutation, remaining batches only),
and the RNG states of ``"cairn_rng"`` are restored when the checkpoint is loaded. The position is kept
out of Lightning's own loop state on purpose: a checkpoint written with the callback still resumes
(inexactly, as usual) in a Trainer without it.

Loading a ``.ckpt`` is ``torch.load``: Lightning 2.6 passes ``weights_only=None``, which torch >= 2.6
treats as ``weights_only=True`` (a restricted unpickler) for local files, unless you pass
``trainer.fit(..., weights_only=False)``, which unpickles fully; only do that for files you trust.
Everything cairn adds to a checkpoint is plain tensors, numbers, strings and tuples, so it loads
under ``weights_only=True``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import queue
import sys
import tempfile
import threading
import time
import warnings
import weakref
from argparse import Namespace
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning_utilities.core.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from cairn.autolog.config import AutologConfig, PatchSet, report_failure, safe_autolog
from cairn.errors import CairnError, CheckpointCorrupt, CheckpointError, InvalidArgument, ParamConflict
from cairn.store.base import MetricPoint
from cairn.tracking import config as tracking_config
from cairn.tracking import system_tags, validation
from cairn.tracking.entities import Param, RunStatus

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import Callback as _CallbackBase
    from lightning.pytorch.loggers.logger import Logger as _LoggerBase

    from cairn.artifacts import ArtifactStore
    from cairn.tracking.client import Client
else:
    try:
        from lightning.pytorch.callbacks import Callback as _CallbackBase
        from lightning.pytorch.loggers.logger import Logger as _LoggerBase
    except ImportError:  # only the older package is installed
        from pytorch_lightning.callbacks import Callback as _CallbackBase
        from pytorch_lightning.loggers.logger import Logger as _LoggerBase

__all__ = [
    "CHECKPOINTS_DIR",
    "INDEX_FILE",
    "CairnCheckpointCallback",
    "CairnLogger",
    "LightningAutologConfig",
    "checkpoint_path",
    "disable",
    "enable",
]

INTEGRATION = "lightning"
#: Run artifact directory holding the uploaded ``.ckpt`` files and their index.
CHECKPOINTS_DIR = "lightning_checkpoints"
#: The index of uploaded checkpoints (JSON), written after every upload and deletion.
INDEX_FILE = "index.json"
INDEX_FORMAT = "cairn.lightning_checkpoints"
RNG_KEY = "cairn_rng"
RUN_ID_KEY = "cairn_run_id"
LOG_STEP_KEY = "cairn_log_step"
LOADERS_KEY = "cairn_loaders"
_PARAM_BATCH = 100
_FRAMEWORK_PACKAGES = ("lightning.pytorch", "pytorch_lightning")

logger = logging.getLogger("cairn.autolog")


# ------------------------------------------------------------------------------------------------ frameworks


@dataclass(frozen=True)
class _Framework:
    """The classes of one Lightning package (``lightning.pytorch`` or ``pytorch_lightning``)."""

    package: str
    trainer: type
    logger: type
    callback: type
    model_checkpoint: type
    module: type


def _load_framework(package: str) -> _Framework | None:
    import importlib

    try:
        root = importlib.import_module(package)
        loggers: ModuleType = importlib.import_module(f"{package}.loggers.logger")
        callbacks: ModuleType = importlib.import_module(f"{package}.callbacks")
    except ImportError:
        return None
    return _Framework(
        package, root.Trainer, loggers.Logger, callbacks.Callback, callbacks.ModelCheckpoint, root.LightningModule
    )


_framework_cache: dict[str, _Framework | None] = {}


def frameworks() -> list[_Framework]:
    """The Lightning packages that can be imported here (``lightning.pytorch`` first)."""
    found = []
    for package in _FRAMEWORK_PACKAGES:
        if package not in _framework_cache:
            _framework_cache[package] = _load_framework(package)
        framework = _framework_cache[package]
        if framework is not None:
            found.append(framework)
    return found


def _framework_of(obj: Any) -> _Framework:
    for framework in frameworks():
        if isinstance(obj, framework.trainer | framework.module | framework.callback | framework.logger):
            return framework
    return frameworks()[0]


# ------------------------------------------------------------------------------------------------ RNG, safely


def _rng_to_checkpoint(state: Mapping[str, Any]) -> dict[str, Any]:
    """An RNG tree from :func:`~cairn.checkpoint.rng.capture_rng_state` in types ``torch.load(weights_only=True)``
    accepts: numpy's key array becomes an int64 tensor, everything else already is tensors, ints, tuples."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    out: dict[str, Any] = {
        "python": state["python"],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": state["torch"],
    }
    if "cuda" in state:
        out["cuda"] = list(state["cuda"])
    return out


def _rng_from_checkpoint(saved: Any) -> dict[str, Any]:
    import numpy as np

    try:
        numpy_state = saved["numpy"]
        python_state = saved["python"]
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        state: dict[str, Any] = {
            "python": (python_state[0], tuple(python_state[1]), python_state[2]),
            "numpy": (
                numpy_state["name"],
                keys,
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            ),
            "torch": saved["torch"],
        }
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointCorrupt(f"checkpoint entry {RNG_KEY!r} is not an RNG state written by cairn: {exc}") from exc
    if saved.get("cuda"):
        state["cuda"] = saved["cuda"]
    return state


# ------------------------------------------------------------------------------------------------ resumable loader


class _ResumableLoaderMethods:
    """The methods given to a training ``DataLoader`` while ``fit`` runs (see the module docstring).

    The callback stores ``_cairn_state_dict()`` in each checkpoint and, when resuming, hands it to
    ``_cairn_load_state_dict()`` before Lightning iterates the loader, so the next ``iter()`` yields
    exactly the batches the interrupted epoch had left, in the same shuffled order. (Public
    ``state_dict`` methods would make Lightning store the position in its own loop state, which a
    Trainer without the callback then fails to load.) The loader's class is swapped for a
    direct subclass of its own class holding these methods (a mixin base would change the instance
    layout, which forbids swapping ``__class__`` back), so they reach the original through
    ``_cairn_original`` rather than ``super()``.
    """

    _cairn_original: type
    _cairn_state: Any
    _cairn_pending: Any
    _cairn_raw: bool
    _cairn_limit: int | None

    def __iter__(self) -> Iterator[Any]:
        from cairn.checkpoint.dataloader import LoaderState, capture_epoch_start, resumable_position

        loader: Any = self
        original: Any = type(self)._cairn_original
        base_iter: Callable[[], Iterator[Any]] = original.__iter__.__get__(self)
        if self._cairn_raw:
            return base_iter()
        pending, self._cairn_pending = self._cairn_pending, None
        self._cairn_raw = True  # resumable_position/capture call iter(loader): plain iteration inside
        try:
            if pending is not None:
                iterator = resumable_position(loader, pending.batch_in_epoch, epoch_start=pending.epoch_start)
                state = LoaderState(pending.epoch_start, pending.batch_in_epoch)
            else:
                state = LoaderState(capture_epoch_start(loader))
                iterator = base_iter()
        finally:
            self._cairn_raw = False
        self._cairn_state = state
        return _tracked(iterator, state)

    def _cairn_state_dict(self) -> dict[str, Any]:
        """Position in the epoch, as tensors, numbers and tuples (loads under ``weights_only=True``)."""
        state = self._cairn_state
        start = state.epoch_start
        limit = self._cairn_limit
        finished = state.epoch_finished or (limit is not None and state.batch_in_epoch >= limit)
        return {
            "cairn_loader": 1,
            "batch_in_epoch": state.batch_in_epoch,
            "epoch_finished": finished,
            "epoch_start": None
            if start is None
            else {"rng": _rng_to_checkpoint(start.rng), "generators": dict(start.generators)},
        }

    def _cairn_load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` resume the recorded epoch where it stopped (nothing if it had ended)."""
        from cairn.checkpoint.dataloader import EpochStart, LoaderState

        if not isinstance(state, dict) or state.get("cairn_loader") != 1:
            raise CheckpointCorrupt("the training DataLoader state in this checkpoint was not written by cairn")
        start = state.get("epoch_start")
        batches = state.get("batch_in_epoch")
        if type(batches) is not int:
            raise CheckpointCorrupt("the training DataLoader state lacks batch_in_epoch")
        size = len(self)  # type: ignore[arg-type]
        if start is None or state.get("epoch_finished") or batches <= 0 or batches >= size:
            self._cairn_pending = None
            return
        epoch_start = EpochStart(_rng_from_checkpoint(start["rng"]), dict(start.get("generators") or {}))
        self._cairn_pending = LoaderState(epoch_start, batches)


def _tracked(iterator: Iterator[Any], state: Any) -> Iterator[Any]:
    for batch in iterator:
        state.batch_in_epoch += 1  # before the step runs: a checkpoint taken during it includes this batch
        yield batch
    state.epoch_finished = True


_resumable_classes: dict[type, type] = {}


def _make_resumable(loader: DataLoader[Any]) -> type | None:
    """Give ``loader`` a resumable class (a subclass of its own); return the original class, or None if
    the loader already has a ``state_dict`` of its own or is not a ``DataLoader``."""
    from cairn.checkpoint.dataloader import LoaderState

    original = type(loader)
    if not isinstance(loader, DataLoader) or hasattr(loader, "state_dict") or not hasattr(loader, "__len__"):
        return None
    try:
        len(loader)
    except TypeError:  # an IterableDataset without __len__
        return None
    resumable = _resumable_classes.get(original)
    if resumable is None:
        methods = {
            name: value
            for name, value in vars(_ResumableLoaderMethods).items()
            if name in ("__iter__", "_cairn_state_dict", "_cairn_load_state_dict")
        }
        namespace = {**methods, "_cairn_original": original, "__module__": original.__module__}
        resumable = type(original.__name__, (original,), namespace)
        _resumable_classes[original] = resumable
    state = {"_cairn_state": LoaderState(None), "_cairn_pending": None, "_cairn_raw": False, "_cairn_limit": None}
    for name, value in state.items():
        object.__setattr__(loader, name, value)
    loader.__class__ = resumable
    return original


def _undo_resumable(loader: Any, original: type) -> None:
    if type(loader).__dict__.get("_cairn_original") is original:
        loader.__class__ = original
        for name in ("_cairn_state", "_cairn_pending", "_cairn_raw", "_cairn_limit"):
            loader.__dict__.pop(name, None)


# ------------------------------------------------------------------------------------------------ upload thread


@dataclass
class _CheckpointIndex:
    """``lightning_checkpoints/index.json``: what was uploaded, with steps and hashes, and the best one."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    best: dict[str, str] = field(default_factory=dict)
    seq: int = 0

    def to_json(self, run_id: str) -> bytes:
        payload = {
            "format": INDEX_FORMAT,
            "version": 1,
            "run_id": run_id,
            "checkpoints": sorted(self.entries.values(), key=lambda e: e["seq"]),
            "best": self.best,
        }
        return json.dumps(payload, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def parse(cls, data: bytes, where: str) -> _CheckpointIndex:
        try:
            payload = json.loads(data)
            if payload.get("format") != INDEX_FORMAT:
                raise ValueError(f"format is {payload.get('format')!r}")
            entries = {str(e["path"]): dict(e) for e in payload["checkpoints"]}
            best = {str(k): str(v) for k, v in (payload.get("best") or {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointCorrupt(f"{where} is not a cairn checkpoint index: {exc}") from exc
        return cls(entries, best, max((int(e.get("seq", 0)) for e in entries.values()), default=0))


def _read_index(store: ArtifactStore) -> _CheckpointIndex | None:
    path = f"{CHECKPOINTS_DIR}/{INDEX_FILE}"
    if not store.exists(path):
        return None
    with store.open(path) as handle:
        return _CheckpointIndex.parse(handle.read(), store.uri_for(path))


@dataclass
class _Job:
    kind: Literal["put", "delete", "best"]
    remote: str
    handle: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


class _Uploader:
    """Uploads checkpoint files into one run from a background thread, in the order they were saved.

    The file is opened on the training thread when it is handed over (so a later overwrite or deletion
    by ``ModelCheckpoint`` cannot change what is uploaded) and copied by the thread; the index is
    rewritten after each upload or deletion, so it never lists a file that is not in the run.
    """

    def __init__(self, client: Client, run_id: str, *, silent: bool) -> None:
        self.run_id = run_id
        self._store = client.artifact_store(run_id)
        self._silent = silent
        self._index = _read_index(self._store) or _CheckpointIndex()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []
        _live_uploaders.add(self)

    @property
    def uploaded(self) -> dict[str, dict[str, Any]]:
        """Remote path -> index entry (read after :meth:`drain` for a stable view)."""
        return dict(self._index.entries)

    def put(self, local_path: str, remote: str, meta: dict[str, Any]) -> None:
        try:
            handle = open(local_path, "rb")  # noqa: SIM115 - closed by the upload thread
        except OSError as exc:
            self._fail(f"opening checkpoint {local_path}", exc)
            return
        self._submit(_Job("put", remote, handle, meta))

    def delete(self, remote: str) -> None:
        self._submit(_Job("delete", remote))

    def set_best(self, slot: str, remote: str) -> None:
        self._submit(_Job("best", remote, meta={"slot": slot}))

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every job handed over so far is done (or ``timeout`` seconds passed)."""
        if self._thread is None:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                logger.warning("cairn: %d checkpoint uploads still pending", self._queue.unfinished_tasks)
                return
            time.sleep(0.01)

    def close(self, timeout: float | None = None) -> None:
        self.drain(timeout)
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread = None
        _live_uploaders.discard(self)

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cairn-lightning-upload", daemon=True)
                self._thread.start()
            self._queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._run(job)
            except Exception as exc:  # a failed upload must not stop later ones
                self._fail(f"{job.kind} of {job.remote}" if job else "upload", exc)
            finally:
                if job is not None and job.handle is not None:
                    job.handle.close()
                self._queue.task_done()

    def _run(self, job: _Job) -> None:
        index = self._index
        if job.kind == "put":
            entry = self._upload(job)
            index.seq += 1
            entry["seq"] = index.seq
            index.entries[job.remote] = entry
        elif job.kind == "best":
            if job.remote in index.entries:
                index.best[job.meta["slot"]] = job.remote
        else:
            if index.entries.pop(job.remote, None) is None:
                return
            index.best = {k: v for k, v in index.best.items() if v != job.remote}
            self._write_index()  # first: the index must never list a missing file
            with contextlib.suppress(FileNotFoundError, KeyError):
                self._store.delete(job.remote)
            return
        self._write_index()

    def _upload(self, job: _Job) -> dict[str, Any]:
        digest = hashlib.sha256()
        size = 0
        directory, _, name = job.remote.rpartition("/")
        with tempfile.TemporaryDirectory(prefix="cairn-ckpt-") as tmp:
            staged = Path(tmp) / name
            with open(staged, "wb") as out:
                while chunk := job.handle.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            self._store.put_file(staged, directory or None)
        return {**job.meta, "path": job.remote, "file": name, "sha256": digest.hexdigest(), "size": size}

    def _write_index(self) -> None:
        self._store.put_bytes(self._index.to_json(self.run_id), f"{CHECKPOINTS_DIR}/{INDEX_FILE}")

    def _fail(self, what: str, exc: BaseException) -> None:
        self.errors.append(exc)
        report_failure(INTEGRATION, what, exc, silent=self._silent)


_live_uploaders: weakref.WeakSet[_Uploader] = weakref.WeakSet()


def _drain_all_at_exit() -> None:
    for uploader in list(_live_uploaders):
        uploader.drain(timeout=120)


atexit.register(_drain_all_at_exit)


# ------------------------------------------------------------------------------------------------ resume bookkeeping


@dataclass(frozen=True)
class _PendingResume:
    """Set by :func:`checkpoint_path`: the next CairnLogger continues ``run_id`` (or forks it)."""

    run_id: str
    path: str
    global_step: int
    log_step: int | None
    fork: bool


_pending_resume: _PendingResume | None = None
_superseded: set[tuple[str, int]] = set()
_pending_lock = threading.Lock()


def _take_pending() -> _PendingResume | None:
    global _pending_resume
    with _pending_lock:
        pending, _pending_resume = _pending_resume, None
    return pending


def _supersede_once(client: Client, run_id: str, step: int) -> None:
    """Hide the points logged after ``step`` (by a process that died after its checkpoint), once per process."""
    if (run_id, step) in _superseded:
        return
    client.flush()
    hidden = client.store.supersede_metrics_after(run_id, step)
    _superseded.add((run_id, step))
    if hidden:
        logger.info("cairn: resumed run %s at step %d; %d later points superseded", run_id, step, hidden)


def _log_step(trainer: Any) -> int:
    """The step Lightning hands to loggers (batches that stepped an optimizer), else the global step."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    value = getattr(loop, "_batches_that_stepped", None)
    return int(value) if isinstance(value, int) else int(trainer.global_step)


def _open_run(
    client: Client,
    requested: str | None,
    *,
    experiment_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> tuple[str, bool]:
    """The run to log into and whether the caller owns it (ends it): ``requested``; else the run a
    :func:`checkpoint_path` call prepared (continued from its checkpoint, or a fork of it) when no run is
    active; else the active run (not owned); else a new run (or ``CAIRN_RUN_ID``'s)."""
    from cairn.tracking import fluent

    active = fluent.active_run()
    run_id = requested
    pending = _take_pending() if run_id is None and active is None else None
    supersede_at: int | None = None
    if pending is not None:
        run_id = pending.run_id
        if pending.fork and pending.log_step is not None:
            now = time.time_ns() // 1_000_000
            run_id = client.store.fork_run(pending.run_id, pending.log_step, start_time=now).info.run_id
        else:
            supersede_at = pending.log_step
    owned = True
    if run_id is not None:
        if active is not None and active.info.run_id == run_id:
            owned = False
        elif active is None:
            fluent.start_run(run_id=run_id, tags=dict(tags or {}) or None)
        else:
            client.store.update_run_info(run_id, status=RunStatus.RUNNING)
    elif active is not None:
        run_id, owned = active.info.run_id, False
    else:
        run_id = fluent.start_run(
            experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {}) or None
        ).info.run_id
    if supersede_at is not None:
        _supersede_once(client, run_id, supersede_at)
    return run_id, owned


def _experiment_id_for(client: Client, name: str) -> str:
    from cairn.errors import ResourceAlreadyExists

    found = client.get_experiment_by_name(name)
    if found is None:
        with contextlib.suppress(ResourceAlreadyExists):
            client.create_experiment(name)
        found = client.get_experiment_by_name(name)
        assert found is not None
    return found.experiment_id


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
        self._client: Client | None = None
        self._add: Callable[[MetricPoint], None] | None = None
        self._keys: dict[str, str] = {}
        self._last_epoch: tuple[int, float] | None = None
        self._callback: Any = None
        self._uploader: _Uploader | None = None
        self._watched: dict[int, Callable[[], None]] = {}
        self._run_lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (``ddp_spawn`` pickles the Trainer): the run id travels, the live handles do not."""
        state = dict(self.__dict__)
        for name in ("_client", "_add", "_callback", "_uploader", "_run_lock"):
            state.pop(name, None)
        state["_watched"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = self._add = self._callback = self._uploader = None
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

        client = fluent._get_client()
        experiment_id = _experiment_id_for(client, self._experiment_name) if self._experiment_name else None
        run_id, self._owned = _open_run(
            client, self._requested_run_id, experiment_id=experiment_id, run_name=self._run_name, tags=self._tags
        )
        self._experiment_id = client.get_run(run_id).info.experiment_id
        self._client = client
        self._add = tracking_config.get_batcher(client.store).add
        self._run_id = run_id

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
        """Upload the checkpoint just written when ``log_model`` is set and no :class:`CairnCheckpointCallback`
        is attached (the callback does it, with steps, RNG state and exact resume)."""
        if not self._log_model or self._callback is not None:
            return
        path = getattr(checkpoint_callback, "_last_checkpoint_saved", None)
        if not path or not os.path.isfile(path):
            return
        run_id = self._ensure_run()
        if self._uploader is None:
            assert self._client is not None
            self._uploader = _Uploader(self._client, run_id, silent=False)
        state = checkpoint_callback.__dict__  # the callback arrives as a weakref proxy
        if id(state) not in self._watched:
            self._watched[id(state)] = _watch_removals(checkpoint_callback, self._uploader, "")
        meta = {
            "global_step": None,
            "log_step": None,
            "kind": _kind_of(checkpoint_callback, path),
            "local_path": os.path.abspath(path),
        }
        self._uploader.put(path, _remote_name("", path), meta)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush metrics, wait for uploads, and end the run if this logger started (or resumed) it."""
        if self._run_id is None or self._client is None:
            return
        if self._callback is not None:
            self._callback._cleanup()
        if self._uploader is not None:
            self._uploader.drain()
        for undo in self._watched.values():
            undo()
        self._watched.clear()
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


def _rank_zero_experiment(self: _CairnLoggerImpl) -> Any:
    if getattr(rank_zero_only, "rank", 0) != 0:
        return _NoOpExperiment()
    self._ensure_run()
    return self._client


class _NoOpExperiment:
    """What ``experiment`` gives on non-zero ranks: every call does nothing."""

    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class CairnLogger(_CairnLoggerImpl, _LoggerBase):
    """A Lightning ``Logger`` writing to a cairn run: ``Trainer(logger=CairnLogger())``.

    The run is, in order: ``run_id`` if given; the run a :func:`checkpoint_path` call just prepared
    (resuming it, or a fork of it); the active run (``cairn.start_run()``, left open at the end); else a
    new run (``experiment_name``, ``run_name``, ``tags``), or the run of ``CAIRN_RUN_ID``. A run the logger
    started or resumed is ended by Lightning's ``finalize``.

    Args:
        run_id: log into this existing run.
        experiment_name: experiment of a new run (created if missing); default: the active experiment.
        run_name: name of a new run.
        tags: tags set on the run.
        log_model: without a :class:`CairnCheckpointCallback`, upload the checkpoints ``ModelCheckpoint``
            writes (and delete pruned ones from the run). The callback does this and more.
        prefix: put before every metric name, joined with ``-`` (as Lightning's MLFlowLogger).
        save_dir: reported as ``save_dir`` (``ModelCheckpoint`` then saves under ``save_dir/name/version``);
            by default checkpoints go under the Trainer's ``default_root_dir``.
    """


# ------------------------------------------------------------------------------------------------ the callback


def _remote_name(subdir: str, local_path: str) -> str:
    base = os.path.basename(local_path)
    return f"{CHECKPOINTS_DIR}/{subdir}/{base}" if subdir else f"{CHECKPOINTS_DIR}/{base}"


def _kind_of(checkpoint_callback: Any, path: str) -> str:
    last = getattr(checkpoint_callback, "last_model_path", "")
    return "last" if last and os.path.abspath(last) == os.path.abspath(path) else "top_k"


def _watch_removals(checkpoint_callback: Any, uploader: _Uploader, subdir: str) -> Callable[[], None]:
    """Delete from the run the files ``checkpoint_callback`` prunes; returns the undo function."""
    original = getattr(checkpoint_callback, "_remove_checkpoint", None)
    if original is None:
        return lambda: None

    def remove(trainer: Any, filepath: str) -> None:
        original(trainer, filepath)
        if getattr(trainer, "is_global_zero", True):
            uploader.delete(_remote_name(subdir, str(filepath)))

    checkpoint_callback._remove_checkpoint = remove
    return lambda: checkpoint_callback.__dict__.pop("_remove_checkpoint", None)


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
    ) -> None:
        super().__init__()
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
        self._uploader: _Uploader | None = None
        self._undo: list[Callable[[], None]] = []
        self._swapped: list[tuple[Any, type]] = []
        self._loader_states: dict[int, dict[str, Any]] = {}
        self._loader_calls = 0
        self._warning_filter: Any = None
        self._save_info: dict[str, Any] = {}
        self._failed = False
        self._status = RunStatus.FAILED
        self._monitor: Any = None
        self._add_point: Callable[[MetricPoint], None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (``ddp_spawn`` pickles the Trainer): settings travel, the per-fit state does not."""
        state = dict(self.__dict__)
        fit_only = ("_uploader", "_warning_filter", "_monitor", "_add_point")
        state.update(dict.fromkeys(fit_only), _undo=[], _swapped=[], _loader_states={})
        return state

    # -- the run ------------------------------------------------------------------------------------

    def _cairn_loggers(self, trainer: Any) -> list[_CairnLoggerImpl]:
        return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, _CairnLoggerImpl)]

    def _resolve_run(self, trainer: Any) -> str:
        from cairn.tracking import fluent

        if self._run_id is not None:
            return self._run_id
        for cairn_logger in self._cairn_loggers(trainer):
            run_id = cairn_logger.run_id
            if run_id is not None:
                self._run_id = run_id
                return run_id
        self._run_id, self._owned_run = _open_run(fluent._get_client(), None)
        return self._run_id

    # -- hooks --------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if _stage_name(stage) != "fit":
            return
        self._failed = False
        for cairn_logger in self._cairn_loggers(trainer):
            cairn_logger._callback = self
        if self.resumable_dataloaders:
            self._patch_strategy(trainer)
        if not trainer.is_global_zero:
            return
        with safe_autolog(INTEGRATION, "preparing checkpoint uploads", silent=self.silent):
            run_id = self._resolve_run(trainer)
            if self.upload_checkpoints:
                from cairn.tracking import fluent

                if self._uploader is None or self._uploader.run_id != run_id:
                    self._uploader = _Uploader(fluent._get_client(), run_id, silent=self.silent)
                for position, callback in enumerate(trainer.checkpoint_callbacks):
                    self._watch(trainer, callback, "" if position == 0 else str(position))

    def _watch(self, trainer: Any, checkpoint_callback: Any, subdir: str) -> None:
        uploader = self._uploader
        assert uploader is not None
        callback_ref = weakref.proxy(checkpoint_callback)
        slot = subdir or "0"
        save = getattr(checkpoint_callback, "_save_checkpoint", None)
        link = getattr(checkpoint_callback, "_link_checkpoint", None)

        def upload(path: str) -> None:
            if not os.path.isfile(path):
                return
            meta = {
                "global_step": int(trainer.global_step),
                "epoch": int(trainer.current_epoch),
                "log_step": self._save_info.get("log_step", _log_step(trainer)),
                "kind": _kind_of(callback_ref, path),
                "local_path": os.path.abspath(path),
                "monitor": getattr(callback_ref, "monitor", None),
                "score": _score(getattr(callback_ref, "current_score", None)),
                "time": time.time_ns() // 1_000_000,
            }
            remote = _remote_name(subdir, path)
            uploader.put(path, remote, meta)
            best = getattr(callback_ref, "best_model_path", "")
            if best:
                uploader.set_best(slot, _remote_name(subdir, best))

        if save is not None:

            def save_checkpoint(trainer_: Any, filepath: str) -> None:
                save(trainer_, filepath)
                if trainer_.is_global_zero:
                    with safe_autolog(INTEGRATION, "queueing a checkpoint upload", silent=self.silent):
                        upload(str(filepath))

            checkpoint_callback._save_checkpoint = save_checkpoint
            self._undo.append(lambda: checkpoint_callback.__dict__.pop("_save_checkpoint", None))
        if link is not None:

            def link_checkpoint(trainer_: Any, filepath: str, linkpath: str) -> None:
                link(trainer_, filepath, linkpath)
                if trainer_.is_global_zero:
                    with safe_autolog(INTEGRATION, "queueing a checkpoint upload", silent=self.silent):
                        upload(str(linkpath))

            checkpoint_callback._link_checkpoint = link_checkpoint
            self._undo.append(lambda: checkpoint_callback.__dict__.pop("_link_checkpoint", None))
        self._undo.append(_watch_removals(checkpoint_callback, uploader, subdir))

    def _patch_strategy(self, trainer: Any) -> None:
        strategy = trainer.strategy
        original = strategy.process_dataloader
        callback = self

        def process_dataloader(dataloader: Any) -> Any:
            dataloader = original(dataloader)
            if trainer.training and not trainer.sanity_checking:
                with safe_autolog(INTEGRATION, "making the training DataLoader resumable", silent=callback.silent):
                    callback._track_loader(dataloader)
            return dataloader

        strategy.process_dataloader = process_dataloader
        self._undo.append(lambda: strategy.__dict__.pop("process_dataloader", None))

    def _track_loader(self, dataloader: Any) -> None:
        position = self._loader_calls
        self._loader_calls += 1
        previous = _make_resumable(dataloader)
        if previous is None:
            return
        self._swapped.append((dataloader, previous))
        state = self._loader_states.pop(position, None)
        if state is not None:
            dataloader._cairn_load_state_dict(state)
            self._quiet_lightnings_resume_warning()

    def _quiet_lightnings_resume_warning(self) -> None:
        """Lightning warns that a mid-epoch resume with a plain DataLoader is unreliable; here it is not."""
        if self._warning_filter is None:
            warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch")
            self._warning_filter = warnings.filters[0]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        limit = trainer.num_training_batches
        for loader, _original in self._swapped:
            loader._cairn_limit = int(limit) if limit != float("inf") else None
        if trainer.is_global_zero and (self.log_system_metrics or self.log_grad_norm):
            with safe_autolog(INTEGRATION, "starting system metrics and grad-norm logging", silent=self.silent):
                self._start_extra_metrics(trainer)

    def _start_extra_metrics(self, trainer: Any) -> None:
        from cairn.tracking import fluent

        run_id = self._resolve_run(trainer)
        self._add_point = tracking_config.get_batcher(fluent._get_client().store).add
        if self.log_system_metrics and self._monitor is None:
            from cairn.autolog.system_metrics import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(run_id, self._add_point, interval=self.system_metrics_interval)
            self._monitor.start()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        add = self._add_point
        if not self.log_grad_norm or add is None or self._run_id is None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
            key = "grad_norm" if len(trainer.optimizers) == 1 else f"grad_norm/opt{trainer.optimizers.index(optimizer)}"
            add(MetricPoint(self._run_id, key, float(norm), int(time.time() * 1000), _log_step(trainer)))

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        from cairn.checkpoint.rng import capture_rng_state

        log_step = _log_step(trainer)
        self._save_info = {"log_step": log_step}
        checkpoint[RNG_KEY] = _rng_to_checkpoint(capture_rng_state())
        checkpoint[LOG_STEP_KEY] = log_step
        loaders = self._training_loader_states(trainer)
        if loaders:
            checkpoint[LOADERS_KEY] = loaders
        if self._run_id is not None:
            checkpoint[RUN_ID_KEY] = self._run_id

    def _training_loader_states(self, trainer: Any) -> list[dict[str, Any]]:
        """``{"index": position among the training loaders, **state}`` of each loader this callback tracks."""
        combined = getattr(trainer.fit_loop, "_combined_loader", None)
        flattened = list(getattr(combined, "flattened", []) or [])
        tracked = {id(loader) for loader, _original in self._swapped}
        return [
            {"index": i, **loader._cairn_state_dict()} for i, loader in enumerate(flattened) if id(loader) in tracked
        ]

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        from cairn.checkpoint.rng import restore_rng_state

        self._loader_calls = 0
        self._loader_states = {
            int(state["index"]): state
            for state in checkpoint.get(LOADERS_KEY) or []
            if isinstance(state, dict) and isinstance(state.get("index"), int)
        }
        if self.restore_rng and RNG_KEY in checkpoint:
            with safe_autolog(INTEGRATION, "restoring the RNG states", silent=self.silent):
                restore_rng_state(_rng_from_checkpoint(checkpoint[RNG_KEY]))
        source = checkpoint.get(RUN_ID_KEY)
        step = checkpoint.get(LOG_STEP_KEY)
        if not trainer.is_global_zero or not isinstance(source, str) or not isinstance(step, int):
            return
        with safe_autolog(INTEGRATION, "continuing the run's metrics", silent=self.silent):
            from cairn.tracking import fluent

            run_id = self._resolve_run(trainer)
            client = fluent._get_client()
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

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.log_model or not trainer.is_global_zero or self._failed:
            return
        with safe_autolog(INTEGRATION, "logging the trained model", silent=self.silent):
            import cairn.flavors.lightning as lightning_flavor

            run_id = self._resolve_run(trainer)
            example = getattr(pl_module, "example_input_array", None)
            if isinstance(example, torch.Tensor):
                example = example.detach().cpu().numpy()
            elif example is not None and not hasattr(example, "shape"):
                example = None
            lightning_flavor.log_model(pl_module, self.model_name, run_id=run_id, input_example=example)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._failed = True
        self._status = RunStatus.KILLED if isinstance(exception, KeyboardInterrupt) else RunStatus.FAILED
        if not self._cairn_loggers(trainer):
            self._cleanup()  # no CairnLogger.finalize will follow (Lightning skips teardown hooks on errors)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if _stage_name(stage) == "fit":
            self._cleanup()

    def _cleanup(self) -> None:
        """Wait for uploads, undo the patches, end the run if this callback started it (idempotent)."""
        monitor, self._monitor, self._add_point = self._monitor, None, None
        if monitor is not None:
            with safe_autolog(INTEGRATION, "stopping system metrics", silent=self.silent):
                monitor.stop()
        self._drain()
        self._restore()
        if self._owned_run and self._run_id is not None:
            from cairn.tracking import fluent

            with safe_autolog(INTEGRATION, "ending the run", silent=self.silent):
                fluent.end_run(self._status if self._failed else RunStatus.FINISHED, _run_id=self._run_id)
        self._owned_run = False
        self._run_id = None

    def _drain(self) -> None:
        if self._uploader is not None:
            self._uploader.drain()

    def _restore(self) -> None:
        while self._undo:
            self._undo.pop()()
        if self._warning_filter is not None:
            filters: list[Any] = warnings.filters  # type: ignore[assignment]
            with contextlib.suppress(ValueError):
                filters.remove(self._warning_filter)
            warnings._filters_mutated()  # type: ignore[attr-defined]
            self._warning_filter = None
        self._loader_states, self._loader_calls = {}, 0
        while self._swapped:
            loader, original = self._swapped.pop()
            _undo_resumable(loader, original)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None


def _stage_name(stage: Any) -> str:
    return str(getattr(stage, "value", stage))


def _score(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class CairnCheckpointCallback(_CheckpointCallbackImpl, _CallbackBase):
    """Uploads Lightning checkpoints into the run and makes resuming from them exact.

    Add it next to a ``ModelCheckpoint`` (autolog does both): every file the ``ModelCheckpoint``
    callbacks write is uploaded to ``lightning_checkpoints/`` of the run in the background (files of
    a second ``ModelCheckpoint`` go to ``lightning_checkpoints/1/``...), and files they prune are deleted
    from the run too. Each checkpoint also holds the RNG states, the run id and the logging step.

    Args:
        upload_checkpoints: upload ``ModelCheckpoint``'s files (and delete pruned ones remotely).
        log_model: log the trained LightningModule (cairn's ``lightning`` flavor) when ``fit`` ends.
        model_name: the artifact path of that model.
        restore_rng: restore the RNG states stored in a checkpoint when Lightning loads it.
        resumable_dataloaders: track the training ``DataLoader``'s position so a mid-epoch resume continues
            the same shuffled epoch (loaders with a ``state_dict`` of their own are left to Lightning).
        log_system_metrics: sample CPU, memory, disk, network (and GPU with pynvml) as ``system/...`` metrics
            every ``system_metrics_interval`` seconds during ``fit``, in a background thread.
        log_grad_norm: log ``grad_norm`` (``grad_norm/opt<i>`` for several optimizers), the total 2-norm of
            the gradients before each optimizer step (reading it waits for the device).
        silent: report problems of cairn's own code on the ``cairn.autolog`` logger instead of as warnings.
    """


# ------------------------------------------------------------------------------------------------ checkpoint_path


def checkpoint_path(
    run_id: str | None = None,
    which: Literal["last", "best"] | int = "last",
    *,
    dst_path: str | os.PathLike[str] | None = None,
) -> str:
    """Download a Lightning checkpoint of a run and return its local path, for ``trainer.fit(ckpt_path=...)``.

    The file's sha256 is checked against the one recorded at upload. The next :class:`CairnLogger`
    of this process (with no ``run_id`` of its own and no active run) then continues ``run_id``: the
    points logged after the checkpoint are superseded, so metrics continue without duplicates.
    Choosing a checkpoint older than the newest one forks a new run instead (tags
    ``cairn.forkedFrom``/``cairn.forkedAtStep``), carrying the history up to it: nothing is hidden.

    Lightning loads the file with ``torch.load`` (see the module docstring about ``weights_only``).

    Args:
        run_id: the run; default ``CAIRN_RUN_ID``.
        which: ``"last"`` (the newest upload), ``"best"`` (``ModelCheckpoint.best_model_path`` of the
            first ``ModelCheckpoint``), or a global step.
        dst_path: directory to download into (default: a new temporary directory).

    Raises:
        InvalidArgument: no run id, or a bad ``which``.
        CheckpointError: the run has no Lightning checkpoint, or none matching ``which`` (the message
            lists the steps available).
        CheckpointCorrupt: the downloaded file does not match its recorded sha256 (for ``"last"``, older
            intact checkpoints are tried first, with a warning).
    """
    global _pending_resume
    from cairn.tracking import fluent

    run_id = run_id or os.environ.get("CAIRN_RUN_ID")
    if not run_id:
        raise InvalidArgument("checkpoint_path needs a run_id (or CAIRN_RUN_ID in the environment)")
    client = fluent._get_client()
    store = client.artifact_store(run_id)
    index = _read_index(store)
    if index is None or not index.entries:
        raise CheckpointError(f"run {run_id} has no Lightning checkpoints ({CHECKPOINTS_DIR}/{INDEX_FILE} is missing)")
    newest_first = sorted(index.entries.values(), key=lambda e: e["seq"], reverse=True)
    candidates = _select(index, newest_first, which, run_id)
    destination = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="cairn-lightning-"))
    last_error: CheckpointCorrupt | None = None
    damaged: set[str] = set()
    for entry in candidates:
        local = store.download(entry["path"], destination)
        digest = hashlib.sha256()
        with open(local, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        if digest.hexdigest() != entry.get("sha256"):
            last_error = CheckpointCorrupt(
                f"{entry['path']} of run {run_id} does not match the sha256 recorded when it was uploaded "
                "(the uploading process probably died while replacing it)"
            )
            if which == "last":
                warnings.warn(f"cairn: {last_error}; trying an older checkpoint", UserWarning, stacklevel=2)
                damaged.add(entry["path"])
                continue
            raise last_error
        log_step = entry.get("log_step")
        intact = [e for path, e in index.entries.items() if path not in damaged]
        steps = [e["log_step"] for e in intact if isinstance(e.get("log_step"), int)]
        newest_step = max(steps, default=None)
        fork = isinstance(log_step, int) and newest_step is not None and newest_step > log_step
        with _pending_lock:
            _pending_resume = _PendingResume(
                run_id,
                str(local),
                int(entry.get("global_step") or 0),
                log_step if isinstance(log_step, int) else None,
                fork,
            )
        return str(local)
    assert last_error is not None
    raise last_error


def _select(
    index: _CheckpointIndex, newest_first: list[dict[str, Any]], which: Any, run_id: str
) -> list[dict[str, Any]]:
    if which == "last":
        return newest_first
    if which == "best":
        best = index.best.get("0")
        if best is None or best not in index.entries:
            raise CheckpointError(f"run {run_id} records no best Lightning checkpoint")
        return [index.entries[best]]
    if isinstance(which, bool) or not isinstance(which, int):
        raise InvalidArgument(f"which must be 'last', 'best' or a global step, got {which!r}")
    found = [e for e in newest_first if e.get("global_step") == which]
    if not found:
        steps = sorted({e["global_step"] for e in newest_first if isinstance(e.get("global_step"), int)})
        raise CheckpointError(f"run {run_id} has no Lightning checkpoint at global step {which}; available: {steps}")
    return found


# ------------------------------------------------------------------------------------------------ autolog


@dataclass(frozen=True)
class LightningAutologConfig(AutologConfig):
    """Options of ``cairn.lightning.autolog()`` (``cairn.pytorch.autolog()`` passes its own config object,
    read through the same attribute names).

    Attributes:
        log_every_n_steps: Lightning's ``log_every_n_steps`` for Trainers that do not set it.
        checkpoint_every_n_steps: add a ``ModelCheckpoint(every_n_train_steps=...)`` (``save_last=True``,
            the newest ``keep_last`` kept) to Trainers that have no ``ModelCheckpoint`` of their own.
        checkpoint_every_n_epochs: the same, every so many epochs.
        keep_last: how many of those checkpoints to keep (locally and in the run).
        resume: a run id (or ``True``/``"latest"`` for ``CAIRN_RUN_ID``): ``fit`` without ``ckpt_path``
            resumes from that run's last Lightning checkpoint, in that run.
        log_system_metrics, system_metrics_interval, log_grad_norm: see :class:`CairnCheckpointCallback`.
    """

    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_n_epochs: int | None = None
    keep_last: int = 3
    resume: str | bool | None = None
    log_system_metrics: bool = False
    system_metrics_interval: float = 10.0
    log_grad_norm: bool = False


_patches = PatchSet()
_config: Any = None


def enable(config: Any) -> None:
    """Patch every importable ``Trainer`` according to ``config`` (replacing an earlier call's patches).

    ``config`` is a :class:`LightningAutologConfig` or any object with the same attribute names
    (missing ones take the defaults); ``config.disable`` turns autolog off.
    """
    global _config
    disable()
    if getattr(config, "disable", False):
        return
    _config = config
    for framework in frameworks():
        _patches.patch(framework.trainer, "__init__", _wrap_init)
        _patches.patch(framework.trainer, "fit", _wrap_fit)


def disable() -> None:
    """Undo :func:`enable`'s patches (Trainers created meanwhile keep their logger and callback)."""
    global _config
    _patches.restore()
    _config = None


def is_enabled() -> bool:
    return len(_patches) > 0


def _option(name: str, default: Any) -> Any:
    value = getattr(_config, name, default)
    return default if value is None and default is not None else value


def _wrap_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if _config is not None:
            kwargs.setdefault("log_every_n_steps", _option("log_every_n_steps", 1))
            _maybe_add_model_checkpoint(self, kwargs)
        original(self, *args, **kwargs)
        if _config is not None:
            with safe_autolog(INTEGRATION, "attaching CairnLogger and CairnCheckpointCallback", silent=_silent()):
                _attach(self)

    return __init__


def _silent() -> bool:
    return bool(getattr(_config, "silent", False))


def _maybe_add_model_checkpoint(trainer: Any, kwargs: dict[str, Any]) -> None:
    every_steps = getattr(_config, "checkpoint_every_n_steps", None)
    every_epochs = getattr(_config, "checkpoint_every_n_epochs", None)
    if (not every_steps and not every_epochs) or kwargs.get("enable_checkpointing") is False:
        return
    framework = _framework_of(trainer)
    callbacks = kwargs.get("callbacks")
    listed = [] if callbacks is None else [callbacks] if not isinstance(callbacks, list | tuple) else list(callbacks)
    if any(isinstance(cb, framework.model_checkpoint) for cb in listed):
        return
    keep = int(_option("keep_last", 3))
    listed.append(
        framework.model_checkpoint(
            every_n_train_steps=every_steps or None,
            every_n_epochs=None if every_steps else every_epochs,
            save_top_k=keep,
            monitor="step",
            mode="max",
            save_last=True,
        )
    )
    kwargs["callbacks"] = listed


_classes: dict[str, tuple[type, type]] = {}


def _classes_for(framework: _Framework) -> tuple[type, type]:
    """(CairnLogger, CairnCheckpointCallback) built on ``framework``'s base classes."""
    if framework.package == "lightning.pytorch" or issubclass(CairnLogger, framework.logger):
        return CairnLogger, CairnCheckpointCallback
    if framework.package not in _classes:
        _classes[framework.package] = (
            type("CairnLogger", (_CairnLoggerImpl, framework.logger), {"__doc__": CairnLogger.__doc__}),
            type(
                "CairnCheckpointCallback",
                (_CheckpointCallbackImpl, framework.callback),
                {"__doc__": CairnCheckpointCallback.__doc__},
            ),
        )
    return _classes[framework.package]


def _attach(trainer: Any) -> None:
    logger_class, callback_class = _classes_for(_framework_of(trainer))
    loggers = list(trainer.loggers)
    if not any(isinstance(lg, _CairnLoggerImpl) for lg in loggers):
        extra = getattr(_config, "extra_tags", None) or {}
        loggers.append(logger_class(tags={"cairn.autolog": INTEGRATION, **dict(extra)}, log_model=False))
        trainer.loggers = loggers
    if not any(isinstance(cb, _CheckpointCallbackImpl) for cb in trainer.callbacks):
        callback = callback_class(
            log_model=bool(getattr(_config, "log_models", True)),
            log_system_metrics=bool(getattr(_config, "log_system_metrics", False)),
            system_metrics_interval=float(getattr(_config, "system_metrics_interval", 10.0)),
            log_grad_norm=bool(getattr(_config, "log_grad_norm", False)),
            silent=_silent(),
        )
        callbacks = trainer.callbacks
        position = next(
            (i for i, cb in enumerate(callbacks) if isinstance(cb, _framework_of(trainer).model_checkpoint)),
            len(callbacks),
        )
        callbacks.insert(position, callback)


def _wrap_fit(original: Callable[..., Any]) -> Callable[..., Any]:
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        resume = getattr(_config, "resume", None)
        if resume and kwargs.get("ckpt_path") is None and len(args) < 5:  # (model, train, val, datamodule)
            run_id = os.environ.get("CAIRN_RUN_ID") if resume is True or resume == "latest" else str(resume)
            if run_id:
                kwargs["ckpt_path"] = _resume_path(run_id)
        return original(self, *args, **kwargs)

    return fit


def _resume_path(run_id: str) -> str | None:
    """The run's last checkpoint, or None (training starts fresh in that run) if it has none yet."""
    global _pending_resume
    try:
        return checkpoint_path(run_id, "last")
    except CheckpointError:
        with _pending_lock:
            _pending_resume = _PendingResume(run_id, "", 0, None, False)
        return None
