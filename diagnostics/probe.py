"""One forward+backward pass with hooks in, statistics taken as tensors pass, hooks always out.

Forward hooks summarize each watched layer's output and attach a tensor hook that summarizes the
gradient arriving at it, keeping neither. Post-accumulate hooks take each parameter's gradient
once autograd has summed it over every use, summarize it and drop it, so the pass never holds
every gradient at once: on a large model that decides whether it fits in memory (GPT-2 large:
weights plus all gradients is 2x the weights before anything else), and a pass holds less than
a plain forward+backward that keeps its gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from diagnostics.config import DiagnosisConfig, Loss, NormStats
from diagnostics.errors import DiagnosticsError, OutOfMemoryError, ProbeError
from diagnostics.inputs import SampleBatch
from diagnostics.model import LoadedModel
from diagnostics.scale_invariance import scale_invariant
from diagnostics.stats import (
    ActivationSummary,
    GradSummary,
    l2_norm,
    nonfinite_count,
    summarize_activation,
    summarize_grad,
)


@dataclass
class LayerObservation:
    """What one sample showed at one watched layer."""

    activation: ActivationSummary | None = None
    grad_sum_squares: float = 0.0
    grad_nonfinite: int = 0
    grad_seen: bool = False

    @property
    def output_grad_norm(self) -> float | None:
        if not self.grad_seen:
            return None
        total = self.grad_sum_squares
        return math.sqrt(total) if math.isfinite(total) else math.nan


@dataclass
class SampleObservation:
    """Everything one forward+backward pass measured."""

    seed: int
    loss: float
    layers: list[LayerObservation]
    parameters: dict[str, GradSummary]
    first_nonfinite_forward: str | None = None
    first_nonfinite_backward: str | None = None
    nonfinite_inputs: list[str] = field(default_factory=list)
    scale_invariant: frozenset[int] | None = None


@contextmanager
def probe_mode(module: nn.Module, norm_stats: NormStats) -> Iterator[None]:
    """Put ``module`` in the probe's mode and restore everything on exit, even on error.

    Dropout is always off (deterministic passes). With ``norm_stats=batch`` batch-norm layers
    use the batch's statistics as in training, and their running statistics are restored after.
    A batch-norm layer that sees one value per channel (a file exported at batch 1 whose map is
    down to 1×1, as SSDlite's extra layers) has no batch statistics: that call uses the running
    ones, as training with more than one image would approximate, instead of failing.
    """
    modes = {sub: sub.training for sub in module.modules()}
    requires_grad = {param: param.requires_grad for param in module.parameters()}
    saved_buffers: dict[nn.Module, dict[str, torch.Tensor]] = {}
    handles = []
    try:
        module.eval()
        if norm_stats is NormStats.BATCH:
            for sub in module.modules():
                if isinstance(sub, _BatchNorm):
                    saved_buffers[sub] = {n: b.clone() for n, b in sub.named_buffers(recurse=False)}
                    sub.train()
                    handles.append(sub.register_forward_pre_hook(_one_value_per_channel))
                    handles.append(sub.register_forward_hook(_back_to_batch_statistics))
        for param in requires_grad:
            param.requires_grad_(True)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for sub, was_training in modes.items():
            sub.training = was_training
        for param, flag in requires_grad.items():
            param.requires_grad_(flag)
        for sub, buffers in saved_buffers.items():
            with torch.no_grad():
                for name, value in buffers.items():
                    getattr(sub, name).copy_(value)


def _one_value_per_channel(sub: nn.Module, args: tuple) -> None:
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.numel() <= x.shape[1]:
        sub.training = False


def _back_to_batch_statistics(sub: nn.Module, _args: tuple, _output: object) -> None:
    sub.training = True


def run_sample(model: LoadedModel, batch: SampleBatch,  # noqa: C901
               config: DiagnosisConfig,
               loss_reads: Callable[[object], object] | None = None, *,
               trace_invariance: bool = False) -> SampleObservation:
    """Run one forward+backward pass on ``batch`` and collect the statistics.

    Args:
        model: The loaded model; call inside :func:`probe_mode`.
        batch: Inputs in the model's input order.
        config: Loss, thresholds.
        loss_reads: What of the outputs the loss reads (default: all of them), e.g. the last
            time step (:func:`diagnostics.temporal.last_step_view`).
        trace_invariance: Also find the layers whose output reaches the loss only through a
            normalization (:mod:`diagnostics.scale_invariance`), from this pass's graph; the
            graph is the same in every sample, so the examination asks once.

    Raises:
        ProbeError: The forward or backward pass raised (shape mismatch, bad ids ...).
    """
    thresholds = config.thresholds
    observations = [LayerObservation() for _ in model.layers]
    observed = SampleObservation(batch.seed, math.nan, observations, {})
    observed.nonfinite_inputs = [model.inputs[i].name for i in batch.nonfinite_inputs]
    last_entered: list[str] = []
    handles: list[torch.utils.hooks.RemovableHandle] = []
    output_nodes: dict[int, object] = {}

    def forward_hook(index: int):
        layer = model.layers[index]
        bounds = _hardtanh_bounds(model.module.get_submodule(layer.module_path))

        def hook(_module: nn.Module, _args: object, output: object) -> None:
            tensor = _first_float_tensor(output)
            if tensor is None:
                return
            if observations[index].activation is None:
                summary = summarize_activation(
                    tensor, layer.activation,
                    saturation_derivative=thresholds.saturation_derivative, bounds=bounds)
                observations[index].activation = summary
                if summary.nonfinite_count and observed.first_nonfinite_forward is None:
                    observed.first_nonfinite_forward = layer.name
            if tensor.requires_grad:
                tensor.register_hook(grad_hook(index))
                if trace_invariance and tensor.grad_fn is not None:
                    output_nodes.setdefault(index, tensor.grad_fn)

        return hook

    def grad_hook(index: int):
        def hook(grad: torch.Tensor) -> None:
            norm = l2_norm(grad)
            obs = observations[index]
            obs.grad_seen = True
            obs.grad_sum_squares += norm * norm
            if not math.isfinite(norm):
                obs.grad_nonfinite += nonfinite_count(grad)
                if observed.first_nonfinite_backward is None:
                    observed.first_nonfinite_backward = model.layers[index].name

        return hook

    def param_hook(name: str):
        def hook(param: torch.Tensor) -> None:
            # Summarized inside the backward pass and dropped at once: the summary reads the
            # gradient once, block by block, while it is still in the cache (after the pass,
            # with every gradient held, measured no faster on ResNet-18 and 15 % slower on a
            # deep MLP).
            grad = param.grad
            param.grad = None
            if grad is None:  # torch fills .grad before this hook runs; nothing to summarize
                return
            observed.parameters[name] = summarize_grad(
                grad, fp16_normal_min=thresholds.fp16_normal_min)

        return hook

    def pre_hook(name: str):
        def hook(_module: nn.Module, _args: object) -> None:
            last_entered.append(name)

        return hook

    inputs = batch.tensors
    try:
        for index, layer in enumerate(model.layers):
            submodule = model.module.get_submodule(layer.module_path)
            handles.append(submodule.register_forward_hook(forward_hook(index)))
            handles.append(submodule.register_forward_pre_hook(pre_hook(layer.name)))
        for name, param in model.parameters.items():
            param.grad = None
            handles.append(param.register_post_accumulate_grad_hook(param_hook(name)))
        try:
            outputs = model.module(*inputs)
        except Exception as exc:
            raise _probe_error("forward", exc, last_entered) from exc
        loss = compute_loss(outputs if loss_reads is None else loss_reads(outputs),
                            config.loss, batch.seed)
        observed.loss = float(loss.detach())
        if trace_invariance:
            observed.scale_invariant = scale_invariant(loss.grad_fn, output_nodes)
        output_nodes.clear()
        if loss.requires_grad:
            try:
                loss.backward()
            except Exception as exc:
                raise _probe_error("backward", exc, last_entered) from exc
    finally:
        for handle in handles:
            handle.remove()
        for param in model.parameters.values():
            param.grad = None
    return observed


def compute_loss(outputs: object, loss: Loss, seed: int) -> torch.Tensor:
    """The scalar to differentiate, computed in float64 so huge outputs do not overflow it.

    Raises:
        ProbeError: The model has no float output to differentiate, or every one is empty.
    """
    tensors = list(float_tensors(outputs))
    if not tensors:
        raise ProbeError("the model has no floating-point output to take a gradient of")
    # An empty output (a detector that kept no boxes) reads nothing: its mean would be 0/0.
    tensors = [tensor for tensor in tensors if tensor.numel()]
    if not tensors:
        raise ProbeError(
            "every floating-point output is empty on the sample inputs (a detector that keeps "
            "no boxes above its score threshold at random weights, for instance): no gradient "
            "reaches the model; give inputs for which it returns values, or export the "
            "outputs before post-processing (the heads' raw scores and box regressions)")
    total = torch.zeros((), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed + 7919)
    for tensor in tensors:
        wide = tensor.to(torch.float64)
        if loss is Loss.RANDOM_PROJECTION:
            total = total + _random_projection(wide, generator)
        elif loss is Loss.MEAN_SQUARE:
            total = total + wide.pow(2).mean()
        elif loss is Loss.SUM:
            total = total + wide.sum()
        else:
            logits = wide.reshape(-1, wide.shape[-1]) if wide.dim() > 0 else wide.reshape(1, 1)
            labels = torch.randint(0, logits.shape[-1], (logits.shape[0],), generator=generator)
            total = total + nn.functional.cross_entropy(logits, labels)
    return total


def _random_projection(output: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Batch mean of <y_b, r_b>, |r_b| ~ 1: the gradient at each sample's output is a random
    # direction of the size a mean-reduced training loss gives (≈ 1/batch per sample), and it
    # does not depend on y, so no normalization of the output can make the loss constant.
    batch = output.shape[0] if output.dim() > 1 else 1
    per_sample = max(output.numel() // max(batch, 1), 1)
    direction = torch.randn(output.shape, generator=generator, dtype=torch.float64).to(
        output.device)
    return (output * direction).sum() / (batch * math.sqrt(per_sample))


def float_tensors(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from float_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from float_tensors(item)


def _first_float_tensor(value: object) -> torch.Tensor | None:
    return next(float_tensors(value), None)


def _hardtanh_bounds(module: nn.Module) -> tuple[float, float] | None:
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    return None


# How allocators word an allocation failure (torch raises RuntimeError, not MemoryError).
_OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "defaultcpuallocator",
                  "cannot allocate memory")


def _probe_error(phase: str, exc: Exception, last_entered: list[str]) -> DiagnosticsError:
    node = last_entered[-1] if last_entered else None
    where = f" at or after layer {node!r}" if node else ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, MemoryError) or any(text in message.lower() for text in _OUT_OF_MEMORY):
        return OutOfMemoryError(f"the {phase} pass ran out of memory{where}: {message}",
                                node=node)
    return ProbeError(f"the {phase} pass failed{where}: {message}", node=node)
