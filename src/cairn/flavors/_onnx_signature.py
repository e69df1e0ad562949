"""The signature of an ONNX model read from its graph (see :mod:`cairn.flavors.onnx`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cairn.errors import InvalidArgument
from cairn.models.schema import ModelSignature, Schema, TensorSpec

if TYPE_CHECKING:
    import onnx


# -- signature -----------------------------------------------------------------------------------------


def signature_from_graph(proto: onnx.ModelProto) -> ModelSignature | None:
    """Named tensor specs for the graph's inputs and outputs (a dynamic dimension is ``-1``).

    Used when there is no input example. ``None`` for a part holding something other than tensors
    (sequences, maps) or tensors of unknown rank.
    """
    import onnx.helper

    initializers = {t.name for t in proto.graph.initializer}

    def schema(values: Any) -> Schema | None:
        specs = []
        for value in values:
            if value.name in initializers:
                continue  # old exporters list the weights as inputs too
            if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
                return None
            tensor = value.type.tensor_type
            try:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
                shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
                specs.append(TensorSpec(dtype, shape, value.name))
            except (KeyError, ValueError, TypeError, InvalidArgument):
                return None
        return Schema(list(specs)) if specs else None

    inputs = schema(proto.graph.input)
    if inputs is None:
        return None
    return ModelSignature(inputs, schema(proto.graph.output))
