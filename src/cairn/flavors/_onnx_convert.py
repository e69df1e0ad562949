"""Conversion of torch modules and scikit-learn estimators to ONNX, and the parity check.

A conversion produces the ONNX ``ModelProto`` and, from the input example, the feeds the ONNX
model takes and the outputs the source model gave. :func:`check_parity` then runs onnxruntime on
those feeds and compares: every element must satisfy ``|onnx - source| <= atol + rtol * |source|``
(``numpy.allclose``'s rule); labels and other non-numeric outputs must be equal. The measured
differences go into the MLmodel metadata, so a reader sees how close the ONNX model is.

- torch: :func:`torch.onnx.export` with ``dynamo=True`` (the torch.export-based exporter), the
  first axis of every input dynamic (``torch.export.Dim.DYNAMIC``), the module in eval mode
  (its training flags are restored afterwards). Input names are ``input`` (one tensor),
  ``input_0, input_1, ...`` (a tuple) or the dict's keys (a dict example, passed as keyword
  arguments); output names are ``output``, ``output_0, ...`` or the keys of a dict output.
- scikit-learn: :func:`skl2onnx.to_onnx` with one float32 input ``X`` of shape ``[None, n_features]``
  (numeric inputs only); classifiers get ``zipmap=False``, so their probabilities are an array,
  not a list of dicts.

numpy is imported on use; torch, skl2onnx and onnx only by the conversion that needs them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cairn.errors import InvalidArgument

if TYPE_CHECKING:
    import numpy as np
    import onnx

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "Conversion",
    "OnnxParityError",
    "check_parity",
    "convert",
    "source_kind",
]

#: Default tolerances of the parity check: float32 arithmetic against the source model's.
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-5
#: skl2onnx output name -> the estimator method whose result it holds, in order of preference.
_SKLEARN_OUTPUTS: dict[str, tuple[str, ...]] = {
    "label": ("predict",),
    "probabilities": ("predict_proba", "decision_function"),
    "variable": ("predict", "transform"),
    "scores": ("decision_function", "transform"),
}


class OnnxParityError(InvalidArgument):
    """The converted ONNX model does not reproduce the source model on the input example.

    Attributes:
        report: the parity report (per output: max absolute and relative difference, mismatches).
    """

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Conversion:
    """A converted model and what the parity check needs.

    Attributes:
        proto: the ONNX model.
        source: ``"torch"`` or ``"sklearn"``.
        feeds: ONNX input name -> the input example as the ONNX model takes it.
        expected: ONNX output name -> the source model's output on the input example.
        example: the input example in a form cairn saves (numpy arrays; a dict of arrays for
            several inputs); a DataFrame example is kept as given.
        methods: for scikit-learn, estimator method -> ``{"output": name, "ndim": n}``: which
            ONNX output holds that method's result, and the rank the method returns.
        optional: outputs compared with a stand-in method (``decision_function`` for the scores
            skl2onnx names ``probabilities``); one shaped differently from the stand-in's result
            (a binary classifier's) is reported as skipped instead of failing the check.
    """

    proto: onnx.ModelProto
    source: str
    feeds: dict[str, Any]
    expected: dict[str, Any]
    example: Any
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    optional: set[str] = field(default_factory=set)


def _top_module(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def source_kind(obj: Any) -> str | None:
    """``"torch"`` for a ``torch.nn.Module``, ``"sklearn"`` for a scikit-learn estimator, else ``None``.

    Decided without importing torch or scikit-learn unless the object's class comes from them.
    """
    for klass in type(obj).__mro__:
        root = klass.__module__.split(".", 1)[0]
        if root == "torch" and klass.__name__ == "Module":
            return "torch"
        if root == "sklearn" and klass.__name__ == "BaseEstimator":
            return "sklearn"
    return None


def convert(source: Any, input_example: Any, *, opset: int | None = None) -> Conversion:
    """Convert a torch module or scikit-learn estimator to ONNX, running it on ``input_example``.

    Raises:
        InvalidArgument: no input example, an example of a kind the converter cannot take, or the
            exporter failed (the message carries its error).
    """
    kind = source_kind(source)
    if kind is None:
        raise InvalidArgument(
            f"cannot convert a {type(source).__name__} to ONNX: cairn converts torch.nn.Module and "
            "scikit-learn estimators; pass an onnx.ModelProto or a path to a .onnx file otherwise"
        )
    if input_example is None:
        raise InvalidArgument(
            f"converting a {kind} model to ONNX needs input_example: the exporter traces the model on it "
            "and the parity check compares both models on it"
        )
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 7):
        raise InvalidArgument(f"opset must be an ONNX opset version (an int >= 7), got {opset!r}")
    if kind == "torch":
        return _convert_torch(source, input_example, opset)
    return _convert_sklearn(source, input_example, opset)


# -- torch ---------------------------------------------------------------------------------------------


def _to_tensor(value: Any, label: str) -> Any:
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise InvalidArgument(
        f"the torch input example {label} must be a torch.Tensor or numpy array, got {type(value).__name__}"
    )


def _torch_inputs(example: Any) -> tuple[tuple[Any, ...], dict[str, Any], list[str]]:
    """(positional tensors, keyword tensors, ONNX input names) for a torch input example."""
    if isinstance(example, dict):
        if not example or not all(isinstance(k, str) and k.isidentifier() for k in example):
            raise InvalidArgument("a dict input example must map the forward() argument names to tensors")
        kwargs = {k: _to_tensor(v, repr(k)) for k, v in example.items()}
        return (), kwargs, list(kwargs)
    if isinstance(example, (tuple, list)):
        if not example:
            raise InvalidArgument("the torch input example is an empty tuple")
        args = tuple(_to_tensor(v, f"[{i}]") for i, v in enumerate(example))
        return args, {}, [f"input_{i}" for i in range(len(args))]
    return (_to_tensor(example, ""),), {}, ["input"]


def _flatten_torch_output(output: Any) -> tuple[list[Any], list[str]]:
    """The output tensors in the order the exporter emits them, and names for them."""
    import torch

    if isinstance(output, torch.Tensor):
        return [output], ["output"]
    if isinstance(output, dict) and all(isinstance(k, str) for k in output):
        values = list(output.values())
        if all(isinstance(v, torch.Tensor) for v in values):
            return values, list(output)
    leaves: list[Any] = []
    stack: list[Any] = [output]
    while stack:
        item = stack.pop(0)
        if isinstance(item, torch.Tensor):
            leaves.append(item)
        elif isinstance(item, (tuple, list)):
            stack[:0] = list(item)
        elif isinstance(item, dict):
            stack[:0] = list(item.values())
        else:
            raise InvalidArgument(
                f"the module returned a {type(item).__name__}; cairn exports modules whose output is a tensor, "
                "or a tuple, list or dict of tensors"
            )
    return leaves, [f"output_{i}" for i in range(len(leaves))]


def _convert_torch(module: Any, example: Any, opset: int | None) -> Conversion:
    import torch

    args, kwargs, input_names = _torch_inputs(example)
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            try:
                output = module(*args, **kwargs)
            except Exception as exc:
                raise InvalidArgument(
                    f"running {type(module).__name__} on the input example failed ({type(exc).__name__}: {exc})"
                ) from exc
        outputs, output_names = _flatten_torch_output(output)
        dims = {0: torch.export.Dim.DYNAMIC}
        dynamic: Any = {name: dims for name in kwargs} if kwargs else tuple(dims for _ in args)
        with warnings.catch_warnings():
            # torch's exporter warns about its own internals (pytree, deprecations); not the user's concern.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                program = torch.onnx.export(
                    module,
                    args,
                    kwargs=kwargs or None,
                    dynamo=True,
                    input_names=input_names,
                    output_names=output_names,
                    opset_version=opset,
                    dynamic_shapes=dynamic,
                    verbose=False,
                )
            except Exception as exc:
                raise InvalidArgument(
                    f"torch.onnx.export could not export {type(module).__name__} ({type(exc).__name__}: {exc}). "
                    "Export it yourself with torch.onnx.export and log the resulting onnx.ModelProto or .onnx file"
                ) from exc
        if program is None:  # only the TorchScript exporter returns None
            raise InvalidArgument("torch.onnx.export returned no ONNX program")
        proto = program.model_proto
    finally:
        for sub, training in modes.items():
            sub.training = training
    tensors = {**{name: t for name, t in zip(input_names, args, strict=False)}, **kwargs}
    feeds = {name: t.cpu().numpy() for name, t in tensors.items()}
    expected = {name: t.detach().cpu().numpy() for name, t in zip(output_names, outputs, strict=True)}
    saved: Any = feeds[input_names[0]] if len(feeds) == 1 and not kwargs else dict(feeds)
    return Conversion(proto=proto, source="torch", feeds=feeds, expected=expected, example=saved)


# -- scikit-learn -------------------------------------------------------------------------------------


def _numeric_matrix(example: Any) -> np.ndarray:
    """The example as a 2-D float32 array; refuses non-numeric data with a clear message."""
    import numpy as np

    if _top_module(example) == "pandas":
        import pandas as pd

        if isinstance(example, pd.Series):
            example = example.to_frame()
        if isinstance(example, pd.DataFrame):
            odd = [str(c) for c, dtype in example.dtypes.items() if dtype.kind not in "biuf"]
            if odd:
                raise InvalidArgument(
                    f"cairn converts scikit-learn models with numeric inputs only; columns {odd} are not numeric. "
                    "Convert the model with skl2onnx yourself and log the onnx.ModelProto"
                )
            example = example.to_numpy()
    try:
        array = np.asarray(example)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"the scikit-learn input example is not an array: {exc}") from exc
    if array.dtype.kind not in "biuf":
        raise InvalidArgument(
            f"cairn converts scikit-learn models with numeric inputs only; the input example has dtype {array.dtype}. "
            "Convert the model with skl2onnx yourself and log the onnx.ModelProto"
        )
    if array.ndim != 2 or array.shape[0] == 0:
        raise InvalidArgument(
            f"the scikit-learn input example must be a 2-D table with at least one row, got shape {array.shape}"
        )
    return array.astype(np.float32)


def _expected_sklearn(
    estimator: Any, example: Any, output_names: list[str]
) -> tuple[dict[str, Any], dict[str, Any], set[str]]:
    import numpy as np

    expected: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]] = {}
    optional: set[str] = set()
    for name in output_names:
        for rank, method in enumerate(_SKLEARN_OUTPUTS.get(name, ())):
            function = getattr(estimator, method, None)
            if function is None or method in methods:
                continue
            try:
                result = np.asarray(function(example))
            except Exception as exc:
                raise InvalidArgument(
                    f"{type(estimator).__name__}.{method} failed on the input example ({type(exc).__name__}: {exc})"
                ) from exc
            expected[name] = result
            methods[method] = {"output": name, "ndim": int(result.ndim)}
            if rank > 0:
                optional.add(name)
            break
    return expected, methods, optional


def _to_onnx(estimator: Any, n_features: int, opset: int | None) -> onnx.ModelProto:
    """skl2onnx's conversion, with ``zipmap=False`` for classifiers whose converter has that option."""
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier

    types = [("X", FloatTensorType([None, n_features]))]
    with warnings.catch_warnings():
        # skl2onnx reads attributes scikit-learn deprecates (SVC.probA_, ...); not the user's concern.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _to_onnx_with_options(estimator, types, opset, classifier=is_classifier(estimator))


def _to_onnx_with_options(estimator: Any, types: list[Any], opset: int | None, *, classifier: bool) -> onnx.ModelProto:
    from skl2onnx import to_onnx

    if classifier:
        try:
            return to_onnx(
                estimator, initial_types=types, options={id(estimator): {"zipmap": False}}, target_opset=opset
            )
        except NameError as exc:  # "Option 'zipmap' not in [...]": this classifier returns arrays anyway
            if "zipmap" not in str(exc):
                raise
    return to_onnx(estimator, initial_types=types, target_opset=opset)


def _convert_sklearn(estimator: Any, example: Any, opset: int | None) -> Conversion:
    matrix = _numeric_matrix(example)
    try:
        proto = _to_onnx(estimator, int(matrix.shape[1]), opset)
    except Exception as exc:
        raise InvalidArgument(
            f"skl2onnx could not convert {type(estimator).__name__} ({type(exc).__name__}: {exc}). "
            "Convert it yourself (skl2onnx.to_onnx with the options it needs) and log the onnx.ModelProto"
        ) from exc
    output_names = [o.name for o in proto.graph.output]
    expected, methods, optional = _expected_sklearn(estimator, example, output_names)
    if not expected:
        raise InvalidArgument(
            f"cannot check the ONNX conversion of {type(estimator).__name__}: none of its ONNX outputs "
            f"{output_names} matches a method of the estimator"
        )
    # A DataFrame or array is saved as given, so the signature records the dtypes the caller passes.
    saved = example if _top_module(example) in ("pandas", "numpy") else matrix
    return Conversion(
        proto=proto,
        source="sklearn",
        feeds={"X": matrix},
        expected=expected,
        example=saved,
        methods=methods,
        optional=optional,
    )


# -- parity -------------------------------------------------------------------------------------------


def _compare(name: str, got: Any, want: Any, rtol: float, atol: float) -> dict[str, Any]:
    """One output's differences: ``max_abs_diff``, ``max_rel_diff``, ``mismatches`` (elements out of tolerance)."""
    import numpy as np

    got = np.asarray(got)
    want = np.asarray(want)
    if got.size != want.size:
        return {"error": f"shape {tuple(got.shape)} vs the source model's {tuple(want.shape)}", "mismatches": -1}
    got = got.reshape(want.shape)
    numeric = got.dtype.kind in "biuf" and want.dtype.kind in "biuf"
    if not numeric:
        unequal = int(np.count_nonzero(got.astype(str) != want.astype(str)))
        return {"max_abs_diff": None, "max_rel_diff": None, "mismatches": unequal}
    a = got.astype(np.float64)
    b = want.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    one_nan = np.isnan(a) ^ np.isnan(b)
    valid = ~(both_nan | one_nan)
    diff = np.abs(a - b)
    bad = (diff > atol + rtol * np.abs(b)) & valid
    max_abs = float(diff[valid].max()) if valid.any() else 0.0
    nonzero = valid & (b != 0)
    max_rel = float((diff[nonzero] / np.abs(b[nonzero])).max()) if nonzero.any() else 0.0
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "mismatches": int(bad.sum() + one_nan.sum())}


