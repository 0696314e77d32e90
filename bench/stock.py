"""onnx2torch as it ships, for the benchmarks' floor.

Importing GradDoctor's loader registers its converters in onnx2torch's own registry, in the same
process as the floor. Most replace stock converters that are wrong (the floor needs them to
convert at all); the Gemm converter replaces a correct one only to skip the random
initialization it overwrites, and the floor must not get that saving for free.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stock_onnx2torch() -> Iterator[None]:
    """Convert with onnx2torch's own Gemm converter inside the block (a no-op on checkouts that
    predate GradDoctor's, for ``--code``)."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    from diagnostics.loading.onnx.ops import linalg

    stock = getattr(linalg, "STOCK_GEMM", None)
    keys = [key for key in _CONVERTER_REGISTRY if key.operation_type == "Gemm"
            and key.domain == ""]
    ours = {key: _CONVERTER_REGISTRY[key] for key in keys}
    if stock is not None:
        for key in keys:
            _CONVERTER_REGISTRY[key] = stock
    try:
        yield
    finally:
        _CONVERTER_REGISTRY.update(ours)


def stock_convert(model):
    """``onnx2torch.convert(model)`` with onnx2torch's own Gemm converter."""
    import onnx2torch

    with stock_onnx2torch():
        return onnx2torch.convert(model)
