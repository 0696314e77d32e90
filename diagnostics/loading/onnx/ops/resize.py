"""Resize-11/13/18/19 as separable gather-and-weight passes that follow the standard exactly.

onnx2torch 1.5.15 has no Resize-18/19 (the dynamo exporter's ``F.interpolate``) and maps
Resize-11/13 onto ``F.interpolate``, which covers only some coordinate modes; the stock 11/13
converters are replaced (``replaces=True``) so every version shares one implementation.
For each resized axis the weights come from :mod:`._resize_coeffs` (a port of onnx's
reference), and the output is ``sum_k w[j, k] * x.index_select(axis, idx[:, k])``: exact for
every mode (nearest/linear/cubic, all coordinate transformations, antialias, exclude_outside,
tf_crop_and_resize, ``axes``, ``keep_aspect_ratio_policy``) and differentiable with respect to
``X``. Constant roi/scales/sizes are baked in; computed ones are read in ``forward``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.loading.onnx.ops._common import constant_tensor, input_at, mapping
from diagnostics.loading.onnx.ops._resize_coeffs import AxisPlan, plan_axis
from diagnostics.loading.onnx.ops.registry import converter


def _values(tensor: torch.Tensor | list[float] | None) -> list[float] | None:
    if tensor is None:
        return None
    values = tensor.reshape(-1).tolist() if isinstance(tensor, torch.Tensor) else list(tensor)
    return values or None  # an empty scales/roi tensor means "not given"


class OnnxResize(nn.Module, OnnxToTorchModule):
    """ONNX Resize with its attributes; roi/scales/sizes fixed or given to ``forward``."""

    def __init__(self, attributes: dict, constants: dict[str, list[float] | None]) -> None:
        """Keep the node's attributes and the constant inputs (``roi``, ``scales``, ``sizes``)."""
        super().__init__()
        self.mode = str(attributes.get("mode", "nearest"))
        self.coordinates = str(attributes.get("coordinate_transformation_mode", "half_pixel"))
        self.nearest_mode = str(attributes.get("nearest_mode", "round_prefer_floor"))
        self.cubic_a = float(attributes.get("cubic_coeff_a", -0.75))
        self.antialias = bool(attributes.get("antialias", 0))
        self.exclude_outside = bool(attributes.get("exclude_outside", 0))
        self.extrapolation_value = float(attributes.get("extrapolation_value", 0.0))
        self.policy = str(attributes.get("keep_aspect_ratio_policy", "stretch"))
        self.axes = attributes.get("axes")
        self.constants = constants

    def forward(self, X: torch.Tensor, roi: torch.Tensor | None = None,  # noqa: N803
                scales: torch.Tensor | None = None,
                sizes: torch.Tensor | None = None) -> torch.Tensor:
        """``X`` resized; the output keeps ``X``'s dtype."""
        given = {"roi": _values(roi), "scales": _values(scales), "sizes": _values(sizes)}
        given = {key: self.constants.get(key) or value for key, value in given.items()}
        rank = X.dim()
        axes = [a + rank if a < 0 else a for a in (self.axes or range(rank))]
        factors, out_sizes = self._targets(X.shape, axes, given["scales"], given["sizes"])
        rois = self._rois(given["roi"], axes, rank)
        result = X if X.is_floating_point() else X.double()
        for axis in axes:
            same = math.isclose(factors[axis], 1.0) and out_sizes[axis] == X.shape[axis]
            if same and rois[axis] in (None, (0.0, 1.0)):
                continue  # the standard's identity shortcut: no resampling on this axis
            plan = plan_axis(int(result.shape[axis]), out_sizes[axis], factors[axis],
                             mode=self.mode, coordinates=self.coordinates,
                             nearest_mode=self.nearest_mode, cubic_a=self.cubic_a,
                             antialias=self.antialias, exclude_outside=self.exclude_outside,
                             roi=rois[axis])
            result = self._resample(result, axis, plan)
        if X.is_floating_point():
            return result
        info = torch.iinfo(X.dtype)
        return result.clamp(info.min, info.max).to(X.dtype)

    def _targets(self, shape: torch.Size, axes: list[int], scales: list[float] | None,
                 sizes: list[float] | None) -> tuple[list[float], list[int]]:
        rank = len(shape)
        factors, out_sizes = [1.0] * rank, [int(n) for n in shape]
        if sizes is not None:
            for axis, size in zip(axes, sizes, strict=True):
                out_sizes[axis] = int(size)
                factors[axis] = int(size) / shape[axis]
            if self.policy != "stretch":
                pick = min if self.policy == "not_larger" else max
                scale = pick(factors[a] for a in axes)
                for axis in axes:
                    factors[axis] = scale
                    out_sizes[axis] = int(scale * shape[axis] + 0.5)
        elif scales is not None:
            for axis, scale in zip(axes, scales, strict=True):
                factors[axis] = float(scale)
                out_sizes[axis] = int(float(scale) * shape[axis])
        else:
            raise ValueError("Resize needs scales or sizes")
        return factors, out_sizes

    def _rois(self, roi: list[float] | None, axes: list[int],
              rank: int) -> list[tuple[float, float] | None]:
        rois: list[tuple[float, float] | None] = [None] * rank
        if roi is None or self.coordinates != "tf_crop_and_resize":
            return rois
        half = len(roi) // 2
        for i, axis in enumerate(axes if half == len(axes) else range(rank)):
            rois[axis] = (float(roi[i]), float(roi[half + i]))
        return rois

    def _resample(self, x: torch.Tensor, axis: int, plan: AxisPlan) -> torch.Tensor:
        out, taps = plan.weights.shape
        if self.mode == "nearest":  # one-hot weights: a plain gather
            chosen = plan.indices[np.arange(out), plan.weights.argmax(axis=1)]
            result = x.index_select(axis, torch.from_numpy(chosen).to(x.device))
        else:
            flat = torch.from_numpy(plan.indices.reshape(-1)).to(x.device)
            gathered = x.index_select(axis, flat)
            gathered = gathered.reshape(*x.shape[:axis], out, taps, *x.shape[axis + 1:])
            weights = torch.from_numpy(plan.weights).to(device=x.device, dtype=x.dtype)
            weights = weights.reshape(*(1,) * axis, out, taps, *(1,) * (x.dim() - axis - 1))
            result = (gathered * weights).sum(dim=axis + 1)
        if plan.extrapolated is not None and plan.extrapolated.any():
            mask = torch.from_numpy(plan.extrapolated).to(x.device)
            mask = mask.reshape(*(1,) * axis, out, *(1,) * (x.dim() - axis - 1))
            result = torch.where(mask, torch.full_like(result, self.extrapolation_value), result)
        return result


@converter("Resize", [11, 13], replaces=True)
@converter("Resize", [18, 19])
def convert_resize(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Resize with constant inputs baked in and computed ones fed to ``forward``."""
    names = {key: input_at(node, index) for index, key in enumerate(("", "roi", "scales",
                                                                      "sizes")) if index}
    constants: dict[str, list[float] | None] = {}
    inputs = [node.input_values[0]]
    for key, name in names.items():
        value = constant_tensor(name, graph)
        constants[key] = _values(value) if value is not None else None
        inputs.append(name if name and value is None else "")
    while inputs[-1] == "":
        inputs.pop()  # trailing omitted inputs are simply not passed
    module = OnnxResize(dict(node.attributes), constants)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, tuple(inputs)))
