"""Shape checking: run a validated spec on the ``meta`` device before building it for real.

Meta tensors carry shapes and dtypes but no storage, so every layer's real forward code decides
whether it accepts its input, without allocating a byte. Each spec leaf gets one meta module
(Repeat copies share it: they have the same shapes), and a Repeat stops propagating once its
copies reach a shape they map to itself. Meta kernels do not check dtypes (an int64 tensor passes
a meta Linear), so the integer-id rule is ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diagnostics.errors import InvalidSpecError, ResourceLimitError
from diagnostics.limits import Limits
from diagnostics.loading.spec.layers import LAYER_TYPES
from diagnostics.loading.spec.schema import (
    InputDtype,
    LayerSpec,
    ModuleSpec,
    RepeatSpec,
    ResidualSpec,
    SpecModel,
)

TORCH_DTYPES = {InputDtype.FLOAT32: torch.float32, InputDtype.INT64: torch.int64,
                InputDtype.INT32: torch.int32}
# Layers that pass integer ids through unchanged, or take them (Embedding).
_TAKES_IDS = frozenset({"Embedding", "Identity", "Flatten"})


@dataclass(frozen=True)
class _Flow:
    """What reaches a layer: shape, dtype, and who produced it (for error messages)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    source: str


def check_shapes(spec: SpecModel, limits: Limits) -> tuple[int, ...]:
    """Propagate the input's shape through the spec on the meta device.

    Args:
        spec: A validated spec.
        limits: ``max_tensor_elements`` bounds every layer's output (and attention scores).

    Returns:
        The model output's shape.

    Raises:
        InvalidSpecError: A layer cannot take what the previous one produces (the error names
            both, with the shape), integer ids reach a layer other than Embedding, or a
            Residual branch changes the shape.
        ResourceLimitError: An intermediate tensor would exceed ``max_tensor_elements``.
    """
    item = spec.inputs[0]
    flow = _Flow(item.shape, TORCH_DTYPES[item.dtype], f"input {item.name!r}")
    # Grad mode as in the probe: TransformerEncoderLayer takes its fused fast path without it.
    with torch.enable_grad():
        out = _ShapeWalker(limits).run_list(spec.layers, "layers", flow)
    if not out.dtype.is_floating_point:
        raise InvalidSpecError("layers", f"the model outputs integer ids ({_dtype(out)}); "
                                         "it needs a layer that maps them to floats, such as "
                                         "Embedding")
    return out.shape


