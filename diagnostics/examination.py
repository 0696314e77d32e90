"""One examination of a model on a set of batches: probe -> statistics -> verdict (+ temporal).

The diagnosis runs it once; verification runs it again on each remedied copy with the same
batches, so "before" and "after" are measured the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from diagnostics import temporal
from diagnostics.aggregate import build_layer_reports
from diagnostics.anatomy import readout_indices, weight_names
from diagnostics.config import DiagnosisConfig, SequenceLoss
from diagnostics.inputs import SampleBatch
from diagnostics.model import LoadedModel
from diagnostics.precision import float64_rounding_ratio
from diagnostics.probe import SampleObservation, probe_mode, run_sample
from diagnostics.report import Flag, LayerReport, Status, TemporalProfile, Verdict
from diagnostics.scales import fan_in
from diagnostics.verdict import judge, rounding_step
from diagnostics.verdict_rules import Facts

Progress = Callable[[str], None]

# Cells without gates: their memory is a product of Jacobians with nothing to keep it open.
@dataclass
class Examination:
    observations: list[SampleObservation]
    layers: list[LayerReport]
    verdict: Verdict
    sample_statuses: list[Status]
    temporal: list[TemporalProfile] = field(default_factory=list)
    probe_s: float = 0.0
    verdict_s: float = 0.0


def examine(model: LoadedModel, batches: list[SampleBatch], config: DiagnosisConfig,
            progress: Progress | None = None) -> Examination:
    """Probe every batch, summarize, judge, and profile recurrent memory over time.

    With ``sequence_loss`` 'last_step' the probe's loss reads the recurrent model's last output
    step alone, as the user's training loss does, so every statistic is the one that loss gives.

    The temporal profile is reported and flagged (``temporal_vanishing`` /
    ``temporal_exploding``); it sets the status for ungated cells whose horizon is far shorter
    than the sequence, and for gated ones only when SGD trains them on the last step alone
    (``sequence_loss``): with a loss at every step they learn to remember.
    """
    say = progress or (lambda _message: None)
    clock = time.perf_counter()
    observations = []
    profiles: list[TemporalProfile] = []
    target = temporal.find_target(model)
    last_step_of = target if config.sequence_loss is SequenceLoss.LAST_STEP else None
    zero_heads = _zero_readouts(model)
    with probe_mode(model.module, config.norm_stats), \
            _substitute_readouts(model, zero_heads, config.seed):
        with temporal.last_step_view(model.module, last_step_of) as loss_reads:
            for number, batch in enumerate(batches, 1):
                say(f"probing sample {number}/{len(batches)}")
                observations.append(run_sample(model, batch, config, loss_reads,
                                               trace_invariance=number == 1))
        if target is not None:
            say("measuring the temporal profile")
            norms = [temporal.step_norms(model, batch, config, target) for batch in batches]
            measured = [n for n in norms if n]
            if len(measured) == len(norms):
                profiles.append(temporal.profile(target, measured, config.thresholds))
    probe_s = time.perf_counter() - clock

    clock = time.perf_counter()
    layers = build_layer_reports(model, observations, config.thresholds)
    facts = Facts(
        input_rms=tuple(_input_rms(batch) for batch in batches),
        substituted_readouts=tuple(model.layers[i].name for i in zero_heads),
        temporal=tuple(profiles),
        ungated=target is not None and target.ungated,
        scale_invariant=observations[0].scale_invariant or frozenset() if observations
        else frozenset(),
    )
    step = rounding_step(layers)
    if step is not None and 0 < step[1] < config.thresholds.rounding_ratio:
        say("re-measuring the output layer's gradient in float64")
        facts = replace(facts, float64_ratio=float64_rounding_ratio(model, batches[0], config,
                                                               last_step_of))
    verdict, statuses = judge(model, layers, observations, config, facts)
    for found in profiles:
        flag = {Status.VANISHING: Flag.TEMPORAL_VANISHING,
                Status.EXPLODING: Flag.TEMPORAL_EXPLODING}.get(found.status)
        if flag is not None and flag not in verdict.flags:
            verdict.flags.append(flag)
            verdict.summary += f" {temporal.describe(found)}"
    return Examination(observations, layers, verdict, statuses, profiles, probe_s,
                       time.perf_counter() - clock)


def _input_rms(batch: SampleBatch) -> float | None:
    floats = [t for t in batch.tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return None
    total = sum(float(t.detach().double().pow(2).sum()) for t in floats)
    count = sum(t.numel() for t in floats)
    rms = math.sqrt(total / count)
    return rms if math.isfinite(rms) and rms > 0 else None


def _zero_readouts(model: LoadedModel) -> list[int]:
    """Readouts whose weights are all exactly zero (zero-initialized heads)."""
    found = []
    for index in readout_indices(model):
        weights = [model.parameters[name] for name in weight_names(model, index)]
        if weights and all(not bool(w.detach().any()) for w in weights):
            found.append(index)
    return found


@contextmanager
def _substitute_readouts(model: LoadedModel, indices: list[int], seed: int) -> Iterator[None]:
    """Give zero heads a seeded fan-in initialization for the probe; restore them after.

    A zero head passes no gradient to the body, so the body's profile would be 0/0. Its own
    gradient (outer product of the signal at the outputs and the features) does not depend on
    its weights, and it moves in the first step; the body is then judged as it will be.
    """
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    generator = torch.Generator().manual_seed(seed + 104729)
    try:
        with torch.no_grad():
            for index in indices:
                layer = model.layers[index]
                for name in weight_names(model, index):
                    param = model.parameters[name]
                    fans = fan_in(model, layer, param) or 1
                    saved.append((param, param.detach().clone()))
                    noise = torch.randn(param.shape, generator=generator) / math.sqrt(fans)
                    param.copy_(noise.to(param.device, param.dtype))
        yield
    finally:
        with torch.no_grad():
            for param, value in saved:
                param.copy_(value)
