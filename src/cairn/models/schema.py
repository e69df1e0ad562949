"""Signature types: column, tensor and param specs, serialized exactly as MLflow writes them.

An MLmodel file stores each part of a signature as a JSON *string*, for example::

    inputs: '[{"type": "double", "name": "x", "required": true}]'
    inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]'
    params: '[{"name": "k", "default": 3, "shape": null, "type": "long"}]'

The key order inside each object matches MLflow's ``to_dict`` so that the strings are identical
byte for byte. Nothing here imports numpy: tensor dtypes are kept as numpy dtype *names*
(``"float32"``, ``"str"``, ``"object"``), which is also what MLflow writes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import InvalidArgument, SchemaMismatch

#: MLflow ``DataType`` names usable as a column type, with the numpy dtype each one maps to.
COLUMN_TYPES: dict[str, str] = {
    "boolean": "bool",
    "integer": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "string": "str",
    "binary": "bytes",
    "datetime": "datetime64[ns]",
}
#: MLflow's structured column types. cairn keeps their JSON dict verbatim (see :class:`ColSpec`).
COMPLEX_TYPES = ("array", "object", "map", "any", "sparkml_vector")

_TENSOR_DTYPE = re.compile(
    r"^(bool|object|str|bytes|u?int(8|16|32|64)|float(16|32|64|128)|complex(64|128|256)"
    r"|(datetime64|timedelta64)(\[\w+\])?)$"
)
_INT_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}

ColumnType = str | dict[str, Any]


def _type_name(value: Any) -> str:
    """Accept ``"double"``, an MLflow ``DataType`` member or anything with a ``name``."""
    if isinstance(value, str):
        return value
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else repr(value)


def tensor_dtype_name(dtype: Any) -> str:
    """The numpy dtype name MLflow writes for ``dtype`` (a string, numpy dtype or torch dtype).

    Flexible numpy types lose their size, as in MLflow: ``<U5`` becomes ``str``, ``|S3`` becomes
    ``bytes``. Torch dtypes map to the numpy name (``torch.float32`` -> ``float32``).
    """
    kind = getattr(dtype, "kind", None)
    if isinstance(kind, str) and hasattr(dtype, "itemsize"):  # a numpy dtype, no numpy import needed
        name = {"U": "str", "S": "bytes"}.get(kind, str(getattr(dtype, "name", dtype)))
    else:
        name = str(dtype)
    name = name.removeprefix("torch.")
    if name == "bfloat16":
        raise InvalidArgument(
            "dtype bfloat16 has no numpy equivalent, so an MLflow signature cannot describe it; "
            "cast the example to float32 (or pass an explicit signature)"
        )
    if not _TENSOR_DTYPE.match(name):
        raise InvalidArgument(f"unsupported tensor dtype {dtype!r}; expected a numpy dtype name such as 'float32'")
    return name


@dataclass
class ColSpec:
    """One column of a column-based (DataFrame) schema.

    Args:
        type: an MLflow column type name (see :data:`COLUMN_TYPES`), or for MLflow's structured
            types (array, object, map, any) the JSON dict MLflow writes, e.g.
            ``{"type": "array", "items": {"type": "string"}}``.
        name: column name; ``None`` for positional columns.
        required: whether the column must be present (and, by inference, had no missing values).
    """

    type: ColumnType
    name: str | None = None
    required: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.type, dict):
            if self.type.get("type") not in COMPLEX_TYPES:
                raise InvalidArgument(f"unsupported structured column type {self.type!r}")
        else:
            self.type = _type_name(self.type)
            if self.type not in COLUMN_TYPES:
                raise InvalidArgument(f"unsupported column type {self.type!r}; expected one of {sorted(COLUMN_TYPES)}")
        if self.name is not None and not isinstance(self.name, str):
            self.name = str(self.name)
        self.required = bool(self.required)

    @property
    def type_name(self) -> str:
        """``"double"``, ``"string"``, ... or the structured type's name (``"array"``)."""
        return str(self.type["type"]) if isinstance(self.type, dict) else self.type

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.type) if isinstance(self.type, dict) else {"type": self.type}
        if self.name is not None:
            d["name"] = self.name
        d["required"] = self.required
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColSpec:
        if "type" not in d:
            raise InvalidArgument(f"column spec {d!r} has no 'type'")
        required = d.get("required")
        if d["type"] in COMPLEX_TYPES:
            type_: ColumnType = {k: v for k, v in d.items() if k not in ("name", "required")}
        else:
            type_ = d["type"]
        return cls(type_, d.get("name"), True if required is None else bool(required))


