"""The one place where cairn decides whether a pickle may be loaded.

Unpickling runs whatever code the file names, so a model file from someone else is a program from
someone else. cairn never unpickles unless the caller opts in, either per call (``allow_pickle=True``)
or for the whole process (environment variable ``CAIRN_ALLOW_PICKLE=1``). Every pickle, cloudpickle
or ``torch.load(weights_only=False)`` in cairn goes through :func:`require_pickle_opt_in` first;
:func:`load_pickle` and :func:`load_cloudpickle` do that for you.

Loaders that keep MLflow's ``_load_pyfunc(data_path, model_config)`` signature cannot take an
``allow_pickle`` argument, so the model loader opens :func:`pickle_opt_in` around the call and
:func:`pickle_allowed` honours it.
"""

from __future__ import annotations

import contextvars
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cairn.errors import InvalidArgument, UnsafeModel

__all__ = [
    "ALLOW_PICKLE_ENV",
    "load_cloudpickle",
    "load_pickle",
    "pickle_allowed",
    "pickle_opt_in",
    "require_pickle_opt_in",
]

ALLOW_PICKLE_ENV = "CAIRN_ALLOW_PICKLE"
_TRUE = ("1", "true", "yes", "on")
_scope: contextvars.ContextVar[bool] = contextvars.ContextVar("cairn_allow_pickle", default=False)


def _env_allows() -> bool:
    return os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in _TRUE


def pickle_allowed(allow_pickle: bool | None = None) -> bool:
    """Whether unpickling is allowed: ``allow_pickle is True``, ``CAIRN_ALLOW_PICKLE=1`` (also
    ``true``/``yes``/``on``), or a :func:`pickle_opt_in` block opened with ``True`` around this call."""
    return allow_pickle is True or _scope.get() or _env_allows()


@contextmanager
def pickle_opt_in(allow_pickle: bool | None) -> Iterator[None]:
    """Within the block (this thread or task only), :func:`pickle_allowed` is True if ``allow_pickle`` is.

    The model loader wraps a flavor's ``_load_pyfunc``/``load_model`` call in this, so a caller's
    ``allow_pickle=True`` reaches loaders whose signature cannot carry it. ``False``/``None`` never
    withdraw an opt-in made further out or through the environment.
    """
    token = _scope.set(_scope.get() or allow_pickle is True)
    try:
        yield
    finally:
        _scope.reset(token)


def require_pickle_opt_in(what: str, allow_pickle: bool | None = None) -> None:
    """Return if unpickling ``what`` is allowed, else raise :class:`~cairn.errors.UnsafeModel`.

    Args:
        what: what would be unpickled, for the message (``"the scikit-learn model model.pkl"``).
        allow_pickle: the caller's per-call opt-in.

    Raises:
        UnsafeModel: no opt-in; the message names ``what`` and both ways to opt in.
    """
    if pickle_allowed(allow_pickle):
        return
    raise UnsafeModel(
        f"Loading {what} requires unpickling it, and unpickling can run arbitrary code hidden in the file. "
        f"cairn does not unpickle unless you opt in. If you trust where this model comes from, pass "
        f"allow_pickle=True to the load call (for example cairn.pyfunc.load_model(uri, allow_pickle=True)) "
        f"or set the environment variable {ALLOW_PICKLE_ENV}=1."
    )


def _describe(path: Path, what: str | None) -> str:
    return what if what is not None else f"the pickle file {path}"


def load_pickle(path: str | os.PathLike[str], allow_pickle: bool | None = None, *, what: str | None = None) -> Any:
    """Unpickle the file at ``path`` with the standard library, after checking the opt-in.

    Raises:
        UnsafeModel: no opt-in (nothing is read from the file).
    """
    target = Path(path)
    require_pickle_opt_in(_describe(target, what), allow_pickle)
    with open(target, "rb") as stream:
        return pickle.load(stream)  # the opt-in was checked above


_OPENERS = {"gzip": ("gzip", "open"), "lzma": ("lzma", "open"), "bzip2": ("bz2", "open")}


def load_cloudpickle(
    path: str | os.PathLike[str],
    allow_pickle: bool | None = None,
    *,
    what: str | None = None,
    compression: str | None = None,
) -> Any:
    """Unpickle a cloudpickle file at ``path`` after checking the opt-in.

    Args:
        path: the file.
        allow_pickle: the caller's per-call opt-in.
        what: description of the file for the error message.
        compression: ``None``, ``"gzip"``, ``"lzma"`` or ``"bzip2"`` (MLflow's
            ``python_model_compression`` values).

    Raises:
        UnsafeModel: no opt-in (nothing is read from the file).
        InvalidArgument: unknown compression, or cloudpickle is not installed.
    """
    target = Path(path)
    require_pickle_opt_in(_describe(target, what), allow_pickle)
    if compression is not None and compression not in _OPENERS:
        raise InvalidArgument(f"unknown pickle compression {compression!r}; expected one of {sorted(_OPENERS)}")
    try:
        import cloudpickle
    except ImportError:
        raise InvalidArgument(
            f"loading {_describe(target, what)} needs cloudpickle (pip install cloudpickle)"
        ) from None
    if compression is None:
        with open(target, "rb") as stream:
            return cloudpickle.load(stream)
    import importlib

    module_name, function = _OPENERS[compression]
    opener = getattr(importlib.import_module(module_name), function)
    with opener(target, "rb") as stream:
        return cloudpickle.load(stream)