def check_parity(session: Any, conversion: Conversion, *, rtol: float, atol: float) -> dict[str, Any]:
    """Run the ONNX model on the example's feeds and compare with the source model's outputs.

    Returns:
        The report for the MLmodel metadata: ``source``, ``rtol``, ``atol``, ``rows``, overall
        ``max_abs_diff`` / ``max_rel_diff`` and per output the same plus ``mismatches``, or
        ``skipped`` and the reason for an optional output (whose method then leaves
        ``conversion.methods``).

    Raises:
        OnnxParityError: an output differs beyond the tolerance (or has another shape, or
            non-numeric values differ); the message names the outputs and their differences.
    """
    for label, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"{label} must be a number >= 0, got {value!r}")
    names = [o.name for o in session.get_outputs()]
    try:
        results = session.run(names, conversion.feeds)
    except Exception as exc:
        raise InvalidArgument(
            f"onnxruntime could not run the converted model on the input example ({type(exc).__name__}: {exc})"
        ) from exc
    by_name = dict(zip(names, results, strict=True))
    outputs = {name: _compare(name, by_name[name], want, rtol, atol) for name, want in conversion.expected.items()}
    for name in conversion.optional & set(outputs):
        if "error" in outputs[name]:
            outputs[name] = {"skipped": outputs[name]["error"]}
            conversion.methods = {m: spec for m, spec in conversion.methods.items() if spec["output"] != name}
    abs_diffs = [o["max_abs_diff"] for o in outputs.values() if o.get("max_abs_diff") is not None]
    rel_diffs = [o["max_rel_diff"] for o in outputs.values() if o.get("max_rel_diff") is not None]
    first = next(iter(conversion.feeds.values()))
    report: dict[str, Any] = {
        "source": conversion.source,
        "rtol": float(rtol),
        "atol": float(atol),
        "rows": int(first.shape[0]) if getattr(first, "ndim", 0) else 1,
        "max_abs_diff": max(abs_diffs) if abs_diffs else 0.0,
        "max_rel_diff": max(rel_diffs) if rel_diffs else 0.0,
        "outputs": outputs,
    }
    failed = {name: o for name, o in outputs.items() if o.get("mismatches", 0) != 0}
    if failed:
        details = "; ".join(
            f"{name!r}: {o['error']}"
            if "error" in o
            else (
                f"{name!r}: {o['mismatches']} value(s) differ"
                + (
                    f" (max abs diff {o['max_abs_diff']:.3g}, max rel diff {o['max_rel_diff']:.3g})"
                    if o["max_abs_diff"] is not None
                    else ""
                )
            )
            for name, o in failed.items()
        )
        raise OnnxParityError(
            f"the ONNX conversion of the {conversion.source} model does not reproduce it on the input example "
            f"(tolerance |onnx - source| <= atol + rtol * |source| with rtol={rtol:g}, atol={atol:g}): {details}. "
            "Nothing was saved. Loosen rtol/atol if these differences are acceptable",
            report,
        )
    return report
