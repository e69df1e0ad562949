"""Shared autolog machinery: the options every integration takes, failure isolation, patching, runs.

Every framework integration (scikit-learn, PyTorch, Lightning, Transformers) builds on four pieces:

- :class:`AutologConfig`: the options common to every ``autolog()``; an integration subclasses it
  for its own (``max_tuning_runs`` for scikit-learn, ...). Each integration keeps its config in
  its own module object; there is no registry keyed by strings.
- :func:`safe_autolog`: runs autolog's own code so that an exception in it becomes an
  :class:`AutologWarning` (or, with ``silent=True``, a log record on the ``cairn.autolog`` logger)
  while the user's call returns normally. It behaves the same under pytest as anywhere else.
- :class:`ReentryGuard`: a thread-local "already inside an autologged call" flag, so that a fit
  that calls other patched fits (a Pipeline fitting its steps) logs once.
- :class:`PatchSet`: replaces methods on classes and restores exactly what was there.

:func:`autolog_run` gives the run to log into: the active run if there is one, else a new run that
it ends when the block exits.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import RunLeased

__all__ = [
    "AutologConfig",
    "AutologRun",
    "AutologWarning",
    "PatchSet",
    "ReentryGuard",
    "autolog_run",
    "safe_autolog",
]

logger = logging.getLogger("cairn.autolog")


class AutologWarning(UserWarning):
    """Autolog code failed; the user's training call itself was not affected."""


@dataclass(frozen=True)
class AutologConfig:
    """Options shared by every integration's ``autolog()``.

    Attributes:
        log_models: log the trained model as an artifact of the run.
        log_input_examples: store the first rows of the training data as the model's input example.
        log_datasets: record a digest and the shape of the training data.
        disable: turn the integration off (and undo its patches).
        silent: report autolog failures on the ``cairn.autolog`` logger instead of as warnings.
        extra_tags: tags set on every run the integration creates or logs into.
    """

    log_models: bool = True
    log_input_examples: bool = False
    log_datasets: bool = True
    disable: bool = False
    silent: bool = False
    extra_tags: Mapping[str, str] = field(default_factory=dict)


