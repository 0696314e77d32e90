"""Export small torch modules to ONNX bytes and measure gradients, for loader tests.

Everything stays in memory: no files, no downloads, random weights.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from diagnostics.model import LoadedModel


def export_legacy(module: nn.Module, args: tuple[torch.Tensor, ...], *, opset: int = 17,
                  do_constant_folding: bool = True, input_names: Sequence[str] | None = None,
                  output_names: Sequence[str] | None = None,
                  dynamic_axes: Mapping[str, Mapping[int, str]] | None = None) -> bytes:
    """``torch.onnx.export(dynamo=False)`` (the TorchScript exporter) to bytes, in eval mode."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter is deprecated and says so
        torch.onnx.export(
            module, args, buffer, dynamo=False, opset_version=opset,
            do_constant_folding=do_constant_folding,
            input_names=list(input_names) if input_names else None,
            output_names=list(output_names) if output_names else None,
            dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()}
            if dynamic_axes else None,
        )
    return buffer.getvalue()


def export_dynamo(module: nn.Module, args: tuple[torch.Tensor, ...], *, opset: int | None = None,
                  optimize: bool = True, input_names: Sequence[str] | None = None,
                  dynamic_shapes: Sequence[Mapping[int, object] | None] | None = None) -> bytes:
    """``torch.onnx.export(dynamo=True)`` to bytes (progress messages silenced).

    ``opset=None`` takes the exporter's default (20 with torch 2.14); ``optimize=False`` keeps
    BatchNorm and weight names (the optimizer folds them into renamed copies).
    ``dynamic_shapes`` has one ``{axis: torch.export.Dim}`` (or None) per positional argument.
    """
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                    optimize=optimize, verbose=False,
                                    input_names=list(input_names) if input_names else None,
                                    dynamic_shapes=tuple(dynamic_shapes) if dynamic_shapes
                                    else None)
    return program.model_proto.SerializeToString()


def mean_square(outputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The default probe loss: sum over float outputs of mean(y²)."""
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return sum(out.float().pow(2).mean() for out in outputs if out.is_floating_point())


def native_grad_norms(module: nn.Module, args: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """‖param.grad‖ of the native module under :func:`mean_square`, by every name a parameter
    has (tied parameters appear under each of their names)."""
    module.zero_grad(set_to_none=True)
    mean_square(module(*args)).backward()
    return {name: _norm(param.grad)
            for name, param in module.named_parameters(remove_duplicate=False)}


def loaded_grad_norms(loaded: LoadedModel, args: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """‖grad‖ of each of ``loaded.parameters`` under :func:`mean_square`, by display name."""
    for param in loaded.parameters.values():
        param.grad = None
    mean_square(loaded.module(*args)).backward()
    return {name: _norm(param.grad) for name, param in loaded.parameters.items()}


def _norm(grad: torch.Tensor | None) -> float:
    return 0.0 if grad is None else float(grad.double().norm())