class _ShapeWalker:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.meta: dict[int, nn.Module] = {}
        self.copy_of: list[str] = []

    def run_list(self, layers: tuple[LayerSpec, ...], path: str, flow: _Flow) -> _Flow:
        for index, layer in enumerate(layers):
            flow = self.run(layer, f"{path}[{index}]", flow)
        return flow

    def run(self, layer: LayerSpec, path: str, flow: _Flow) -> _Flow:
        if isinstance(layer, ModuleSpec):
            return self.leaf(layer, path, flow)
        if isinstance(layer, ResidualSpec):
            return self.residual(layer, path, flow)
        if isinstance(layer, RepeatSpec):
            return self.repeat(layer, path, flow)
        return self.run_list(layer.layers, f"{path}.layers", flow)

    def residual(self, layer: ResidualSpec, path: str, flow: _Flow) -> _Flow:
        if not flow.dtype.is_floating_point:
            raise InvalidSpecError(path, f"Residual needs float input, got {_dtype(flow)} from "
                                         f"{flow.source}")
        out = self.run_list(layer.layers, f"{path}.layers", flow)
        if out.shape != flow.shape:
            raise InvalidSpecError(
                path, f"the Residual branch turns shape {list(flow.shape)} into "
                      f"{list(out.shape)} (last: {out.source}); output = input + "
                      "layers(input) needs them equal")
        return _Flow(flow.shape, out.dtype, f"{path} (Residual)")

    def repeat(self, layer: RepeatSpec, path: str, flow: _Flow) -> _Flow:
        seen: dict[tuple[tuple[int, ...], torch.dtype], _Flow] = {}
        for copy in range(layer.times):
            key = (flow.shape, flow.dtype)
            if key in seen:
                flow = seen[key]
                continue
            self.copy_of.append(f"copy {copy} of {path}")
            try:
                out = self.run_list(layer.layers, f"{path}.layers", flow)
            finally:
                self.copy_of.pop()
            if (out.shape, out.dtype) == key:
                return out  # a fixed point: every later copy maps it to itself
            seen[key] = flow = out
        return flow

    def leaf(self, spec: ModuleSpec, path: str, flow: _Flow) -> _Flow:
        what = spec.type + (f" in {self.copy_of[-1]}" if self.copy_of else "")
        integer = not flow.dtype.is_floating_point
        if integer and spec.type not in _TAKES_IDS:
            raise InvalidSpecError(path, f"{what} gets integer ids ({_dtype(flow)}) from "
                                         f"{flow.source}; only Embedding takes ids")
        if spec.type == "Embedding" and not integer:
            raise InvalidSpecError(path, f"{what} takes integer ids, got {_dtype(flow)} from "
                                         f'{flow.source}; declare the input "dtype": "int64"')
        _check_softmax_dim(spec, path, flow)
        _check_conv_channels(spec, path, flow)
        module = self._meta_module(spec)
        try:
            out = module(torch.empty(flow.shape, dtype=flow.dtype, device="meta"))
        except Exception as exc:  # any failure of the layer's own forward code is a spec error
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise InvalidSpecError(path, f"{what} cannot take shape {list(flow.shape)} from "
                                         f"{flow.source}: {message}") from None
        if spec.type == "TransformerEncoderLayer":
            self._check_attention(spec, path, flow.shape)
        self._check_size(path, spec.type, out.numel())
        return _Flow(tuple(out.shape), out.dtype, f"{path} ({what})")

    def _meta_module(self, spec: ModuleSpec) -> nn.Module:
        module = self.meta.get(id(spec))
        if module is None:
            with torch.device("meta"):
                module = LAYER_TYPES[spec.type].instantiate(spec.args)
            self.meta[id(spec)] = module.eval()
        return module

    def _check_attention(self, spec: ModuleSpec, path: str, shape: tuple[int, ...]) -> None:
        # The attention scores (batch × heads × length²) never show up as a layer output.
        batch_first = spec.args.get("batch_first", False)
        if len(shape) == 3:
            batch, length = (shape[0], shape[1]) if batch_first else (shape[1], shape[0])
        else:
            batch, length = 1, shape[0]
        self._check_size(path, "attention scores of TransformerEncoderLayer",
                         batch * spec.args["nhead"] * length * length)

    def _check_size(self, path: str, what: str, elements: int) -> None:
        if elements > self.limits.max_tensor_elements:
            raise ResourceLimitError(
                f"{path}: {what} would hold {elements} elements, over the limit of "
                f"{self.limits.max_tensor_elements} (max_tensor_elements)",
                limit="max_tensor_elements", value=self.limits.max_tensor_elements)


# Checks the meta kernels skip (found by fuzzing meta against CPU): the real kernels raise.
def _check_softmax_dim(spec: ModuleSpec, path: str, flow: _Flow) -> None:
    if spec.type not in ("Softmax", "LogSoftmax"):
        return
    dim, rank = spec.args.get("dim", -1), len(flow.shape)
    if not -rank <= dim < rank:
        raise InvalidSpecError(f"{path}.dim", f"{dim} is out of range for shape "
                                              f"{list(flow.shape)} from {flow.source}")


def _check_conv_channels(spec: ModuleSpec, path: str, flow: _Flow) -> None:
    if not spec.type.startswith(("Conv1d", "Conv2d", "Conv3d", "ConvTranspose")):
        return
    dims, rank = int(spec.type[-2]), len(flow.shape)
    # Batched input is (N, C, *spatial), unbatched (C, *spatial).
    if rank in (dims + 1, dims + 2) and flow.shape[rank - dims - 1] != spec.args["in_channels"]:
        raise InvalidSpecError(
            path, f"{spec.type} expects {spec.args['in_channels']} channels on axis "
                  f"{rank - dims - 1}, got shape {list(flow.shape)} from {flow.source}")


def _dtype(flow: _Flow) -> str:
    return str(flow.dtype).removeprefix("torch.")
