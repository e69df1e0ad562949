"""The one place where cairn decides whether a pickle may be loaded.

Unpickling runs whatever code the file names, so a model file from someone else is a program from
someone else. cairn never unpickles unless the caller opts in, either per call (``allow_pickle=True``)
or for the whole process (environment variable ``CAIRN_ALLOW_PICKLE=1``). Every pickle, cloudpickle
or ``torch.load(weights_only=False)`` in cairn goes through :func:`require_pickle_opt_in` first;
:func:`load_pickle` and :func:`load_cloudpickle` do that for you.

Loaders that keep MLflow's ``_load_pyfunc(data_path, model_config)`` signature cannot take an
``allow_pickle`` argument, so the model loader opens :func:`pickle_opt_in` around the call and
:func:`pickle_allowed` honours it.

Importing a module runs its code too, so a module named by a model file is imported only if it is
already imported, or the caller trusts its package (``trusted_modules=("mypkg",)`` on the load call,
a :func:`trusted_modules` block, or ``CAIRN_TRUSTED_MODULES=mypkg,otherpkg``), or pickle is allowed
(which trusts the whole file). :func:`import_named_module` is that rule; :func:`module_trusted` says
whether the caller trusts a module (loaders also use it to decide whether a function the file names
may be called).
"""

from __future__ import annotations

import contextvars
import importlib
import os
import pickle
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from cairn.errors import InvalidArgument, UnsafeModel

__all__ = [
    "ALLOW_PICKLE_ENV",
    "TRUSTED_MODULES_ENV",
    "how_to_trust",
    "import_named_module",
    "load_cloudpickle",
    "load_pickle",
    "module_trusted",
    "pickle_allowed",
    "pickle_opt_in",
    "require_pickle_opt_in",
    "trusted_modules",
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


# -- modules named by a model file ------------------------------------------------------------------------

TRUSTED_MODULES_ENV = "CAIRN_TRUSTED_MODULES"
_trusted_scope: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("cairn_trusted_modules", default=())


def _is_module_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and bool(name)
        and all(part.isidentifier() and not part.startswith("__") for part in name.split("."))
    )


def _checked_names(names: Iterable[str] | str | None) -> tuple[str, ...]:
    if names is None:
        return ()
    if isinstance(names, str):
        names = (names,)
    checked = tuple(names)
    for name in checked:
        if not _is_module_name(name):
            raise InvalidArgument(
                f"trusted_modules must name packages or modules such as 'mypkg' or 'mypkg.models', got {name!r}"
            )
    return checked


def _env_trusted() -> tuple[str, ...]:
    entries = [entry.strip() for entry in os.environ.get(TRUSTED_MODULES_ENV, "").split(",")]
    malformed = [entry for entry in entries if entry and not _is_module_name(entry)]
    if malformed:
        warnings.warn(
            f"{TRUSTED_MODULES_ENV} holds {', '.join(map(repr, malformed))}, which is not a dotted module name "
            "(such as 'mypkg' or 'mypkg.models'); it trusts nothing",
            UserWarning,
            stacklevel=3,
        )
    return tuple(entry for entry in entries if _is_module_name(entry))


@contextmanager
def trusted_modules(names: Iterable[str] | str | None) -> Iterator[None]:
    """Within the block (this thread or task only), the packages ``names`` (and their submodules) are trusted.

    A model file may then make cairn import them and call the model factories they define. Use it
    around loaders that take no ``trusted_modules`` argument, e.g.
    ``with cairn.safety.trusted_modules(("mypkg",)): cairn.pyfunc.load_model(uri)``. Names made trusted
    further out (or through ``CAIRN_TRUSTED_MODULES``) stay trusted.

    Raises:
        InvalidArgument: a name is not a dotted module name.
    """
    token = _trusted_scope.set(_trusted_scope.get() + _checked_names(names))
    try:
        yield
    finally:
        _trusted_scope.reset(token)


def module_trusted(module_name: str, allow_pickle: bool | None = None) -> bool:
    """Whether the caller trusts ``module_name``: it or a package containing it is trusted (see
    :func:`trusted_modules`, ``CAIRN_TRUSTED_MODULES``), or pickle is allowed (which trusts the whole file)."""
    if pickle_allowed(allow_pickle):
        return True
    trusted = _trusted_scope.get() + _env_trusted()
    return any(module_name == name or module_name.startswith(f"{name}.") for name in trusted)


def how_to_trust(module_name: str) -> str:
    """The sentence telling the caller how to trust ``module_name``, for refusal messages."""
    name = module_name
    return (
        f"If you trust it, pass trusted_modules=({name!r},) to the load call (for example "
        f"cairn.pytorch.load_model(uri, trusted_modules=({name!r},)); a package name trusts all its modules), "
        f"or load inside `with cairn.safety.trusted_modules(({name!r},)):` (for cairn.pyfunc.load_model), or "
        f"set {TRUSTED_MODULES_ENV}={name}; allow_pickle=True (or {ALLOW_PICKLE_ENV}=1) trusts the whole model file."
    )


def import_named_module(module_name: str, *, what: str, allow_pickle: bool | None = None) -> ModuleType:
    """The module ``module_name``, named by a model file, imported only if that is allowed.

    Allowed: the module is already imported (nothing runs), or :func:`module_trusted` says the caller
    trusts it. The module itself, not just its package, must be imported: importing a submodule runs it.

    Args:
        module_name: the dotted module name from the file.
        what: what names it, for the message (``"the model_factory 'pkg.mod:build'"``).
        allow_pickle: the caller's per-call opt-in (which trusts every module).

    Raises:
        InvalidArgument: ``module_name`` is not a plain dotted module name.
        UnsafeModel: the module is not imported yet and not trusted; the message names it and how to trust it.
        ImportError: the module cannot be imported.
    """
    if not _is_module_name(module_name):
        raise InvalidArgument(f"{what} names {module_name!r}, which is not a plain dotted module name")
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        return loaded
    if not module_trusted(module_name, allow_pickle):
        raise UnsafeModel(
            f"{what} needs the module {module_name!r}, which is not imported yet, and importing it runs its code. "
            f"cairn imports a module named by a model file only when the caller trusts it. {how_to_trust(module_name)}"
        )
    return importlib.import_module(module_name)
