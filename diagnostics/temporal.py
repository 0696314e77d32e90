"""The temporal profile of a recurrent model: how far back in time the gradient reaches.

For the first recurrent layer (RNN, LSTM, GRU) we take ‖∂L/∂x_t‖ for every time step t of its
input sequence, with the loss on the last step's output only. A healthy memory keeps that norm
within a factor of the vanishing ratio over the sequence; the number of steps back it stays
above that factor is the effective horizon (docs/guide/faq.md §My LSTM is flagged
temporal_vanishing but trains: gated cells at torch's default init decay too, so this is reported
for every recurrent model, not judged on the cell type).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from diagnostics.config import DiagnosisConfig, Thresholds
from diagnostics.inputs import SampleBatch
from diagnostics.model import LoadedModel
from diagnostics.probe import compute_loss, float_tensors
from diagnostics.report import Status, TemporalProfile
from diagnostics.stats import profile_ratio

RECURRENT_OPS = frozenset({"RNN", "LSTM", "GRU"})
_UNGATED_OPS = frozenset({"RNN"})


@dataclass(frozen=True)
class TemporalTarget:
    layer: str
    module_path: str
    time_axis: int
    argument: int = 0  # which forward argument (or, with ``on_output``, output) is the sequence
    on_output: bool = False  # the sequence is an output of ``module_path``, not an argument
    ungated: bool = False  # a vanilla cell: nothing gates its state from step to step
    per_call: bool = False  # a cell called once per step (a Python loop): one step per call


PER_CALL_AXIS = -1  # the reported time axis of a cell called once per step
_CELLS = {"RNNCell": True, "LSTMCell": False, "GRUCell": False}  # class -> ungated


@runtime_checkable
class _SequenceLoop(Protocol):
    """A loop module that reads a sequence one step per iteration (``loading/ops/loop.py``)."""

    sequence_argument: int | None
    layout: int  # the sequence's time axis


@dataclass
class _Captured:
    length: int = 0
    norms: list[float] | None = None


def find_target(model: LoadedModel) -> TemporalTarget | None:
    """The first recurrent layer and the time axis of its input, or None.

    Recurrent layers are RNN/LSTM/GRU nodes and modules, loops that read a sequence one
    step per iteration (tf2onnx's Keras GRU: a ``Loop`` whose module names the argument in
    ``sequence_argument``), recurrences the exporter unrolled step by step
    (``LoadedModel.unrolled_recurrence``), when no node comes first, and torch cells
    (``nn.RNNCell``/``LSTMCell``/``GRUCell``) a live module calls once per step.
    """
    for layer in model.layers:
        module = model.module.get_submodule(layer.module_path)
        if layer.op_type in _CELLS and isinstance(module, nn.RNNCellBase):
            return TemporalTarget(layer.name, layer.module_path, PER_CALL_AXIS,
                                  ungated=_CELLS[layer.op_type], per_call=True)
        if layer.op_type in RECURRENT_OPS:
            batch_first = bool(getattr(module, "batch_first", False)) or \
                getattr(module, "layout", 0) == 1
            return TemporalTarget(layer.name, layer.module_path, 1 if batch_first else 0,
                                  ungated=layer.op_type in _UNGATED_OPS)
        if isinstance(module, _SequenceLoop) and module.sequence_argument is not None:
            return TemporalTarget(layer.name, layer.module_path, int(module.layout),
                                  module.sequence_argument)
    unrolled = model.unrolled_recurrence
    if unrolled is None:
        return None
    if not unrolled.module_path:
        return TemporalTarget(model.inputs[unrolled.output].name, "", unrolled.time_axis,
                              unrolled.output, ungated=not unrolled.gated)
    return TemporalTarget(unrolled.value, unrolled.module_path, unrolled.time_axis,
                          unrolled.output, on_output=True, ungated=not unrolled.gated)


@contextmanager
def _watching(module: nn.Module, target: TemporalTarget,
              seen: Callable[[torch.Tensor], torch.Tensor | None],
              new_pass: Callable[[], None] | None = None) -> Iterator[None]:
    """Call ``seen`` on the sequence tensor at every forward pass of ``module`` in the block
    (for a per-call cell: on each step's input, in order; ``new_pass`` is called when a pass of
    ``module`` begins); a tensor it returns replaces the sequence (to make it require grad)."""
    watched = module.get_submodule(target.module_path)
    starts = module.register_forward_pre_hook(lambda *_: new_pass()) if new_pass else None
    index = target.argument

    def pre_hook(_module: nn.Module, args: tuple) -> tuple | None:
        replaced = seen(args[index])
        return None if replaced is None else (*args[:index], replaced, *args[index + 1:])

    def post_hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return seen(output)
        outputs = list(output)
        replaced = seen(outputs[index])
        if replaced is None:
            return None
        outputs[index] = replaced
        return type(output)(outputs)

    handle = (watched.register_forward_hook(post_hook) if target.on_output
              else watched.register_forward_pre_hook(pre_hook))
    try:
        yield
    finally:
        handle.remove()
        if starts is not None:
            starts.remove()


def step_norms(model: LoadedModel, batch: SampleBatch, config: DiagnosisConfig,
               target: TemporalTarget) -> list[float] | None:
    """‖∂L/∂x_t‖ (float64) per time step of the recurrent layer's input, loss on the last step.

    Call inside :func:`diagnostics.probe.probe_mode`. Returns None when the sequence has fewer
    than two steps or no gradient reaches it.
    """
    captured = _Captured()
    per_step: dict[int, float] = {}

    def record(grad: torch.Tensor) -> None:
        steps = grad.detach().movedim(target.time_axis, 0)
        wide = steps.reshape(steps.shape[0], -1).to(torch.float64)
        captured.norms = [float(v) for v in torch.linalg.vector_norm(wide, dim=1)]

    def seen(x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        if target.per_call:
            step = captured.length
            captured.length += 1
            x.register_hook(lambda grad: per_step.__setitem__(
                step, float(torch.linalg.vector_norm(grad.detach().to(torch.float64)))))
            return x
        captured.length = int(x.shape[target.time_axis])
        x.register_hook(record)
        return x

    try:
        with _watching(model.module, target, seen):
            outputs = model.module(*batch.tensors)
        length = captured.length
        if length < 2:
            return None
        loss = compute_loss(_last_step(outputs, length, target.time_axis), config.loss, batch.seed)
        if loss.requires_grad:
            loss.backward()
    finally:
        for param in model.parameters.values():
            param.grad = None
    if target.per_call:  # a step the loss does not read gets no gradient: 0, not missing
        return [per_step.get(step, 0.0) for step in range(captured.length)]
    return captured.norms


OutputsView = Callable[[object], object]


@contextmanager
def last_step_view(module: nn.Module,
                   target: TemporalTarget | None) -> Iterator[OutputsView | None]:
    """What a loss on the last step alone reads of ``module``'s outputs (``sequence_loss``
    'last_step'): a function from outputs to their last step, valid for every forward pass of
    ``module`` inside the block; None when there is no recurrent ``target``.

    The sequence length is taken at the recurrent layer's input on each pass, because that is
    where the time axis is known (see :func:`_last_step`).
    """
    if target is None:
        yield None
        return
    length = [0]

    def seen(x: torch.Tensor) -> None:
        length[0] = length[0] + 1 if target.per_call else int(x.shape[target.time_axis])

    def new_pass() -> None:
        length[0] = 0

    with _watching(module, target, seen, new_pass if target.per_call else None):
        yield lambda outputs: _last_step(outputs, length[0], target.time_axis) \
            if length[0] > 1 else outputs


def _last_step(outputs: object, length: int, axis: int) -> list[torch.Tensor]:
    # Outputs that still carry the time axis are cut to their last step; the others (a
    # classifier on the final state) already are "the last step's output".
    # An exported batch-first model runs a time-major recurrent node between Transposes, so an
    # output's time axis need not be the node's: take the one axis of the sequence's length.
    selected = []
    for tensor in float_tensors(outputs):
        if 0 <= axis < tensor.dim() and tensor.shape[axis] == length:
            selected.append(tensor.select(axis, length - 1))
            continue
        matching = [dim for dim in range(tensor.dim()) if tensor.shape[dim] == length]
        selected.append(tensor.select(matching[0], length - 1) if len(matching) == 1 else tensor)
    return selected


def profile(target: TemporalTarget, per_sample: list[list[float]],
            thresholds: Thresholds) -> TemporalProfile:
    """Median over samples per step, with the decay rate, effective horizon and status."""
    length = min(len(norms) for norms in per_sample)
    medians = [statistics.median(norms[t] for norms in per_sample) for t in range(length)]
    last = medians[-1]
    ratio = profile_ratio(medians[0], last)
    if ratio < thresholds.vanishing_ratio:
        status = Status.VANISHING
    elif ratio > thresholds.exploding_ratio:
        status = Status.EXPLODING
    else:
        status = Status.HEALTHY
    return TemporalProfile(
        input=target.layer,
        axis=target.time_axis,
        grad_norms=[v if math.isfinite(v) else None for v in medians],
        decay_per_step=_decay_per_step(medians),
        effective_horizon=_horizon(medians, thresholds.vanishing_ratio),
        first_to_last_ratio=ratio if math.isfinite(ratio) else None,
        status=status,
    )


def _decay_per_step(norms: list[float]) -> float | None:
    # Least-squares slope of log‖∂L/∂x_t‖ over t; going one step back multiplies by exp(-slope).
    points = [(t, math.log(v)) for t, v in enumerate(norms) if v > 0 and math.isfinite(v)]
    if len(points) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (y - mean_y) for t, y in points) / spread
    return math.exp(-slope)


def _horizon(norms: list[float], floor: float) -> int:
    """Steps back from the last for which the gradient stays above ``floor`` × its last value."""
    last = norms[-1]
    for back, value in enumerate(reversed(norms)):
        if not (value >= floor * last):
            return back
    return len(norms)


def describe(profile: TemporalProfile) -> str:
    """One sentence on a temporal profile: the first-to-last ratio, decay and horizon."""
    ratio = profile.first_to_last_ratio
    decay = profile.decay_per_step
    return (f"Through time the gradient reaching the first of {len(profile.grad_norms)} steps is "
            f"{'an unbounded multiple of' if ratio is None else f'{ratio:.3g}×'} that at the last"
            f"{'' if decay is None else f' ({decay:.3g}× per step back)'}; the effective horizon "
            f"is {profile.effective_horizon} steps.")
