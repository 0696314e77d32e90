"""Architecture-spec builders shared by the tests: layer dicts and the plain MLP/CNN specs."""

from __future__ import annotations

from typing import Any


def linear(n_in: int, n_out: int, **extra: Any) -> dict[str, Any]:
    """A Linear layer; ``extra`` adds keys (``init``, ``bias``)."""
    return {"type": "Linear", "in_features": n_in, "out_features": n_out, **extra}


def conv(c_in: int, c_out: int, **extra: Any) -> dict[str, Any]:
    """A 3×3 Conv2d with padding 1 (shape-preserving); ``extra`` adds keys."""
    return {"type": "Conv2d", "in_channels": c_in, "out_channels": c_out, "kernel_size": 3,
            "padding": 1, **extra}


def mlp_spec(depth: int, activation: str, width: int = 64, init: dict | None = None,
             batch: int = 16) -> dict[str, Any]:
    """``depth`` Linear layers (``depth - 1`` hidden blocks in a Repeat) and a 10-way head."""
    spec: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [batch, width]}],
        "layers": [{"type": "Repeat", "times": depth - 1,
                    "layers": [linear(width, width), {"type": activation}]},
                   linear(width, 10)]}
    if init:
        spec["init"] = init
    return spec


def cnn_spec(depth: int, activation: str, init: dict | None = None,
             norm: bool = False) -> dict[str, Any]:
    """A stem, ``depth`` 3×3 conv blocks (optionally with BatchNorm), pooling and a head."""
    block = [conv(16, 16)] + ([{"type": "BatchNorm2d", "num_features": 16}] if norm else []) + \
        [{"type": activation}]
    spec: dict[str, Any] = {
        "inputs": [{"name": "image", "shape": [8, 3, 16, 16]}],
        "layers": [conv(3, 16), {"type": activation},
                   {"type": "Repeat", "times": depth, "layers": block},
                   {"type": "AdaptiveAvgPool2d", "output_size": 1}, {"type": "Flatten"},
                   linear(16, 10)]}
    if init:
        spec["init"] = init
    return spec


def spec_mlp(depth: int = 2, width: int = 16, activation: str = "ReLU", batch: int = 8,
             name: str = "mlp") -> dict[str, Any]:
    """A plain MLP spec: ``depth`` Linear+activation blocks and a Linear head."""
    layers: list[dict[str, Any]] = []
    for _ in range(depth):
        layers += [{"type": "Linear", "in_features": width, "out_features": width},
                   {"type": activation}]
    layers.append({"type": "Linear", "in_features": width, "out_features": 1})
    return {"name": name, "inputs": [{"name": "x", "shape": [batch, width]}], "layers": layers}