def report_failure(integration: str, what: str, exc: BaseException, *, silent: bool) -> None:
    """Tell the user that autolog code failed, without raising.

    A warning by default (category :class:`AutologWarning`, so it can be filtered or turned into an
    error with ``warnings.simplefilter("error", AutologWarning)``); a WARNING log record when ``silent``.
    """
    message = (
        f"cairn {integration} autolog: {what} failed and was skipped ({type(exc).__name__}: {exc}); "
        "the training call itself was not affected"
    )
    if silent:
        logger.warning(message, exc_info=exc)
    else:
        warnings.warn(message, AutologWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning to the first frame outside cairn (the user's call)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not (module == "cairn" or module.startswith("cairn.") or module == "contextlib"):
            return level
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return 2


@contextlib.contextmanager
def safe_autolog(integration: str, what: str, *, silent: bool = False) -> Iterator[None]:
    """Run autolog's own code; an ``Exception`` in it is reported (see :func:`report_failure`), not raised.

    Only ``Exception`` is caught, and not :class:`~cairn.errors.RunLeased` (another process resumes the run:
    training on would write into it twice). ``KeyboardInterrupt`` and ``SystemExit`` propagate. Code the
    user asked for (the wrapped ``fit``) must not run inside this block, or its errors would be hidden.

    Example:
        >>> with safe_autolog("sklearn", "logging metrics"):
        ...     log_training_metrics()
    """
    try:
        yield
    except RunLeased:  # another process is resuming the run: going on would write into it twice
        raise
    except Exception as exc:
        report_failure(integration, what, exc, silent=silent)


class ReentryGuard:
    """A per-thread flag telling whether the current thread is inside an autologged call.

    Example:
        >>> guard = ReentryGuard()
        >>> with guard.enter() as outermost:
        ...     if outermost:
        ...         log_things()
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def active(self) -> bool:
        """True while this thread is inside an :meth:`enter` block."""
        return getattr(self._local, "depth", 0) > 0

    @contextlib.contextmanager
    def enter(self) -> Iterator[bool]:
        """Enter the guarded region; yields True for the outermost entry of this thread only."""
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            yield depth == 0
        finally:
            self._local.depth = depth


_ORIGINAL_ATTR = "__cairn_autolog_original__"


class _PatchedDescriptor:
    """Wraps a non-function descriptor (``available_if``, ``property``) so attribute lookup keeps its
    semantics: when the original raises ``AttributeError`` (method unavailable) so does this."""

    def __init__(self, original: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        self.original = original
        self._wrap = wrap
        setattr(self, _ORIGINAL_ATTR, original)
        self.__doc__ = getattr(original, "__doc__", None)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        bound = self.original.__get__(obj, owner)
        if obj is None or not callable(bound):
            return bound
        wrapped = self._wrap(lambda _self, *args, **kwargs: bound(*args, **kwargs))

        @functools.wraps(bound)
        def call(*args: Any, **kwargs: Any) -> Any:
            return wrapped(obj, *args, **kwargs)

        return call


class PatchSet:
    """Methods replaced on classes, restorable exactly (also attributes a class only inherited).

    ``wrap(original)`` builds the replacement: it receives the unpatched function and returns a
    function taking ``(self, *args, **kwargs)``. For a descriptor such as ``available_if`` it
    receives the bound method (as a function of ``(self, *args, **kwargs)``) at each lookup, so
    ``hasattr`` keeps answering as before. Patching a class already patched by this or another
    PatchSet wraps the original, never a wrapper.
    """

    def __init__(self) -> None:
        self._patches: list[tuple[type, str, Any, bool]] = []

    def __len__(self) -> int:
        return len(self._patches)

    @property
    def patched(self) -> list[tuple[type, str]]:
        return [(cls, name) for cls, name, _original, _owned in self._patches]

    def patch(
        self,
        cls: type,
        name: str,
        wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
    ) -> bool:
        """Replace ``cls.name`` (looked up statically along the MRO) with a wrapped version.

        Returns False (and changes nothing) when the class has no such attribute or it is neither a
        function nor a descriptor.
        """
        try:
            current = inspect.getattr_static(cls, name)
        except AttributeError:
            return False
        original = unwrap_patched(current)
        owned = name in cls.__dict__
        if isinstance(original, staticmethod | classmethod):
            return False
        if inspect.isfunction(original):
            wrapper = wrap(original)
            functools.update_wrapper(wrapper, original)
            setattr(wrapper, _ORIGINAL_ATTR, original)
            replacement: Any = wrapper
        elif hasattr(original, "__get__"):
            replacement = _PatchedDescriptor(original, wrap)
        else:
            return False
        self._patches.append((cls, name, cls.__dict__.get(name), owned))
        setattr(cls, name, replacement)
        return True

    def restore(self) -> None:
        """Put back every original attribute, newest patch first."""
        while self._patches:
            cls, name, previous, owned = self._patches.pop()
            if owned:
                setattr(cls, name, previous)
            else:
                with contextlib.suppress(AttributeError):
                    delattr(cls, name)


def unwrap_patched(attribute: Any) -> Any:
    """The unpatched function or descriptor behind a :class:`PatchSet` replacement (else itself)."""
    while hasattr(attribute, _ORIGINAL_ATTR):
        attribute = getattr(attribute, _ORIGINAL_ATTR)
    return attribute


@dataclass
class AutologRun:
    """The run an autologged call logs into.

    Attributes:
        run_id: the run's id.
        created: True when autolog started the run (and so ends it).
    """

    run_id: str
    created: bool


@contextlib.contextmanager
def autolog_run(
    *, run_name: str | None = None, tags: Mapping[str, str] | None = None, integration: str, silent: bool
) -> Iterator[AutologRun | None]:
    """The active run, or a new one that is ended when the block exits (FAILED if the block raises).

    Yields None when no run could be started (the failure is reported); the caller then trains
    without logging. An exception from the block body (the user's training call) propagates.
    """
    from cairn.tracking import fluent

    active = fluent.active_run()
    if active is not None:
        if tags:
            with safe_autolog(integration, "setting tags", silent=silent):
                fluent.set_tags(dict(tags))
        yield AutologRun(active.info.run_id, created=False)
        return
    run = None
    with safe_autolog(integration, "starting a run", silent=silent):
        run = fluent.start_run(run_name=run_name, tags=dict(tags or {}))
    if run is None:
        yield None
        return
    run_id = run.info.run_id
    status = "FINISHED"
    try:
        yield AutologRun(run_id, created=True)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        with safe_autolog(integration, "ending the run", silent=silent):
            fluent.end_run(status, _run_id=run_id)
