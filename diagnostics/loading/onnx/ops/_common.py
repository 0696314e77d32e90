"""Helpers shared by our converter families (private: the package does not import it as one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx import TensorProto
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, get_const_value

# torch's functional convolutions by number of spatial axes (Conv, pooling as a convolution with
# ones, Col2Im as a transposed one with a one-hot kernel).
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}

# ONNX element type -> torch dtype for every type torch can hold exactly. float8/int4/float4
# have no torch arithmetic; a Cast to them is refused by name rather than approximated.
TORCH_DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.UINT16: torch.uint16,
    TensorProto.UINT32: torch.uint32,
    TensorProto.UINT64: torch.uint64,
    TensorProto.BOOL: torch.bool,
    TensorProto.COMPLEX64: torch.complex64,
    TensorProto.COMPLEX128: torch.complex128,
}


def torch_dtype(onnx_type: int, op_type: str) -> torch.dtype:
    """The torch dtype for an ONNX element type.

    Raises:
        NotImplementedError: the type has no torch equivalent (float8, int4, string ...), which
            the loader reports as an unsupported operator naming the node.
    """
    try:
        return TORCH_DTYPES[onnx_type]
    except KeyError:
        name = TensorProto.DataType.Name(onnx_type) if onnx_type in TensorProto.DataType.values() \
            else str(onnx_type)
        raise NotImplementedError(f"{op_type} to element type {name} has no torch dtype") from None


def _constant(name: str, graph: OnnxGraph) -> object:
    """onnx2torch's value of an initializer or a Constant output; None for any other input."""
    if not name:
        return None
    try:
        return get_const_value(name, graph)
    except KeyError:
        return None


def constant_ints(name: str, graph: OnnxGraph) -> list[int] | None:
    """The integer values of ``name`` when it is an initializer or a Constant output, else None.

    Lets a converter bake shape-like inputs (axes, pads, split sizes) into the module instead
    of reading them from a tensor at run time.
    """
    value = _constant(name, graph)
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            return None
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def constant_tensor(name: str, graph: OnnxGraph) -> torch.Tensor | None:
    """The value of ``name`` when it is an initializer or a Constant's tensor, else None."""
    value = _constant(name, graph)
    if value is None or isinstance(value, torch.Tensor):
        return value
    try:
        return torch.tensor(value)
    except (TypeError, ValueError, RuntimeError):  # strings and other non-numeric constants
        return None


def input_at(node: OnnxNode, index: int) -> str:
    """The node's ``index``-th input name, ``""`` when absent or omitted."""
    values = node.input_values
    return values[index] if index < len(values) else ""


def mapping(node: OnnxNode, inputs: tuple[str, ...] | None = None) -> OnnxMapping:
    """The value mapping of ``node``, optionally with only ``inputs`` fed to forward()."""
    return OnnxMapping(inputs=node.input_values if inputs is None else inputs,
                       outputs=node.output_values)


def runtime_input(value: torch.Tensor | None, op_type: str, name: str) -> torch.Tensor:
    """An input that ``forward`` reads because it was not a constant at conversion.

    Converters leave the matching attribute None only for a node that has the input (the op's
    schema requires it), so None here is a module fed without it.
    """
    if value is None:
        raise ValueError(f"{op_type} needs its {name!r} input")
    return value


def normalize_axis(axis: int, rank: int) -> int:
    """``axis`` in ``[0, rank)``; ONNX allows negative axes counted from the end."""
    return axis + rank if axis < 0 else axis
