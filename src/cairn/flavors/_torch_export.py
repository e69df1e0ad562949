"""The module's architecture as a ``torch.export`` program, saved without its weights, loaded only if checked safe.

What ``torch.export.load`` does with a ``.pt2`` file in torch 2.13 (read from its source,
``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``; its docstring also
warns "uses pickle under the hood ... Never load data from an untrusted source"):

- weights and constants whose payload config says ``use_pickle: true`` are read with
  ``torch.load(weights_only=False)``; ``opaque_obj_*`` constants with ``pickle.loads``; ``custom_obj_*``
  (TorchBind) constants with ``torch._C._pickle_load_obj``;
- the sample inputs are read with ``torch.load(weights_only=True)`` and, if that fails, again with
  ``weights_only=False``;
- symbolic shape expressions (``expr_str``) go through ``sympy.sympify``, which evaluates Python;
- ``guards_code`` strings from the file are compiled with ``exec`` when ``.module()`` is called;
- a node's ``target`` string is resolved by attribute lookup on ``torch``, ``math`` or ``operator``
  (``torch.<anything>``, so not only operators), and ``data/aotinductor/`` payloads are ``dlopen``-ed.

So a crafted ``.pt2`` runs code. :func:`check_archive` reads the archive without running anything
and refuses all of the above unless the caller opted in to pickle: only raw tensor payloads,
JSON configs, an empty (or, for MLflow's files, ``weights_only``-loadable) sample input, operator
targets under ``torch.ops``, ``operator``/``math`` functions from a fixed list, symbolic expressions
made of numbers, shape symbols (``s0`` or ``Symbol('s0', positive=True)``) and known sympy
functions, and no guards code.

Which entries torch reads is decided positively too. Python's ``zipfile`` (the check) and torch's zip
reader disagree on ambiguous archives: torch reads the first of duplicate names, looks names up
ignoring case and takes its root folder from the first entry; ``zipfile`` reads the last duplicate.
So the check refuses duplicates, names equal ignoring case, entries outside the one root folder and
any name not on its allow-list; and torch is never given the original file: it loads
:func:`checked_copy`, a new archive written from the very bytes the check read.

cairn saves the program with its weights replaced by one-element stand-ins (the weights live in
``model.safetensors``) and without sample inputs, so the file is small and its load touches no
pickle at all.
"""

from __future__ import annotations

import io
import json
import math
import operator
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from cairn import safety
from cairn.errors import InvalidArgument, UnsafeModel

__all__ = ["check_archive", "checked_copy", "export_module", "load_program", "program_shapes", "save_program"]

_ROOT_FILES = frozenset({"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"})
_ALLOWED_PATHS = [
    re.compile(r"models/[A-Za-z0-9_.-]+\.json"),
    re.compile(r"data/weights/weight_\d+"),
    re.compile(r"data/weights/[A-Za-z0-9_.-]+_weights_config\.json"),
    re.compile(r"data/constants/tensor_\d+"),
    re.compile(r"data/constants/[A-Za-z0-9_.-]+_constants_config\.json"),
    re.compile(r"data/sample_inputs/[A-Za-z0-9_.-]+\.pt"),
    re.compile(r"extra/[A-Za-z0-9_./-]+"),
]
_OPERATOR_FUNCTIONS = frozenset(
    {
        "abs", "add", "and_", "contains", "eq", "floordiv", "ge", "getitem", "gt", "index", "inv", "invert",
        "le", "lshift", "lt", "mod", "mul", "ne", "neg", "not_", "or_", "pos", "pow", "rshift", "sub",
        "truediv", "truth", "xor", "matmul",
    }
)  # fmt: skip
_MATH_FUNCTIONS = frozenset(name for name in dir(math) if not name.startswith("_") and callable(getattr(math, name)))
_SYMPY_NAMES = frozenset(
    {
        "Abs", "Add", "And", "CeilDiv", "CeilToInt", "CleanDiv", "Eq", "FloatPow", "FloatTrueDiv", "FloorDiv",
        "FloorToInt", "Ge", "Gt", "Identity", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "LShift",
        "Le", "Lt", "Max", "Min", "Mod", "ModularIndexing", "Mul", "Ne", "Not", "Or", "Pow", "PowByNatural",
        "PythonMod", "RShift", "RoundDecimal", "RoundToInt", "ToFloat", "TruncToFloat", "TruncToInt", "Where",
        "ceiling", "floor", "sqrt", "oo", "zoo", "nan", "True", "False", "pi", "E", "Integer", "Rational", "Float",
        "Symbol",
    }
)  # fmt: skip
_EXPR_TOKEN = re.compile(
    r"\s+|\d+\.\d*(?:e[+-]?\d+)?|\d+(?:e[+-]?\d+)?|[A-Za-z][A-Za-z0-9_]*|'[A-Za-z0-9_]+'"
    r"|\*\*|//|[<>=!]=|[-+*/%(),<>&|~^=]"
)
#: sympy assumption keywords, as in ``Symbol('s0', positive=True, integer=True)``.
_ASSUMPTIONS = frozenset(
    {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "nonzero", "zero", "even"}
)
_SPOOL_BYTES = 64 * 1024 * 1024  # a checked copy of an archive stays in memory up to this size
_COPY_CHUNK = 1024 * 1024
_SHAPE_SYMBOL = re.compile(r"[a-z]+\d+")
_TORCH_SYMBOLIC = re.compile(r"torch\.(?:_?sym_[a-z_]+)")


