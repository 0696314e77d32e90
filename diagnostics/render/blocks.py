"""Layers grouped into blocks by module path, for reports that read well on deep models.

A transformer exported to ONNX has ~15 nodes per encoder layer (MatMul, Add, LayerNorm, ...); drawn
node by node, the zigzag inside each block hides the trend over depth. Names carry the module
path — ONNX node names like ``/encoder/layer.3/attention/self/key/MatMul``, state-dict-style names
like ``layer2.1.conv1``, spec paths like ``layers.0[3].layers.1`` — and the block is the path up to
its first indexed component (``encoder/layer.3``, ``layer2.1``, ``layers.0[3]``). Names without an
index are grouped by their first two path components (``model/embeddings``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from diagnostics.render._format import max_param_grad_norm
from diagnostics.report import LayerReport

TOP_LEVEL = "(top level)"
_INDEXED = re.compile(r"^\d+$|[.\[_]\d+\]?$")  # "3", "layer.3", "0[3]", "h_3"


@dataclass(frozen=True)
class Block:
    """Consecutive-by-name layers that share a module path prefix."""

    key: str
    layers: tuple[LayerReport, ...]

    @property
    def label(self) -> str:
        """Its last path component: ``layer.3``, ``layer2.1``, ``embeddings``."""
        if "/" in self.key or self.key == TOP_LEVEL:
            return self.key.rsplit("/", 1)[-1]
        parts = self.key.split(".")
        return ".".join(parts[-2:]) if _INDEXED.search(parts[-1]) else parts[-1]

    @property
    def flagged(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.flags]

    def signals(self) -> list[float]:
        """The finite, positive ‖δ‖ medians of its layers."""
        values = [layer.output_grad_norm.median for layer in self.layers
                  if layer.output_grad_norm is not None]
        return [v for v in values if v is not None and math.isfinite(v) and v > 0]

    def signal_max(self) -> float | None:
        """The block's largest ‖δ‖: the strongest path through it (the skip path in residual
        blocks), which is what carries the signal on to the blocks before it."""
        values = self.signals()
        return max(values) if values else None

    def signal_min(self) -> float | None:
        values = self.signals()
        return min(values) if values else None

    def param_grad_max(self) -> float | None:
        values = [v for layer in self.layers if (v := max_param_grad_norm(layer)) is not None
                  and math.isfinite(v) and v > 0]
        return max(values) if values else None

    def short_name(self, layer: LayerReport) -> str:
        """The layer's name inside the block (``attention/self/key`` for the node
        ``/encoder/layer.3/attention/self/key/MatMul``: the op has its own column), or whole."""
        for separator in ("/", "."):
            prefix = self.key + separator
            name = layer.name.lstrip("/") if separator == "/" else layer.name
            if name.startswith(prefix) and len(name) > len(prefix):
                inner = name[len(prefix):]
                path, _, last = inner.rpartition("/")
                if separator == "/" and last == layer.op_type:
                    return path or layer.name  # the op alone would say nothing
                return inner
        return layer.name


def block_key(name: str) -> str:
    """The module path of a layer name up to its first indexed component (see module doc)."""
    separator = "/" if "/" in name else "."
    parts = [part for part in name.split(separator) if part]
    if separator == "/":
        parts = parts[:-1]  # an ONNX node name ends in the op (".../key/MatMul")
    for position, part in enumerate(parts):
        if _INDEXED.search(part) and position + 1 < len(parts) + (separator == "/"):
            return separator.join(parts[: position + 1])
    if separator == "/":
        return separator.join(parts[:2]) if parts else TOP_LEVEL
    return separator.join(parts[:-1][:2]) if len(parts) > 1 else TOP_LEVEL


def group_layers(layers: Sequence[LayerReport]) -> list[Block]:
    """Blocks in topological order of their first layer; layers in each keep their order."""
    groups: dict[str, list[LayerReport]] = {}
    for layer in sorted(layers, key=lambda item: item.index):
        groups.setdefault(block_key(layer.name), []).append(layer)
    return [Block(key, tuple(members)) for key, members in groups.items()]


def worth_grouping(blocks: Sequence[Block], layers: Sequence[LayerReport]) -> bool:
    """Grouping helps when blocks gather several layers each: at least 1.5 layers a block."""
    return len(layers) > 12 and 1 < len(blocks) and len(layers) >= 1.5 * len(blocks)