@dataclass(init=False)
class TensorSpec:
    """One tensor of a tensor-based schema: numpy dtype name and shape, ``-1`` for a free dimension.

    Args:
        dtype: a numpy dtype name (``"float32"``), numpy dtype or torch dtype; stored as the name.
        shape: dimensions; the batch dimension is ``-1`` when inferred.
        name: tensor name; ``None`` for a single unnamed tensor.
    """

    dtype: str
    shape: tuple[int, ...]
    name: str | None

    def __init__(self, dtype: Any, shape: Sequence[int], name: str | None = None) -> None:
        self.dtype = tensor_dtype_name(dtype)
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
            raise InvalidArgument(f"tensor shape must be a tuple or list of ints, got {shape!r}")
        self.shape = tuple(int(d) for d in shape)
        if any(d < -1 for d in self.shape):
            raise InvalidArgument(f"tensor shape {self.shape} has a dimension below -1")
        self.name = str(name) if name is not None else None

    @property
    def type(self) -> str:
        """Alias of :attr:`dtype`, the attribute name MLflow uses."""
        return self.dtype

    @property
    def required(self) -> bool:
        """Tensors are always required (as in MLflow)."""
        return True

    def to_dict(self) -> dict[str, Any]:
        spec = {"type": "tensor", "tensor-spec": {"dtype": self.dtype, "shape": list(self.shape)}}
        return spec if self.name is None else {"name": self.name, **spec}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        info = d.get("tensor-spec")
        if d.get("type") != "tensor" or not isinstance(info, dict) or not {"dtype", "shape"} <= set(info):
            raise InvalidArgument(f"tensor spec {d!r} needs type 'tensor' and 'tensor-spec' with dtype and shape")
        return cls(info["dtype"], tuple(info["shape"]), d.get("name"))


@dataclass
class Schema:
    """An ordered list of all-:class:`ColSpec` or all-:class:`TensorSpec` inputs, all named or all unnamed."""

    inputs: list[ColSpec | TensorSpec]

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, list) or not self.inputs:
            raise InvalidArgument(f"a Schema needs a non-empty list of ColSpec or TensorSpec, got {self.inputs!r}")
        if not (
            all(isinstance(x, ColSpec) for x in self.inputs) or all(isinstance(x, TensorSpec) for x in self.inputs)
        ):
            raise InvalidArgument("a Schema cannot mix ColSpec and TensorSpec inputs")
        named = [x.name is not None for x in self.inputs]
        if any(named) and not all(named):
            raise InvalidArgument(
                f"a Schema cannot mix named and unnamed inputs; got names {[x.name for x in self.inputs]}"
            )
        names = [x.name for x in self.inputs if x.name is not None]
        if len(set(names)) != len(names):
            raise InvalidArgument(
                f"duplicate input names in Schema: {sorted({n for n in names if names.count(n) > 1})}"
            )
        if self.is_tensor_spec() and len(self.inputs) > 1 and not all(named):
            raise InvalidArgument("a Schema with several tensors must name each of them")
        if not all(named) and not all(x.required for x in self.inputs):
            raise InvalidArgument("unnamed inputs cannot be optional; name the columns or make them required")

    def __len__(self) -> int:
        return len(self.inputs)

    def __iter__(self) -> Iterator[ColSpec | TensorSpec]:
        return iter(self.inputs)

    def is_tensor_spec(self) -> bool:
        return isinstance(self.inputs[0], TensorSpec)

    def has_input_names(self) -> bool:
        return self.inputs[0].name is not None

    def input_names(self) -> list[str | int]:
        """Names, or positions for an unnamed schema."""
        return [x.name if x.name is not None else i for i, x in enumerate(self.inputs)]

    def required_input_names(self) -> list[str | int]:
        return [x.name if x.name is not None else i for i, x in enumerate(self.inputs) if x.required]

    def optional_input_names(self) -> list[str | int]:
        return [x.name if x.name is not None else i for i, x in enumerate(self.inputs) if not x.required]

    def input_types(self) -> list[ColumnType]:
        """Column types, or tensor dtype names."""
        return [x.dtype if isinstance(x, TensorSpec) else x.type for x in self.inputs]

    def to_dict(self) -> list[dict[str, Any]]:
        return [x.to_dict() for x in self.inputs]

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, items: list[dict[str, Any]]) -> Schema:
        if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
            raise InvalidArgument(f"a schema must be a JSON list of objects, got {items!r}")
        return cls([TensorSpec.from_dict(x) if x.get("type") == "tensor" else ColSpec.from_dict(x) for x in items])

    @classmethod
    def from_json(cls, text: str) -> Schema:
        try:
            items = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"schema is not valid JSON: {text!r}") from exc
        return cls.from_dict(items)


