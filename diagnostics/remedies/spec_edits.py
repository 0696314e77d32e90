"""Structural edits of a spec document (the dict form), for remedies verified on specs.

Each function returns an edited deep copy, or None when the edit does not apply. The result is
validated again when it is built, so an edit can never get past the allowlist or the limits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from diagnostics.loading.spec.layers import CONTAINER_TYPES, Group, names_in

# Softmax and LogSoftmax normalize across a dimension: an output layer, never part of a hidden
# block a residual connection would wrap.
ACTIVATIONS = names_in(Group.ACTIVATION) - {"Softmax", "LogSoftmax"}
NORMS = names_in(Group.NORMALIZATION)
_CONV_NORM = {"Conv1d": "BatchNorm1d", "Conv2d": "BatchNorm2d", "Conv3d": "BatchNorm3d"}


def _weighted(layer: dict[str, Any]) -> bool:
    return layer.get("type") == "Linear" or layer.get("type") in _CONV_NORM


def _leaves(layers: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for layer in layers:
        if layer.get("type") in CONTAINER_TYPES:
            yield from _leaves(layer.get("layers", []))
        else:
            yield layer


def _output_layer(doc: dict[str, Any]) -> dict[str, Any] | None:
    weighted = [layer for layer in _leaves(doc["layers"]) if _weighted(layer)]
    return weighted[-1] if weighted else None


def insert_normalization(doc: dict[str, Any]) -> dict[str, Any] | None:
    """A normalization after every Linear/Conv but the output layer: LayerNorm over a Linear's
    features, BatchNorm over a convolution's channels."""
    edited = copy.deepcopy(doc)
    output = _output_layer(edited)
    changed = False

    def visit(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal changed
        result = []
        for position, layer in enumerate(layers):
            if layer.get("type") in CONTAINER_TYPES:
                layer["layers"] = visit(layer.get("layers", []))
            result.append(layer)
            following = layers[position + 1] if position + 1 < len(layers) else {}
            if not _weighted(layer) or layer is output or following.get("type") in NORMS:
                continue
            if layer["type"] == "Linear":
                result.append({"type": "LayerNorm", "normalized_shape": layer["out_features"]})
            else:
                result.append({"type": _CONV_NORM[layer["type"]],
                               "num_features": layer["out_channels"]})
            changed = True
        return result

    edited["layers"] = visit(edited["layers"])
    return edited if changed else None


def _shape_preserving(layer: dict[str, Any]) -> bool:
    if layer.get("type") == "Linear":
        return layer.get("in_features") == layer.get("out_features")
    if layer.get("type") in _CONV_NORM:
        kernel = layer.get("kernel_size")
        kernels = kernel if isinstance(kernel, list) else [kernel]
        padding = layer.get("padding", 0)
        same = padding == "same" or all(
            isinstance(k, int) and k % 2 == 1 and padding in (k // 2, [k // 2] * len(kernels))
            for k in kernels)
        return (layer.get("in_channels") == layer.get("out_channels") and same
                and layer.get("stride", 1) in (1, [1] * len(kernels))
                and layer.get("dilation", 1) in (1, [1] * len(kernels)))
    return False


def wrap_residual(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Wrap every shape-preserving Linear/Conv, with the normalization and activation right
    after it, in a Residual block (``x + f(x)``); layers already inside one are left alone."""
    edited = copy.deepcopy(doc)
    changed = False

    def visit(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal changed
        result, position = [], 0
        while position < len(layers):
            layer = layers[position]
            if layer.get("type") in ("Sequential", "Repeat"):
                layer["layers"] = visit(layer.get("layers", []))
            if not _shape_preserving(layer):
                result.append(layer)
                position += 1
                continue
            block = [layer]
            position += 1
            while position < len(layers) and len(block) < 3 and \
                    layers[position].get("type") in NORMS | ACTIVATIONS:
                block.append(layers[position])
                position += 1
            result.append({"type": "Residual", "layers": block})
            changed = True
        return result

    edited["layers"] = visit(edited["layers"])
    return edited if changed else None


def replace_recurrent(doc: dict[str, Any], old: str, new: str) -> dict[str, Any] | None:
    """Every ``old`` recurrent layer (RNN, LSTM, GRU) becomes ``new`` with the same sizes."""
    edited = copy.deepcopy(doc)
    changed = False
    for layer in _leaves(edited["layers"]):
        if layer.get("type") == old:
            layer["type"] = new
            layer.pop("nonlinearity", None)  # only vanilla RNNs choose one
            changed = True
    return edited if changed else None
