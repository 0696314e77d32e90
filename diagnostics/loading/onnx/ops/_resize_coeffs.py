"""Source indices and weights of ONNX Resize along one axis (numpy, float64).

A port of the vectorized 1-D interpolation in onnx's reference implementation
(``onnx/reference/ops/op_resize.py``): for every output position, the ``n`` input positions it
reads (edge-clamped) and their weights. Resize is separable, so an N-D resize applies this once
per resized axis; the weights depend only on sizes and attributes, never on the data, so the
gradient of the resize is the transpose of this fixed linear map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisPlan:
    """How one axis is resized: ``out[j] = sum_k weights[j, k] * in[indices[j, k]]``.

    ``extrapolated[j]`` (tf_crop_and_resize only) marks outputs replaced by the
    extrapolation value.
    """

    indices: np.ndarray
    weights: np.ndarray
    extrapolated: np.ndarray | None


def _nearest(ratio: np.ndarray, mode: str) -> np.ndarray:
    up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
          "floor": np.zeros_like(ratio, dtype=bool), "ceil": np.ones_like(ratio, dtype=bool)}
    if mode not in up:
        raise NotImplementedError(f"Resize nearest_mode={mode!r}")
    right = np.where(ratio == 1.0, True, up[mode])  # an exact source pixel: take it
    return np.stack([~right, right], axis=1).astype(np.float64)


def _cubic(ratio: np.ndarray, a: float) -> np.ndarray:
    r, s = ratio, 1 - ratio
    return np.stack([
        ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
        ((a + 2) * r - (a + 3)) * r * r + 1,
        ((a + 2) * s - (a + 3)) * s * s + 1,
        ((a * (s + 1) - 5 * a) * (s + 1) + 8 * a) * (s + 1) - 4 * a,
    ], axis=1)


def _cubic_kernel(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _antialiased(ratio: np.ndarray, scale: float, cubic_a: float | None) -> np.ndarray:
    scale = min(scale, 1.0)
    if cubic_a is None:
        start = int(np.floor(-1 / scale) + 1)
        taps = np.arange(start, 2 - start)
        weights = np.clip(1 - np.abs((taps[None, :] - ratio[:, None]) * scale), 0, 1)
    else:
        start = int(np.floor(-2 / scale) + 1)
        taps = np.arange(start, 2 - start)
        weights = _cubic_kernel(scale * (taps[None, :] - ratio[:, None]), cubic_a)
    return weights / weights.sum(axis=1, keepdims=True)


def _source_positions(mode: str, out: np.ndarray, scale: float, size_in: int, size_out: int,
                      roi: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray | None]:
    width = scale * size_in
    if mode == "align_corners":
        x = np.zeros(size_out) if width == 1 else out * (size_in - 1) / (width - 1)
    elif mode == "asymmetric":
        x = out / scale
    elif mode == "tf_half_pixel_for_nn":
        x = (out + 0.5) / scale
    elif mode == "pytorch_half_pixel":
        x = np.full(size_out, -0.5) if width == 1 else (out + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (out + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = size_in / 2 * (1 - size_out / width)
        x = offset + (out + 0.5) / scale - 0.5
    elif mode == "tf_crop_and_resize":
        start, end = roi if roi is not None else (0.0, 1.0)
        if width == 1:
            x = np.full(size_out, (end - start) * (size_in - 1) / 2)
        else:
            x = out * (end - start) * (size_in - 1) / (width - 1)
        x = x + start * (size_in - 1)
        return x, (x < 0) | (x > size_in - 1)
    else:
        raise NotImplementedError(f"Resize coordinate_transformation_mode={mode!r}")
    return x, None


def plan_axis(size_in: int, size_out: int, scale: float, *, mode: str, coordinates: str,
              nearest_mode: str, cubic_a: float, antialias: bool, exclude_outside: bool,
              roi: tuple[float, float] | None = None) -> AxisPlan:
    """Indices and weights to resize one axis from ``size_in`` to ``size_out`` at ``scale``.

    Args:
        size_in: Input length of the axis.
        size_out: Output length.
        scale: The scale factor the standard uses for coordinates (``size_out / size_in`` when
            sizes were given).
        mode: ``nearest``, ``linear`` or ``cubic``.
        coordinates: The coordinate transformation mode.
        nearest_mode: Rounding for ``nearest``.
        cubic_a: The cubic coefficient ``A``.
        antialias: Widen linear/cubic filters when downsampling.
        exclude_outside: Zero and renormalize weights of taps outside the input.
        roi: ``(start, end)`` of this axis for ``tf_crop_and_resize``.

    Returns:
        The axis plan.
    """
    out = np.arange(size_out, dtype=np.float64)
    x, extrapolated = _source_positions(coordinates, out, scale, size_in, size_out, roi)
    floor = np.floor(x)
    ratio = np.where(x == floor, 1.0, x - floor)
    if mode == "nearest":
        weights = _nearest(ratio, nearest_mode)
    elif antialias and mode in ("linear", "cubic"):
        weights = _antialiased(ratio, scale, cubic_a if mode == "cubic" else None)
    elif mode == "linear":
        weights = np.stack([1 - ratio, ratio], axis=1)
    elif mode == "cubic":
        weights = _cubic(ratio, cubic_a)
    else:
        raise NotImplementedError(f"Resize mode={mode!r}")
    taps = weights.shape[1]
    # the `taps` neighbours nearest to x in edge-padded coordinates, ties to the left
    pad = int(np.ceil(taps / 2))
    padded = x + pad
    base = np.floor(padded).astype(np.int64)
    frac = padded - base
    if taps % 2 == 0:
        offset = np.where(frac == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    indices = (base + offset)[:, None] + np.arange(taps)[None, :] - pad
    if exclude_outside:
        weights = np.where((indices < 0) | (indices >= size_in), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return AxisPlan(np.clip(indices, 0, size_in - 1), weights, extrapolated)