# -- saving -------------------------------------------------------------------------------------------------


_ALIGNMENT = 64  # bytes, torch's CPU allocator


def example_arguments(example: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` for the module from an input example: one tensor/array/DataFrame, or a dict of them."""
    if isinstance(example, dict):
        return (), {str(k): as_tensor(v) for k, v in example.items()}
    return (as_tensor(example),), {}


def as_tensor(value: Any) -> torch.Tensor:
    """A tensor from a tensor, numpy array, pandas DataFrame/Series or nested list."""
    if isinstance(value, torch.Tensor):
        return value
    module = type(value).__module__.split(".")[0]
    if module == "pandas":
        value = value.to_numpy()
    if type(value).__module__ == "numpy" and getattr(value, "dtype", None) is not None:
        import numpy as np

        array = np.asarray(value)
        if array.dtype.kind in "biufc":
            # Shared only when C-contiguous and aligned as torch's own memory; else copied into that layout
            # (a read-only pandas view is column-major): CPU kernels sum in another order on other layouts,
            # and the same rows would predict differently in the last bits.
            shareable = array.flags.writeable and array.flags.c_contiguous and array.ctypes.data % _ALIGNMENT == 0
            return torch.from_numpy(array) if shareable else torch.tensor(array).contiguous()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidArgument(f"cannot make a tensor of a {type(value).__name__}: {exc}") from None


def _dynamic_shapes(args: tuple[Any, ...], kwargs: dict[str, Any], static: set[tuple[int, int]]) -> Any:
    """``Dim.AUTO`` for every dimension of every input but those in ``static`` ((input, axis): left out, static)."""

    def spec(index: int, value: torch.Tensor) -> dict[int, Any] | None:
        if value.dim() == 0:
            return None
        return {axis: torch.export.Dim.AUTO for axis in range(value.dim()) if (index, axis) not in static}

    if kwargs:
        return {name: spec(i, value) for i, (name, value) in enumerate(kwargs.items())}
    return tuple(spec(i, value) for i, value in enumerate(args))


def _static_dims(program: torch.export.ExportedProgram) -> set[tuple[int, int]]:
    """(input, axis) of every user-input dimension the program made static."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    static: set[tuple[int, int]] = set()
    for index, name in enumerate(program.graph_signature.user_inputs):
        value = placeholders[name].meta.get("val")
        for axis, size in enumerate(getattr(value, "shape", ())):
            if _concrete(size):
                static.add((index, axis))
    return static


_GUARDED_SIZE = re.compile(r"L\['([A-Za-z_][A-Za-z0-9_]*)'\]\.size\(\)\[(\d+)\]")


def _guarded_dims(program: torch.export.ExportedProgram) -> set[tuple[int, int]]:
    """(input, axis) of the user-input dimensions that the program's guards mention."""
    names = {name: index for index, name in enumerate(program.graph_signature.user_inputs)}
    found: set[tuple[int, int]] = set()
    for guard in _guards(program):
        for name, axis in _GUARDED_SIZE.findall(guard):
            if name in names:
                found.add((names[name], int(axis)))
    return found


def _concrete(size: Any) -> bool:
    """Whether a dimension of a traced shape is a number (a ``SymInt`` torch specialized counts as one)."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    return bool(is_concrete_int(size))


def _guards(program: torch.export.ExportedProgram) -> list[str]:
    return list(getattr(program, "_guards_code", None) or [])


def export_module(model: nn.Module, example: Any) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` as written (eval mode, no instrumentation hooks), dimensions dynamic.

    Every dimension of every input is first ``Dim.AUTO``: torch keeps it dynamic unless the model fixes
    it (a ``Linear``'s feature size, a ``flatten`` into one). A dimension torch made static that way
    leaves a *guard* in the program (Python code torch would ``exec`` at load, which the load check
    refuses), so the module is then exported again with exactly those dimensions declared static. torch
    specializes dimensions of size 0 or 1 in the example; when the example has one, size-oblivious
    shapes are tried first (so a one-row example still gives a dynamic batch), then plain ones.
    Global module hooks and hooks cairn put on the model (autolog's) are suspended during the trace
    (:func:`cairn.flavors._torch_utils.as_written`), so nothing of them leaks into the program.

    Raises:
        InvalidArgument: the example cannot be turned into tensors, torch cannot export the module, or the
            program keeps guards (shape conditions the model tests itself); the message carries torch's reason.
    """
    from cairn.flavors._torch_utils import as_written, eval_mode

    args, kwargs = example_arguments(example)
    tiny = any(size <= 1 for value in (*args, *kwargs.values()) for size in value.shape)

    def export(static: set[tuple[int, int]], oblivious: bool) -> torch.export.ExportedProgram:
        dynamic = _dynamic_shapes(args, kwargs, static)
        with as_written(model), eval_mode(model), warnings.catch_warnings(), _size_oblivious(oblivious):
            warnings.simplefilter("ignore")
            return torch.export.export(model, args, kwargs=kwargs or None, dynamic_shapes=dynamic)

    inputs = list(kwargs.values()) if kwargs else list(args)
    all_dims = {(i, axis) for i, value in enumerate(inputs) for axis in range(value.dim())}
    failure: Exception | None = None
    for oblivious in [True, False] if tiny else [False]:
        static: set[tuple[int, int]] = set()
        try:
            program = export(static, oblivious)
            # Each round declares more dimensions static: those torch specialized, those its guards test,
            # all but the batch, all of them.
            for more in (
                _static_dims,
                _guarded_dims,
                lambda _p: {d for d in all_dims if d[1] > 0},
                lambda _p: all_dims,
            ):
                if not _guards(program):
                    return program
                wider = static | more(program)
                if wider != static:
                    static = wider
                    program = export(static, oblivious)
        except Exception as exc:
            failure = exc
            continue
        if not _guards(program):
            return program
        failure = InvalidArgument(f"the program keeps guards {_guards(program)[:3]}, which its load would exec")
    assert failure is not None
    raise InvalidArgument(
        f"torch.export could not export {type(model).__name__}: {type(failure).__name__}: {failure}"
    ) from failure


def _size_oblivious(enabled: bool) -> Any:
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    try:
        from torch.fx.experimental import _config as fx_config
    except ImportError:  # an older torch: the one-row example gives a static batch
        return contextlib.nullcontext()
    if not hasattr(fx_config, "backed_size_oblivious"):
        return contextlib.nullcontext()
    return fx_config.patch(backed_size_oblivious=True)  # type: ignore[attr-defined]


def _shape(value: Any) -> list[int] | None:
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    return [int(d) if _concrete(d) else -1 for d in shape]


def _named_shapes(value: Any) -> dict[str | None, list[int] | None] | None:
    """The shapes of a (fake) input or output structure, named as the pyfunc names its arrays."""
    if isinstance(value, torch.Tensor):
        return {None: _shape(value)}
    if isinstance(value, dict):
        return {str(k): _shape(v) for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):
        return {f"output_{i}": _shape(v) for i, v in enumerate(value) if v is not None}
    return None


def program_shapes(program: torch.export.ExportedProgram) -> tuple[Any, Any]:
    """(inputs, outputs) of ``program`` as ``{name or None: shape}``, ``-1`` for each dynamic dimension.

    Inputs are named by keyword (``None`` for the one positional tensor); outputs as
    :class:`~cairn.flavors._torch_pyfunc.TorchPyfunc` names them (``output_<i>`` of a tuple, ``None``
    entries left out). ``None`` where the structure is not one of those.
    """
    from torch.utils import _pytree

    nodes = list(program.graph.nodes)
    placeholders = {node.name: node for node in nodes if node.op == "placeholder"}
    user_inputs = [placeholders[name].meta.get("val") for name in program.graph_signature.user_inputs]
    output_node = next(node for node in reversed(nodes) if node.op == "output")
    flat_outputs = [getattr(arg, "meta", {}).get("val") for arg in output_node.args[0]]
    user_outputs = flat_outputs[len(flat_outputs) - len(program.graph_signature.user_outputs) :]
    try:
        args, kwargs = _pytree.tree_unflatten(user_inputs, program.call_spec.in_spec)
        outputs = _pytree.tree_unflatten(user_outputs, program.call_spec.out_spec)
    except Exception:  # an unusual structure: the caller keeps the shapes inferred from the example
        return None, None
    inputs = _named_shapes(kwargs) if kwargs else (_named_shapes(args[0]) if len(args) == 1 else None)
    return inputs, _named_shapes(outputs)


def save_program(program: torch.export.ExportedProgram, path: Path, stored: set[str]) -> None:
    """Save ``program`` to ``path`` with the tensors named in ``stored`` replaced by one-element stand-ins.

    The stand-ins keep dtype and shape (a zero-stride expansion of a single element), so the file
    holds the graph and small constants only; :func:`load_program`'s caller puts the real weights back.
    The sample inputs are not saved (they would be read with ``torch.load``).
    """
    state_dict = program.state_dict
    constants = program.constants
    saved_state = dict(state_dict)
    saved_constants = dict(constants)
    saved_example = program._example_inputs
    try:
        for name, tensor in saved_state.items():
            if name in stored:
                state_dict[name] = _stand_in(tensor)
        for name, value in saved_constants.items():
            if name in stored and isinstance(value, torch.Tensor):
                constants[name] = _stand_in(value)
        program._example_inputs = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "No complete tensor found in the group" for the stand-ins
            torch.export.save(program, str(path))
    finally:
        state_dict.clear()
        state_dict.update(saved_state)
        constants.clear()
        constants.update(saved_constants)
        program._example_inputs = saved_example


def _stand_in(tensor: torch.Tensor) -> torch.Tensor:
    stub = torch.zeros((), dtype=tensor.dtype, device="cpu").expand(tensor.shape)
    return nn.Parameter(stub, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else stub


# -- checking ------------------------------------------------------------------------------------------------


def _refuse(path: Path, reason: str) -> UnsafeModel:
    return UnsafeModel(
        f"refusing to load the exported program {path.name}: {reason}. Loading it with torch.export.load "
        f"could run code from the file. If you trust this model, pass allow_pickle=True (or set "
        f"{safety.ALLOW_PICKLE_ENV}=1)."
    )


_ARCHIVE_ROOT = re.compile(r"[A-Za-z0-9_.-]+")


def _allowed_entry(rel: str) -> bool:
    return rel in _ROOT_FILES or any(pattern.fullmatch(rel) for pattern in _ALLOWED_PATHS)


def _archive_entries(archive: zipfile.ZipFile, path: Path) -> list[tuple[str, zipfile.ZipInfo]]:
    """(path below the archive's root folder, member) of every entry, refusing any ambiguity.

    torch finds a record by name in the zip's central directory ignoring case, takes the first
    entry's folder as the root, and reads the first of duplicate names, while Python's ``zipfile``
    reads the last. So every entry must sit in one root folder, no two names may be equal ignoring
    case, and every name must be on the allow-list: then each name means one entry to both readers.
    """
    entries: list[tuple[str, zipfile.ZipInfo]] = []
    root: str | None = None
    seen: dict[str, str] = {}
    for info in archive.infolist():
        top, _, rel = info.filename.partition("/")
        root = top if root is None else root
        if top != root or not _ARCHIVE_ROOT.fullmatch(top):
            raise _refuse(path, f"its entry {info.filename!r} is not in the archive's one root folder {root!r}")
        key = info.filename.casefold()
        if key in seen:
            other = seen[key]
            raise _refuse(
                path,
                f"it has two entries named {other!r} and {info.filename!r} (torch ignores case and reads the first "
                "of duplicates, so it could read another entry than the one checked)",
            )
        seen[key] = info.filename
        if not _allowed_entry(rel):
            raise _refuse(path, f"it contains {rel!r}, which is not a plain graph, tensor or config record")
        entries.append((rel, info))
    return entries


def _check_entry(path: Path, rel: str, content: bytes, *, allow_sample_inputs: bool) -> None:
    if rel == "archive_format" and content != b"pt2":  # else torch falls back to its older, pickling format
        raise _refuse(path, f"its archive_format is {content[:20]!r}, not b'pt2'")
    if rel.endswith(("_weights_config.json", "_constants_config.json")):
        _check_payload_config(path, rel, content)
    elif rel.startswith("models/"):
        _check_program_json(path, rel, content)
    elif rel.startswith("data/sample_inputs/") and not _accepted_sample_inputs(content, allow_sample_inputs):
        raise _refuse(path, f"{rel} holds sample inputs that would be unpickled")


def _accepted_sample_inputs(content: bytes, allow_sample_inputs: bool) -> bool:
    """Empty sample inputs always; others only from foreign files, and only if ``weights_only`` reads them."""
    return not content or (allow_sample_inputs and _weights_only_loadable(content))


def _has_content_rules(rel: str) -> bool:
    """Whether the entry's bytes are checked (configs, graphs, sample inputs); the others are raw data."""
    return rel.endswith(".json") or rel.startswith("data/sample_inputs/") or rel == "archive_format"


def _copy_checked(path: Path, target: zipfile.ZipFile | None, *, allow_sample_inputs: bool) -> None:
    """Check every entry of the archive at ``path``, copying each (the very bytes checked) into ``target``."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise _refuse(path, f"it is not a zip archive ({exc})") from None
    with archive:
        for rel, info in _archive_entries(archive, path):
            if _has_content_rules(rel):
                content = archive.read(info)
                _check_entry(path, rel, content, allow_sample_inputs=allow_sample_inputs)
                if target is not None:
                    target.writestr(info.filename, content)
            elif target is not None:
                copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                with archive.open(info) as source, target.open(copy, "w", force_zip64=True) as sink:
                    shutil.copyfileobj(source, sink, _COPY_CHUNK)


def check_archive(path: Path, *, allow_sample_inputs: bool = False) -> None:
    """Refuse a ``.pt2`` file whose loading could run code (see the module docstring); read-only.

    Args:
        path: the archive.
        allow_sample_inputs: accept non-empty sample inputs if torch's restricted ``weights_only``
            unpickler reads them (MLflow's files have them; cairn's never do). Without it they must be empty.

    Raises:
        UnsafeModel: the archive contains anything but plain data and a checked graph, or entries whose
            names are ambiguous (duplicates, names equal ignoring case, several root folders); the
            message says what.
    """
    _copy_checked(path, None, allow_sample_inputs=allow_sample_inputs)


def checked_copy(path: Path, *, allow_sample_inputs: bool = False) -> IO[bytes]:
    """A new archive holding exactly the entries :func:`check_archive` accepted, as a file object at offset 0.

    torch then reads the bytes that were checked and nothing else, whatever its zip reader would have
    made of the original file. Small archives stay in memory, large ones spill to a temporary file.

    Raises:
        UnsafeModel: as :func:`check_archive`.
    """
    copy = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 - returned to the caller, who closes it
    try:
        with zipfile.ZipFile(copy, "w", compression=zipfile.ZIP_STORED) as target:
            _copy_checked(path, target, allow_sample_inputs=allow_sample_inputs)
    except BaseException:
        copy.close()
        raise
    copy.seek(0)
    return copy


def _load_json(path: Path, rel: str, content: bytes) -> Any:
    try:
        return json.loads(content)
    except (UnicodeDecodeError, ValueError):
        raise _refuse(path, f"{rel} is not valid JSON") from None


def _check_payload_config(path: Path, rel: str, content: bytes) -> None:
    config = _load_json(path, rel, content)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(path, f"{rel} is not a payload config")
    for name, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            raise _refuse(path, f"{rel} marks {name!r} as pickled")
        path_name = entry.get("path_name")
        if not isinstance(path_name, str) or not re.fullmatch(r"(?:weight|tensor)_\d+", path_name):
            raise _refuse(path, f"{rel} stores {name!r} as {path_name!r}, which is not a raw tensor record")


def _weights_only_loadable(content: bytes) -> bool:
    try:
        torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


def _check_program_json(path: Path, rel: str, content: bytes) -> None:
    program = _load_json(path, rel, content)
    stack: list[Any] = [program]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        guards = node.get("guards_code")
        if guards:
            raise _refuse(path, f"{rel} carries guards code, which torch would exec")
        expr = node.get("expr_str")
        if expr is not None and not _safe_expression(expr):
            raise _refuse(path, f"{rel} has a symbolic expression that is not plain arithmetic: {expr!r:.80}")
        target = node.get("target")
        if isinstance(target, str) and not _safe_target(target):
            raise _refuse(path, f"{rel} calls {target!r:.80}, which is not a torch operator")
        stack.extend(node.values())


def _safe_expression(text: object) -> bool:
    if not isinstance(text, str) or len(text) > 10_000:
        return False
    position = 0
    while position < len(text):
        match = _EXPR_TOKEN.match(text, position)
        if match is None:
            return False
        token = match.group()
        if token[0] == "'" and not _SHAPE_SYMBOL.fullmatch(token[1:-1]):
            return False
        if token[0].isalpha() and token not in _SYMPY_NAMES | _ASSUMPTIONS and not _SHAPE_SYMBOL.fullmatch(token):
            return False
        position = match.end()
    return True


def _safe_target(target: str) -> bool:
    parts = target.split(".")
    if any(not part.isidentifier() or part.startswith("__") for part in parts):
        return False
    if target.startswith("torch.ops.") and len(parts) >= 4:
        return True
    if _TORCH_SYMBOLIC.fullmatch(target):
        return True
    if parts[0] == "_operator" and len(parts) == 2:
        return parts[1] in _OPERATOR_FUNCTIONS and callable(getattr(operator, parts[1], None))
    if parts[0] == "math" and len(parts) == 2:
        return parts[1] in _MATH_FUNCTIONS
    return False


# -- loading ----------------------------------------------------------------------------------------------


def load_program(path: Path, *, allow_pickle: bool | None, foreign: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.load`` of the checked copy of ``path`` (:func:`checked_copy`); of ``path`` itself with the opt-in.

    Args:
        path: the ``.pt2`` file.
        allow_pickle: the caller's opt-in; with it (or ``CAIRN_ALLOW_PICKLE=1``) the file is trusted as is.
        foreign: the file was written by another tool (MLflow), so non-empty sample inputs are
            accepted if the ``weights_only`` unpickler reads them.

    Raises:
        UnsafeModel: the archive fails the check and pickle is not allowed.
        InvalidArgument: torch cannot read the program.
    """
    if safety.pickle_allowed(allow_pickle):
        return _torch_load(str(path), path)
    with checked_copy(path, allow_sample_inputs=foreign) as copy:
        return _torch_load(copy, path)


def _torch_load(source: str | IO[bytes], path: Path) -> torch.export.ExportedProgram:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(source)
    except Exception as exc:
        raise InvalidArgument(f"torch could not load the exported program {path}: {type(exc).__name__}: {exc}") from exc
