"""Which Python modules a model file may name as its loader: an allow-list, never an open import.

An MLmodel file's ``python_function.loader_module`` is text from the model's author. Importing it
blindly would let a model file import (and so run) any module on the machine. cairn maps the names
it knows to its own flavor modules and refuses the rest. MLflow's names (``mlflow.sklearn``,
``mlflow.pytorch``, ``mlflow.pyfunc.model``) map to cairn modules that read MLflow's on-disk layout,
so cairn loads MLflow's models without importing mlflow.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING

from cairn.errors import UnsafeModel

__all__ = [
    "ALLOWED_LOADER_MODULES",
    "NATIVE_FLAVOR_MODULES",
    "PYFUNC_MODULE",
    "allowed_loader_modules",
    "import_loader_module",
    "native_flavor_module",
    "resolve_loader_module",
]

PYFUNC_MODULE = "cairn.flavors.pyfunc"

#: loader_module as written in an MLmodel file -> the cairn module that loads it.
ALLOWED_LOADER_MODULES: dict[str, str] = {
    "cairn.flavors.sklearn": "cairn.flavors.sklearn",
    "cairn.flavors.pytorch": "cairn.flavors.pytorch",
    "cairn.flavors.lightning": "cairn.flavors.lightning",
    "cairn.flavors.transformers": "cairn.flavors.transformers",
    "cairn.flavors.onnx": "cairn.flavors.onnx",
    PYFUNC_MODULE: PYFUNC_MODULE,
    "mlflow.sklearn": "cairn.flavors.sklearn",
    "mlflow.pytorch": "cairn.flavors.pytorch",
    "mlflow.onnx": "cairn.flavors.onnx",
    "mlflow.pyfunc.model": PYFUNC_MODULE,
}

#: flavor name in an MLmodel file -> the cairn module whose ``load_model`` returns the native object.
NATIVE_FLAVOR_MODULES: dict[str, str] = {
    "sklearn": "cairn.flavors.sklearn",
    "pytorch": "cairn.flavors.pytorch",
    "lightning": "cairn.flavors.lightning",
    "transformers": "cairn.flavors.transformers",
    "onnx": "cairn.flavors.onnx",
    "python_function": PYFUNC_MODULE,
}

# Added only by tests (see _allowed_for_tests); never read from a file or the environment.
_extra_loader_modules: dict[str, str] = {}


def allowed_loader_modules() -> list[str]:
    """The loader_module names cairn accepts, sorted."""
    return sorted({**ALLOWED_LOADER_MODULES, **_extra_loader_modules})


def resolve_loader_module(loader_module: object) -> str:
    """The cairn module that implements ``loader_module``.

    Raises:
        UnsafeModel: ``loader_module`` is not on the allow-list; the message names it and the allowed ones.
    """
    if isinstance(loader_module, str):
        target = _extra_loader_modules.get(loader_module) or ALLOWED_LOADER_MODULES.get(loader_module)
        if target is not None:
            return target
    raise UnsafeModel(
        f"refusing to load a model whose MLmodel names loader_module {loader_module!r}: cairn imports only "
        f"the loader modules it knows, and that one is not among them. Allowed: {', '.join(allowed_loader_modules())}"
    )


def import_loader_module(loader_module: object) -> ModuleType:
    """Import the cairn module that implements ``loader_module`` (see :func:`resolve_loader_module`)."""
    return importlib.import_module(resolve_loader_module(loader_module))


def native_flavor_module(flavor: str) -> str | None:
    """The cairn module that loads ``flavor`` natively, or ``None`` if cairn has none."""
    return NATIVE_FLAVOR_MODULES.get(flavor)


@contextmanager
def _allowed_for_tests(loader_module: str, target: str | None = None) -> Iterator[None]:
    """Allow one more loader module inside the block (tests that define a fake flavor use this)."""
    previous = _extra_loader_modules.get(loader_module)
    _extra_loader_modules[loader_module] = target or loader_module
    try:
        yield
    finally:
        if previous is None:
            _extra_loader_modules.pop(loader_module, None)
        else:
            _extra_loader_modules[loader_module] = previous


if TYPE_CHECKING:  # mypy checks every native flavor module against the flavor contract
    from cairn.flavors import lightning, onnx, pyfunc, pytorch, sklearn, transformers
    from cairn.models.flavor import Flavor, PyfuncLoader

    _sklearn: Flavor = sklearn
    _pytorch: Flavor = pytorch
    _lightning: Flavor = lightning
    _transformers: Flavor = transformers
    _onnx: Flavor = onnx
    _pyfunc: Flavor = pyfunc
    _pyfunc_loaders: tuple[PyfuncLoader, ...] = (
        sklearn._load_pyfunc,
        pytorch._load_pyfunc,
        lightning._load_pyfunc,
        transformers._load_pyfunc,
        onnx._load_pyfunc,
        pyfunc._load_pyfunc,
    )
