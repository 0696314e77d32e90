"""Remedies for recurrent nets whose gradient does not reach far enough back in time: gated
cells, chrono initialization of the gates, truncated backpropagation through time.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from diagnostics import temporal
from diagnostics.inputs import SampleBatch
from diagnostics.model import LoadedModel
from diagnostics.remedies import edits, spec_edits
from diagnostics.remedies.candidates import ONNX_STRUCTURE_NOTE, Candidate, Context
from diagnostics.report import Remedy, Status


def temporal_trouble(context: Context):
    found = context.found.temporal
    return found[0] if found and found[0].status is Status.VANISHING else None


def gated_cells(context: Context) -> Candidate | None:
    profile = temporal_trouble(context)
    vanilla = [layer.name for layer in context.model.layers
               if layer.op_type in ("RNN", "RNNCell")]
    unrolled = context.model.unrolled_recurrence
    if not vanilla and unrolled is not None and not unrolled.gated and profile is not None:
        vanilla = [profile.input]  # the exporter unrolled the cell: name its input sequence
    if profile is None or not vanilla:
        return None
    steps = len(profile.grad_norms)
    remedy = Remedy(
        id="gated-cells", rank=0,
        title="Replace the vanilla RNN by an LSTM (or GRU) with chrono-initialized gates",
        rationale=(f"{temporal.describe(profile)} A tanh RNN multiplies the signal by its "
                   "recurrent Jacobian at every step; gated cells carry it through an additive "
                   "memory, and chrono initialization (Tallec & Ollivier 2018) sets the forget "
                   f"gates for time scales up to {steps} steps."),
        layers=vanilla,
        params={"cell": "LSTM", "alternative": "GRU", "init": "chrono",
                "chrono_max_timescale": steps, "orthogonal_recurrent_init": True},
    )
    if context.spec is None:
        return Candidate(remedy, None, ONNX_STRUCTURE_NOTE, temporal=True)
    # Not None: the model's RNN layers were built from RNN leaves of this very document.
    edited = cast("dict[str, Any]", spec_edits.replace_recurrent(context.spec, "RNN", "LSTM"))

    def edit(_copy: LoadedModel, _batches: list[SampleBatch]) -> LoadedModel:
        rebuilt = context.rebuild(edited)
        chrono(rebuilt, steps, context.config.seed)
        return rebuilt

    return Candidate(remedy, edit, temporal=True, rebuilds=True)


def chrono(model: LoadedModel, horizon: int, seed: int) -> list[str]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [layer.name for layer in model.layers if layer.op_type in ("LSTM", "GRU") and
            edits.chrono_initialize(model.module.get_submodule(layer.module_path), horizon,
                                    generator)]


def gate_init(context: Context) -> Candidate | None:
    profile = temporal_trouble(context)
    gated = [layer for layer in context.model.layers if layer.op_type in ("LSTM", "GRU") and
             isinstance(context.model.module.get_submodule(layer.module_path),
                        (nn.LSTM, nn.GRU))]
    if profile is None or not gated:
        return None
    steps = len(profile.grad_norms)
    remedy = Remedy(
        id="chrono-init", rank=0,
        title="Chrono-initialize the gate biases (forget gate log U[1, T-1])",
        rationale=(f"{temporal.describe(profile)} At torch's default initialization "
                   "the forget gate sits near 0.5 and the memory halves every step; a forget-gate "
                   "bias of 1 (Jozefowicz et al. 2015) or chrono initialization lengthens it."),
        layers=[layer.name for layer in gated],
        params={"init": "chrono", "max_timescale": steps, "simple_alternative":
                "forget-gate bias 1"},
    )

    def edit(copy: LoadedModel, _batches: list[SampleBatch]) -> LoadedModel:
        chrono(copy, steps, context.config.seed)
        return copy

    return Candidate(remedy, edit, temporal=True)


def truncate_bptt(context: Context) -> Candidate | None:
    profile = temporal_trouble(context)
    if profile is None:
        return None
    horizon = max(profile.effective_horizon, 1)
    remedy = Remedy(
        id="truncate-bptt", rank=0,
        title=f"Truncate backpropagation through time to about {horizon} steps",
        rationale=(f"Beyond {horizon} steps back the gradient is under "
                   f"{context.config.thresholds.vanishing_ratio:g}× its value at the last step: "
                   "longer unrolls cost compute and memory without carrying signal, until the "
                   "memory itself is fixed."),
        layers=[profile.input],
        params={"bptt_steps": horizon},
    )
    return Candidate(remedy, None, "a training-time setting", temporal=True)
