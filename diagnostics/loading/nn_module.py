"""A live ``torch.nn.Module`` -> :class:`LoadedModel`, with no export step.

The caller's module is deep-copied first and never touched: the probe switches modes, sets
``requires_grad``, registers hooks and (with batch statistics) runs BatchNorm in training mode on
the copy only. On the copy, in-place activations (``ReLU(inplace=True)``) are switched to their
out-of-place twins, which compute the same values: an in-place op would overwrite the tensor the
probe summarizes. A repaired module gets the flags back (:func:`restore_inplace`).

The traced pass that finds the layers, their names and depths is :mod:`.module_calls`.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diagnostics.errors import InvalidInputsError, ModelLoadError, ResourceLimitError
from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.loading.module_calls import ModuleCall, trace_calls, watched_layers
from diagnostics.model import InputSpec, LoadedModel, SourceInfo

ModuleInputs = torch.Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]


@dataclass(frozen=True)
class _Inputs:
    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]
    keywords: bool
    constants: dict[str, Any]


def load_module(module: nn.Module, inputs: ModuleInputs, *,
                limits: Limits = DEFAULT_LIMITS) -> tuple[LoadedModel, tuple[torch.Tensor, ...]]:
    """Wrap a deep copy of ``module`` as a model ready to probe.

    Args:
        module: Any ``torch.nn.Module``; it is copied, never modified.
        inputs: A tensor, a tuple/list of tensors (positional arguments), or a mapping of keyword
            arguments (tensors become model inputs, other values are passed unchanged).
        limits: Size budgets (parameters, input elements).

    Returns:
        The loaded model (``source.kind == "module"``) and the input tensors in input order.

    Raises:
        ModelLoadError: A TorchScript module (it takes no Python hooks).
        InvalidInputsError: Inputs that are not tensors, or that the module's forward rejects.
        ResourceLimitError: Over ``limits.max_parameters`` or ``limits.max_input_elements``.
    """
    if isinstance(module, torch.jit.ScriptModule):
        raise ModelLoadError("TorchScript modules take no Python hooks: pass the Python module "
                             "(before torch.jit.script/trace), or export it to ONNX")
    given = _split_inputs(module, inputs)
    _check_budgets(module, given.tensors, limits)
    memo: dict[int, Any] = {}
    copied = copy.deepcopy(module, memo)
    wrapper = ModuleCall(copied, given.names, given.keywords, given.constants)
    wrapper.inplace_paths = _disable_inplace(wrapper)
    calls = trace_calls(wrapper, given.tensors)
    layers, parameters, unused = watched_layers(wrapper, calls)
    notes = []
    if unused:
        notes.append(f"{len(unused)} parameter(s) take no part in the forward pass on these "
                     f"inputs and are not reported: {', '.join(unused[:5])}"
                     + (" ..." if len(unused) > 5 else ""))
    loaded = LoadedModel(
        module=wrapper,
        inputs=tuple(InputSpec(name, tuple(int(d) for d in tensor.shape), _dtype_name(tensor))
                     for name, tensor in zip(given.names, given.tensors, strict=True)),
        output_names=("output",),
        layers=layers,
        parameters=parameters,
        source=SourceInfo(kind="module", sha256=module_sha256(module),
                          name=type(module).__name__),
        notes=tuple(notes),
    )
    return loaded, given.tensors


def unwrap(model: LoadedModel) -> nn.Module:
    """The caller-shaped module inside a loaded module model (for repaired copies)."""
    wrapper = model.module
    if not isinstance(wrapper, ModuleCall):
        raise TypeError("not a model loaded from an nn.Module")
    restore_inplace(wrapper)
    return wrapper.model


def restore_inplace(wrapper: ModuleCall) -> None:
    """Give in-place activations back the ``inplace=True`` the caller's module had."""
    for path in wrapper.inplace_paths:
        # torch types Module.__setattr__ for tensors and modules only; any value is accepted.
        wrapper.get_submodule(path).inplace = True  # type: ignore[assignment]


def module_sha256(module: nn.Module) -> str:
    """SHA-256 of the class name and every ``state_dict`` entry (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def _split_inputs(module: nn.Module, inputs: ModuleInputs) -> _Inputs:
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, Mapping):
        tensors = {str(k): v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise InvalidInputsError("inputs for an nn.Module holds no tensor")
        constants = {str(k): v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
        return _Inputs(tuple(tensors), tuple(tensors.values()), True, constants)
    if not isinstance(inputs, (tuple, list)) or not inputs:
        raise InvalidInputsError(
            "inputs for an nn.Module must be a tensor, a tuple of tensors (positional arguments) "
            f"or a dict of keyword arguments, not {type(inputs).__name__}")
    for position, value in enumerate(inputs):
        if not isinstance(value, torch.Tensor):
            raise InvalidInputsError(
                f"positional input {position} is a {type(value).__name__}, not a tensor; pass "
                "non-tensor arguments by keyword in a dict", input_name=str(position))
    return _Inputs(_positional_names(module, len(inputs)), tuple(inputs), False, {})


def _positional_names(module: nn.Module, count: int) -> tuple[str, ...]:
    """The forward signature's parameter names where it has enough of them, else input_<i>."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = [p.name for p in parameters
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= count:
        return tuple(positional[:count])
    return tuple("input" if count == 1 else f"input_{i}" for i in range(count))


def _check_budgets(module: nn.Module, tensors: tuple[torch.Tensor, ...], limits: Limits) -> None:
    size = sum(param.numel() for param in module.parameters())
    if size > limits.max_parameters:
        raise ResourceLimitError(
            f"the module has {size:,} parameter elements, over the limit of "
            f"{limits.max_parameters:,}", limit="max_parameters", value=limits.max_parameters)
    total = sum(tensor.numel() for tensor in tensors)
    if total > limits.max_input_elements:
        raise ResourceLimitError(
            f"inputs have {total:,} elements, over the limit of {limits.max_input_elements:,}",
            limit="max_input_elements", value=limits.max_input_elements)


def _disable_inplace(wrapper: ModuleCall) -> tuple[str, ...]:
    paths = []
    for path, sub in wrapper.named_modules():
        if getattr(sub, "inplace", False) is True:
            sub.inplace = False
            paths.append(path)
    return tuple(paths)


def _dtype_name(tensor: torch.Tensor) -> str:
    if tensor.dtype == torch.bfloat16:
        return "bfloat16"
    return str(tensor.dtype).removeprefix("torch.")
