"""Registering converters with onnx2torch's own registry.

``add_converter`` refuses a (domain, op, version) that is already registered, which is right for
new ops and versions. For the few stock converters that are wrong (a reversed CumSum, a
transposed NonZero ...) we must *replace* the entry: ``replaces=True`` does that, in the same
registry dict, and says so in the converter's module so the patch is documented where it lives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from onnx import defs
from onnx2torch.node_converters import registry as _stock

Converter = Callable


def converter(op_type: str, versions: Iterable[int], *, domain: str = defs.ONNX_DOMAIN,
              replaces: bool = False) -> Callable[[Converter], Converter]:
    """Register the decorated function for ``op_type`` at each of ``versions``.

    Args:
        op_type: ONNX op type.
        versions: The ``since_version`` values of the schemas it handles (onnx2torch looks a
            model's opset up to the schema's since_version).
        domain: ONNX domain ("" is ai.onnx).
        replaces: Replace a stock converter registered for the same key (a documented fix);
            without it a duplicate key is an error, as in onnx2torch.
    """

    def decorate(function: Converter) -> Converter:
        for version in versions:
            key = _stock.OperationDescription(domain=domain, operation_type=op_type,
                                              version=version)
            existing = _stock._CONVERTER_REGISTRY.get(key)
            if existing is not None and _same_definition(existing, function):
                # The module is being imported again (an earlier import failed part-way):
                # registering the same definition twice is not a conflict.
                _stock._CONVERTER_REGISTRY[key] = function
            elif existing is not None:
                if not replaces:
                    raise ValueError(f"converter for {key} already registered; pass replaces=True "
                                     "to replace a stock converter on purpose")
                _stock._CONVERTER_REGISTRY[key] = function
            else:
                _stock.add_converter(op_type, version, domain)(function)
        return function

    return decorate


def _same_definition(first: Converter, second: Converter) -> bool:
    return (getattr(first, "__module__", None), getattr(first, "__qualname__", None)) == \
        (getattr(second, "__module__", None), getattr(second, "__qualname__", None))
