"""Which layers' outputs reach the loss only through a normalization: their weights are
scale-invariant.

If every path from a layer's output to the loss passes a batch-, layer- or group-normalization,
and on the way only through ops that scale with that output (linear maps with fixed other
operands, pooling, reshapes, and activations that become ReLU-like at large scale), then
L(c·W) = L(W) for c > 0, exactly for ReLU and a bias-free layer, asymptotically otherwise. For
such a weight, ⟨∂L/∂W, W⟩ = 0 and ‖∂L/∂W‖ ∝ 1/‖W‖: an oversized SGD step turns its direction
and *grows its norm* (‖W + Δ‖² = ‖W‖² + ‖Δ‖²), which shrinks every later step; the
normalization bounds the output (van Laarhoven 2017; Arora, Li & Lyu 2019, "auto rate-tuning").
So a first step that "overwrites" such a weight predicts no divergence, and relative_update does
not judge it (torchvision ResNet-50/ResNeXt-50/MNASNet/RegNet-X exported unfolded and probed
at batch 2, 64 px: stem steps of 1.0-3.8× their scale, nets that train).

A backward signal that grows through such layers alone cannot blow the forward pass up either,
so backward_signal_exploding does not fire where every weight below the top of the depth profile
is scale-invariant: torchvision ResNet-101/152, ResNeXt-101 and Wide-ResNet-101 (unfolded) read
1.5e3-1.2e4 that way and train. It predicts no stall either: the benchmark's ConvMixer-style nets
(family ``cnn-mixer``) grow it 360-3.7e4× and their ReLU/GELU ones stall, like every deep
normalized ReLU stack without skips there, whatever its ratio (docs/trainability.md).

Read from the autograd graph of the probe's own first pass (built the same way for ONNX files,
specs and modules): the nodes between each watched layer's output and the loss.
"""

from __future__ import annotations

from collections.abc import Iterable

# Ops homogeneous of degree 1 in their one activation input (other inputs fixed: parameters,
# constants), or asymptotically so: the ReLU family and its smooth variants tend to c·f(x) as
# the scale c grows. Saturating activations (tanh, sigmoid, hardtanh/ReLU6) and products of two
# activations (attention, gating) are not: scaling the input changes what they compute.
_SCALING = frozenset({
    "Relu", "Threshold", "LeakyRelu", "Gelu", "Silu", "Mish", "Elu", "Celu", "Hardswish",
    "Softplus", "PreluKernel", "Prelu",
    "Convolution", "ConvolutionBackwardOverrideable", "Addmm", "Mm", "Bmm", "Mv", "Matmul",
    "Linear", "Add", "Sub", "Rsub", "Mul", "Neg",
    "Mean", "Sum", "AvgPool1D", "AvgPool2D", "AvgPool3D", "AdaptiveAvgPool1D",
    "AdaptiveAvgPool2D", "AdaptiveAvgPool3D", "MaxPool2DWithIndices", "MaxPool3DWithIndices",
    "AdaptiveMaxPool2D", "AdaptiveMaxPool3D", "ConstantPadNd", "ReflectionPad1D",
    "ReflectionPad2D", "ReplicationPad2D", "UpsampleNearest1D", "UpsampleNearest2D",
    "UpsampleNearest3D", "UpsampleBilinear2D", "UpsampleLinear1D",
    "View", "Reshape", "ReshapeAlias", "UnsafeView", "Transpose", "T", "Permute", "Squeeze",
    "Unsqueeze", "Expand", "Clone", "Slice", "Select", "Split", "SplitWithSizes", "Unbind",
    "Narrow", "ToCopy", "Alias", "AsStrided", "Index", "IndexSelect", "Gather", "Repeat",
    "Flip", "Roll", "Cat", "Stack", "PixelShuffle", "PixelUnshuffle",
})
# Div scales with its numerator only.
_NUMERATOR_ONLY = frozenset({"Div"})
_LAYER_OR_GROUP_NORMS = frozenset({"NativeLayerNorm", "NativeGroupNorm"})
_BATCH_NORMS = frozenset({"NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm"})


def _op(node: object) -> str:
    """``ReluBackward0`` -> ``Relu``."""
    return type(node).__name__.rstrip("0123456789").removesuffix("Backward")


def _normalizes(node: object) -> bool:
    op = _op(node)
    if op in _LAYER_OR_GROUP_NORMS:
        return True
    # A BatchNorm on running statistics (inference) is an affine map, not a normalization.
    return op in _BATCH_NORMS and bool(getattr(node, "_saved_training", False))


class _Graph:
    """The autograd graph below ``root``, with each node's consumers (the nodes nearer the loss)."""

    def __init__(self, root: object) -> None:
        self.consumers: dict[int, list[tuple[object, int]]] = {}
        self.nodes: dict[int, object] = {id(root): root}
        self._data: set[int] = set()
        self._bounded: dict[int, bool] = {}
        frontier = [root]
        while frontier:
            node = frontier.pop()
            for position, (child, _) in enumerate(_children(node)):
                if child is None:
                    continue
                self.consumers.setdefault(id(child), []).append((node, position))
                if id(child) not in self.nodes:
                    self.nodes[id(child)] = child
                    frontier.append(child)

    def mark_data(self, sources: Iterable[object]) -> None:
        """Mark what depends on the layers' outputs: every node downstream of ``sources``."""
        frontier = [node for node in sources if id(node) in self.nodes]
        self._data.update(id(node) for node in frontier)
        while frontier:
            node = frontier.pop()
            for user, _ in self.consumers.get(id(node), []):
                if id(user) not in self._data:
                    self._data.add(id(user))
                    frontier.append(user)

    def fixed(self, node: object | None) -> bool:
        """Independent of every watched layer's output: parameters, constants, views of them.
        (The raw inputs do not require grad, so a skip from them looks fixed too, like a
        bias: scaling the weights makes it negligible.)"""
        return node is None or id(node) not in self._data

    def scales_with(self, node: object, position: int) -> bool:
        """Whether ``node``'s output scales with its input at ``position``, the others fixed."""
        op = _op(node)
        if op not in _SCALING and not (op in _NUMERATOR_ONLY and position == 0):
            return False
        return all(self.fixed(child) for index, (child, _) in enumerate(_children(node))
                   if index != position)

    def bounded(self, node: object) -> bool:
        """Every path from ``node``'s output to the loss crosses a normalization, through ops
        that scale with it."""
        key = id(node)
        if key in self._bounded:
            return self._bounded[key]
        # Iterative: deep nets give paths thousands of nodes long.
        stack = [node]
        while stack:
            top = stack[-1]
            users = self.consumers.get(id(top), [])
            pending = [user for user, position in users
                       if id(user) not in self._bounded and not _normalizes(user)
                       and self.scales_with(user, position)]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            self._bounded[id(top)] = bool(users) and all(
                _normalizes(user) or (self.scales_with(user, position)
                                      and self._bounded[id(user)])
                for user, position in users)
        return self._bounded[key]


def _children(node: object) -> Iterable[tuple[object | None, int]]:
    return getattr(node, "next_functions", ())


def scale_invariant(loss_node: object | None, outputs: dict[int, object]) -> frozenset[int]:
    """The keys of ``outputs`` (layer index -> its output's autograd node) whose output reaches
    the loss (``loss_node``: the loss's autograd node) only through a normalization."""
    if loss_node is None or not outputs:
        return frozenset()
    graph = _Graph(loss_node)
    graph.mark_data(outputs.values())
    return frozenset(index for index, node in outputs.items()
                     if id(node) in graph.consumers and graph.bounded(node))
