"""The flavor contract: what every ``cairn.flavors.<lib>`` module exposes, and its shared options, declared once.

A flavor module has ``FLAVOR_NAME``, ``save_model``, ``log_model``, ``load_model`` and MLflow's pyfunc hook
``_load_pyfunc(data_path, model_config=None)``; :class:`Flavor` states their shapes, so mypy checks a
module against it (``flavor: Flavor = cairn.flavors.sklearn``) and ``isinstance(module, Flavor)`` checks
the names at run time.

The keyword options every flavor shares are declared here once, as ``TypedDict`` s:
:class:`CommonSaveOptions` (signature, input example, metadata, requirements, code paths) and
:class:`LogOptions` (where and under which name a model is logged). A flavor adds its own options in a
``TypedDict`` of its own, types ``log_model(model, name=None, **options: Unpack[...])`` with them (PEP 692:
callers, IDEs and mypy see every name and type) and hands the options to :func:`log_flavor_model`, the
one function that forwards them to the flavor's ``save_model``. Defaults live in one place: the
flavor's ``save_model``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, Protocol, TypedDict, Unpack, runtime_checkable

from cairn.models.model import Model, ModelInfo
from cairn.models.schema import ModelSignature
from cairn.tracking.client import Client  # at run time: LogOptions' types are read (typing.get_type_hints)

__all__ = [
    "AlsoOnnxOptions",
    "CommonLogOptions",
    "CommonSaveOptions",
    "CommonSaveRecordOptions",
    "Flavor",
    "LogOptions",
    "OnnxParityOptions",
    "PyfuncLoader",
    "SaveRecordOptions",
    "log_flavor_model",
    "refuse_unknown_options",
]


class CommonSaveOptions(TypedDict, total=False):
    """Options every flavor's ``save_model`` and ``log_model`` take (each defaults to ``None``).

    Attributes:
        signature: the model signature; ``None`` infers it from ``input_example``, ``False`` records none.
        input_example: example input saved with the model (``(data, params)`` also records params).
        metadata: free-form metadata for the MLmodel file.
        pip_requirements: the packages the model needs, replacing the flavor's defaults.
        extra_pip_requirements: packages added to the flavor's defaults.
        code_paths: files or directories saved under ``code/``.
    """

    signature: ModelSignature | Literal[False] | None
    input_example: Any
    metadata: dict[str, Any] | None
    pip_requirements: Sequence[str] | None
    extra_pip_requirements: Sequence[str] | None
    code_paths: Sequence[str | os.PathLike[str]] | None


class SaveRecordOptions(TypedDict, total=False):
    """What ``save_model`` records about the run a model is logged to (set by ``log_model``)."""

    run_id: str | None
    artifact_path: str | None


class LogOptions(TypedDict, total=False):
    """Options only ``log_model`` takes.

    Attributes:
        artifact_path: MLflow 2's name for ``log_model``'s ``name``.
        registered_model_name: also register the model under this name (version 1, 2, ...).
        run_id: log into this run instead of the active one (a run is started if none is active).
        client: log into (and register in) this client's store instead of the fluent API's; needs
            ``run_id`` (as dvclive takes ``live=``: how integrations holding a client log their models).
    """

    artifact_path: str | None
    registered_model_name: str | None
    run_id: str | None
    client: Client | None


class CommonSaveRecordOptions(CommonSaveOptions, SaveRecordOptions, total=False):
    """Every flavor's ``save_model`` options: the common save options and what ``log_model`` records."""


class CommonLogOptions(CommonSaveOptions, LogOptions, total=False):
    """Every flavor's ``log_model`` options: the common save options and the log options."""


class OnnxParityOptions(TypedDict, total=False):
    """Tolerances of the parity check of an ONNX conversion (the source model and onnxruntime on the example).

    Attributes:
        onnx_rtol: relative tolerance (default 1e-3).
        onnx_atol: absolute tolerance (default 1e-5).
    """

    onnx_rtol: float
    onnx_atol: float


class AlsoOnnxOptions(OnnxParityOptions, total=False):
    """``also_onnx=True`` also converts the model to ONNX into the same directory (torch, scikit-learn)."""

    also_onnx: bool


@runtime_checkable
class Flavor(Protocol):
    """A flavor module (``cairn.flavors.sklearn``, ...), as mypy and ``isinstance`` see it.

    The positional arguments are the flavor's own: the model and the path (or name) for every framework
    flavor, MLflow's ``(path, python_model)`` order for custom Python models. The keyword options are
    the shared ones; a flavor accepts more (with defaults). Each module also has MLflow's pyfunc hook
    ``_load_pyfunc`` (see :class:`PyfuncLoader`).
    """

    FLAVOR_NAME: str

    def save_model(self, model: Any, path: Any, /, **options: Unpack[CommonSaveRecordOptions]) -> Model: ...

    def log_model(self, model: Any, name: Any = ..., /, **options: Unpack[CommonLogOptions]) -> ModelInfo: ...

    def load_model(self, model_uri: str, /, *, dst_path: str | os.PathLike[str] | None = ...) -> Any: ...


class PyfuncLoader(Protocol):
    """MLflow's pyfunc hook, a flavor module's ``_load_pyfunc``: the model behind ``predict(data, params=None)``.

    Not a :class:`Flavor` member because mypy does not see a module's underscore names through a
    protocol; ``hook: PyfuncLoader = flavor_module._load_pyfunc`` checks it.
    """

    def __call__(self, data_path: str, model_config: dict[str, Any] | None = ..., /) -> Any: ...


def refuse_unknown_options(function: str, options: Mapping[str, object], accepted: Collection[str]) -> None:
    """Raise what Python raises for an unknown keyword, for a function typed ``**options: Unpack[...]``.

    Raises:
        TypeError: an option not in ``accepted`` (``TypedDict.__optional_keys__``); the message names it.
    """
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")


def log_flavor_model(
    save: Callable[..., Model], name: str | None, options: Mapping[str, object], *, accepted: Collection[str]
) -> ModelInfo:
    """Log a model with a flavor's ``save``: the one place a flavor's ``log_model`` options are forwarded.

    Args:
        save: the flavor's ``save_model`` with the model bound (``functools.partial(save_model, model)``),
            called as ``save(path, run_id=..., artifact_path=..., **save_options)``.
        name: the model's artifact path in the run; ``None`` takes ``options["artifact_path"]``, else ``"model"``.
        options: ``log_model``'s keyword options: :class:`LogOptions` and the options of ``save``.
        accepted: the names ``log_model`` declares (its options ``TypedDict``'s ``__optional_keys__``).

    Returns:
        The :class:`~cairn.models.ModelInfo` (``model_uri`` is ``runs:/<run_id>/<name>``).

    Raises:
        TypeError: an option ``log_model`` does not declare (raised before a run is started or touched).
        InvalidArgument: ``name`` and ``artifact_path`` disagree.
    """
    from cairn.models import packaging

    refuse_unknown_options("log_model", options, accepted)
    save_options: dict[str, Any] = dict(options)
    target = packaging.model_artifact_name(name, save_options.pop("artifact_path", None))
    registered_model_name = save_options.pop("registered_model_name", None)
    run_id = save_options.pop("run_id", None)
    client = save_options.pop("client", None)
    return packaging.log_model(
        save, target, registered_model_name=registered_model_name, run_id=run_id, client=client, **save_options
    )