def _scalar_for(type_name: str, value: Any, where: str) -> Any:
    """Check one param value against an MLflow type; return it as a Python native value."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy scalar
    actual = type(value).__name__
    if type_name == "boolean" and isinstance(value, bool):
        return value
    if type_name in _INT_RANGES and isinstance(value, int) and not isinstance(value, bool):
        low, high = _INT_RANGES[type_name]
        if not low <= value <= high:
            raise SchemaMismatch(f"{where}: {value} does not fit in {type_name} ({COLUMN_TYPES[type_name]})")
        return value
    if type_name in ("float", "double") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type_name == "string" and isinstance(value, str):
        return value
    if type_name == "datetime":
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value)
            except ValueError:
                raise SchemaMismatch(f"{where}: {value!r} is not an ISO 8601 datetime") from None
    raise SchemaMismatch(f"{where}: expected {type_name}, got {actual} ({value!r})")


@dataclass
class ParamSpec:
    """One inference parameter: name, MLflow type, default, and shape ``None`` (scalar) or ``(-1,)`` (list).

    ``type`` is a :data:`COLUMN_TYPES` name other than ``binary``, or an MLflow object-type dict.
    The default is checked against the type when the spec is built.
    """

    name: str
    type: ColumnType
    default: Any
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.name = str(self.name)
        if isinstance(self.type, dict):
            if self.type.get("type") != "object":
                raise InvalidArgument(
                    f"param {self.name!r}: structured param types must be 'object', got {self.type!r}"
                )
        else:
            self.type = _type_name(self.type)
            if self.type not in COLUMN_TYPES or self.type == "binary":
                allowed = sorted(t for t in COLUMN_TYPES if t != "binary")
                raise InvalidArgument(f"param {self.name!r}: unsupported type {self.type!r}; expected one of {allowed}")
        if self.shape is not None:
            self.shape = tuple(int(d) for d in self.shape)
            if self.shape != (-1,):
                raise InvalidArgument(f"param {self.name!r}: shape must be None or (-1,), got {self.shape}")
        self.default = self.validate(self.default) if self.default is not None else None

    @property
    def dtype(self) -> ColumnType:
        """Alias of :attr:`type`, the attribute name MLflow uses."""
        return self.type

    def validate(self, value: Any) -> Any:
        """Return ``value`` converted to this param's type, or raise :class:`SchemaMismatch`.

        Allowed conversions are MLflow's: int to long, float or double; ISO strings to datetime.
        """
        where = f"param {self.name!r}"
        if isinstance(self.type, dict):
            if not isinstance(value, dict):
                raise SchemaMismatch(f"{where}: expected an object (dict), got {type(value).__name__}")
            return value
        if self.shape is None:
            return _scalar_for(self.type, value, where)
        if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
            value = value.tolist()
        if not isinstance(value, (list, tuple)) or any(isinstance(v, (list, tuple, dict)) for v in value):
            raise SchemaMismatch(f"{where}: expected a 1-D list of {self.type} (shape (-1,)), got {value!r}")
        return [_scalar_for(self.type, v, f"{where}[{i}]") for i, v in enumerate(value)]

    def to_dict(self) -> dict[str, Any]:
        default = self.default
        if isinstance(default, dt.date):
            default = default.isoformat()
        elif isinstance(default, list):
            default = [v.isoformat() if isinstance(v, dt.date) else v for v in default]
        type_dict = dict(self.type) if isinstance(self.type, dict) else {"type": self.type}
        shape = list(self.shape) if self.shape is not None else None
        return {"name": self.name, "default": default, "shape": shape, **type_dict}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParamSpec:
        type_ = d.get("type", d.get("dtype"))
        if "name" not in d or "default" not in d or type_ is None:
            raise InvalidArgument(f"param spec {d!r} needs 'name', 'type' and 'default'")
        if type_ == "object":
            type_ = {k: v for k, v in d.items() if k in ("type", "properties")}
        return cls(d["name"], type_, d["default"], d.get("shape"))


@dataclass
class ParamSchema:
    """The inference parameters a model accepts (``predict(data, params=...)``)."""

    params: list[ParamSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not all(isinstance(p, ParamSpec) for p in self.params):
            raise InvalidArgument("a ParamSchema only holds ParamSpec items")
        names = [p.name for p in self.params]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidArgument(f"duplicate params in ParamSchema: {duplicates}")

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self) -> Iterator[ParamSpec]:
        return iter(self.params)

    def to_dict(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.params]

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ParamSchema:
        try:
            items = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"param schema is not valid JSON: {text!r}") from exc
        if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
            raise InvalidArgument(f"a param schema must be a JSON list of objects, got {items!r}")
        return cls([ParamSpec.from_dict(x) for x in items])


@dataclass
class ModelSignature:
    """What a model takes and returns: input and output :class:`Schema`, and a :class:`ParamSchema`."""

    inputs: Schema | None = None
    outputs: Schema | None = None
    params: ParamSchema | None = None

    def __post_init__(self) -> None:
        for label, value, kind in (("inputs", self.inputs, Schema), ("outputs", self.outputs, Schema)):
            if value is not None and not isinstance(value, kind):
                raise InvalidArgument(f"ModelSignature {label} must be a Schema or None, got {type(value).__name__}")
        if self.params is not None and not isinstance(self.params, ParamSchema):
            raise InvalidArgument(
                f"ModelSignature params must be a ParamSchema or None, got {type(self.params).__name__}"
            )
        if self.inputs is None and self.outputs is None and self.params is None:
            raise InvalidArgument("a ModelSignature needs at least one of inputs, outputs or params")

    def to_dict(self) -> dict[str, str | None]:
        """MLflow's form: each part a JSON string (or ``None``), as stored in the MLmodel file."""
        return {
            "inputs": self.inputs.to_json() if self.inputs is not None else None,
            "outputs": self.outputs.to_json() if self.outputs is not None else None,
            "params": self.params.to_json() if self.params else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSignature:
        if not isinstance(d, dict):
            raise InvalidArgument(f"a signature must be a mapping of inputs/outputs/params, got {d!r}")
        inputs = Schema.from_json(d["inputs"]) if d.get("inputs") else None
        outputs = Schema.from_json(d["outputs"]) if d.get("outputs") else None
        params = ParamSchema.from_json(d["params"]) if d.get("params") else None
        return cls(inputs, outputs, params)
