"""The report: what a diagnosis returns, as pydantic models. No computation lives here.

``Report.model_dump(mode="json")`` is exactly what the CLI prints with ``--format json`` and what
the HTTP API returns. JSON has no NaN or Infinity: a statistic that is not finite is ``null`` and
is counted in ``nonfinite_count`` and the flags.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from diagnostics.config import DiagnosisConfig
from diagnostics.errors import RemedyNotRepairableError

SCHEMA_VERSION = "1.0"


class Status(StrEnum):
    """The verdict. ``inconclusive``: the sample passes cannot tell (the gradient below the
    outputs is float rounding noise, or the file is not the graph that trains, e.g. BatchNorm
    folded by the exporter); the summary says why and what to do instead."""

    HEALTHY = "healthy"
    VANISHING = "vanishing"
    EXPLODING = "exploding"
    INCONCLUSIVE = "inconclusive"


class Flag(StrEnum):
    """Per-layer and model-wide findings."""

    VANISHING = "vanishing"
    EXPLODING = "exploding"
    SATURATED = "saturated"
    DYING = "dying"
    DEAD = "dead"
    NON_FINITE = "non_finite"
    LARGE_UPDATE = "large_update"
    NONFINITE_INPUT = "nonfinite_input"
    FP16_UNDERFLOW = "fp16_underflow"
    FP16_OVERFLOW = "fp16_overflow"
    TEMPORAL_VANISHING = "temporal_vanishing"
    TEMPORAL_EXPLODING = "temporal_exploding"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stat(_Model):
    """A statistic over the samples: the median and the min/max spread (``null`` if not finite)."""

    median: float | None
    min: float | None
    max: float | None


class ParameterStats(_Model):
    """Gradient statistics of one trainable tensor (an ONNX initializer, a spec weight)."""

    name: str = Field(description="ONNX initializer name, or the spec path + '.weight'/'.bias'.")
    shape: list[int]
    grad_norm: Stat = Field(description="‖∂L/∂W‖₂ (float64).")
    grad_rms: Stat
    grad_mean_abs: Stat
    grad_max_abs: Stat
    weight_norm: float | None = Field(description="‖W‖₂.")
    grad_to_weight: Stat = Field(
        description="‖∂L/∂W‖/‖W‖: the relative step a learning rate of 1 would take; null when "
        "‖W‖ is 0."
    )
    zero_fraction: Stat = Field(
        description="Fraction of gradient entries exactly 0 (above 65,536 entries, estimated on "
        "an evenly strided sample, like fp16_underflow_fraction).")
    nonfinite_count: int = Field(
        description="Largest count of NaN/Inf gradient entries in a sample.")
    fp16_underflow_fraction: Stat | None = Field(
        None, description="Fraction of non-zero gradient entries below the float16 normal range."
    )
    shared_with: list[str] = Field(
        default_factory=list,
        description="Other layers that use this tensor (its gradient is their total).",
    )


class ActivationStats(_Model):
    """Statistics of a layer's forward output over the sample batch."""

    mean: Stat
    std: Stat
    saturated_fraction: Stat | None = Field(
        None, description="Sigmoid/tanh-like layers: fraction of units in the flat region."
    )
    dead_fraction: Stat | None = Field(
        None,
        description="ReLU-family layers: fraction of units zero for every sample of the batch.",
    )
    nonfinite_count: int = 0


class LayerReport(_Model):
    name: str = Field(description="ONNX node name as in the file, or the spec's JSON path.")
    op_type: str
    index: int = Field(description="Position in topological order.")
    depth: int = Field(
        description="Longest distance in watched layers to a model output (0 = last).")
    kinds: list[str]
    activation: str | None = None
    output_numel: int | None = Field(None, description="Elements of the output per sample.")
    output_grad_norm: Stat | None = Field(
        None, description="‖∂L/∂output‖₂ — the backward signal reaching this layer."
    )
    output_grad_nonfinite_count: int = 0
    activations: ActivationStats | None = None
    parameters: list[ParameterStats] = Field(default_factory=list)
    flags: list[Flag] = Field(default_factory=list)


class RuleCheck(_Model):
    """One verdict rule as evaluated: the number, its threshold, and whether it fired."""

    rule: str
    value: float | None
    threshold: float | None
    fired: bool
    detail: str
    doc: str | None = Field(
        None, description="The guide section that explains it: a path the service serves, e.g. "
        "'/guide/rules#backward_signal_vanishing' (Markdown: docs/guide/rules.md).")


class Evidence(_Model):
    backward_signal_ratio: Stat | None = Field(
        None, description="Width-corrected ‖δ‖ ratio, deepest / shallowest parametric layer."
    )
    backward_signal_ratio_raw: Stat | None = Field(
        None, description="The same ratio of total norms, uncorrected."
    )
    per_layer_gain: float | None = Field(
        None, description="Geometric-mean factor by which the backward signal changes per layer."
    )
    deepest_layer: str | None = None
    shallowest_layer: str | None = None
    weight_grad_ratio: Stat | None = Field(
        None, description="‖∂L/∂W‖ of the first parametric layer / of the last (AUTOTRAINER)."
    )
    weight_grad_l1_ratio: Stat | None = Field(
        None, description="‖∂L/∂W‖₁ of first_weight_layer's weights / of last_weight_layer's: "
        "how fast one Adam step (every element moved by ≈ lr against its gradient's sign) at "
        "the first layers changes the loss, relative to one at the last (optimizer 'adam').")
    first_weight_grad_rms: float | None = Field(
        None, description="Per-element RMS of ∂L/∂W at the deepest hidden layer's weights, "
        "compared with Adam's ε (optimizer 'adam').")
    first_weight_layer: str | None = Field(
        None, description="The deepest hidden layer with a weight matrix or kernel (the input "
        "end of weight_grad_l1_ratio).")
    last_weight_layer: str | None = Field(
        None, description="The shallowest hidden layer with a weight matrix or kernel.")
    max_grad_to_weight: float | None = Field(
        None, description="Largest ‖∂L/∂W‖/‖W‖ of a weight matrix or kernel.")
    max_grad_to_weight_parameter: str | None = None
    max_relative_step: float | None = Field(
        None, description="Largest first step at config.learning_rate relative to the weight's "
        "scale (the larger of ‖W‖ and a fan-in initialization's norm): lr·‖∂L/∂W‖ for SGD, "
        "lr·√numel (every element moved by ≈ lr) for Adam.")
    max_relative_step_parameter: str | None = None
    reference_scale_parameters: list[str] = Field(
        default_factory=list,
        description="Weights initialized below a fan-in initialization's scale (class tokens, "
        "zero-init heads ...): their relative step is judged against that scale, not ‖W‖.")
    scale_invariant_layers: list[str] = Field(
        default_factory=list,
        description="Layers whose output reaches the loss only through a batch/layer/group "
        "normalization (through linear maps and ReLU-like activations): the loss does not change "
        "when their weights are scaled, so a large step turns those weights and grows their "
        "norm, which shrinks the next steps; it cannot blow the output up. relative_update does "
        "not judge their weights.")
    signal_growth_normalized: bool = Field(
        False, description="Every weight below shallowest_layer is in scale_invariant_layers: a "
        "backward signal that grows with depth cannot blow the forward pass up there, so "
        "backward_signal_exploding does not fire (torchvision ResNet-101/152 read 1.5e3-1.2e4 "
        "and train).")
    forward_growth: Stat | None = Field(
        None, description="RMS of the output layer's activations / RMS of the float inputs.")
    readout_layers: list[str] = Field(
        default_factory=list,
        description="Layers with weights nearest the outputs: judged as readouts, apart from "
        "the depth profile of the hidden layers.")
    readout_scale: float | None = Field(
        None, description="Readout weight norm / a fan-in initialization's (0: zero head).")
    closed_gate_layer: str | None = Field(
        None, description="A learned gain near zero on purpose (LayerScale) through which all "
        "the signal below it passes (CaiT's class attention): the depth profile is judged below "
        "it, since every layer there gets about γ of the signal until the gain moves.")
    closed_gate_scale: float | None = Field(
        None, description="RMS of that gain's values (γ).")
    gradient_stops_at: str | None = Field(
        None, description="Where the gradient becomes exactly zero when no parameter gets any.")
    rounding_noise_layer: str | None = Field(
        None, description="The output layer below which the gradient is float rounding noise.")
    rounding_noise_ratio: float | None = Field(
        None, description="Signal just below that layer / at it, in the probe's precision.")
    rounding_noise_ratio_float64: float | None = Field(
        None, description="The same ratio re-measured in float64 (it collapses for an "
        "invariance, stays for a real loss of signal).")
    folded_normalization: list[str] = Field(
        default_factory=list,
        description="Nodes into which the exporter folded a BatchNorm.")
    nonfinite_count: int = 0
    first_nonfinite_forward: str | None = None
    first_nonfinite_backward: str | None = None
    dead_layers: list[str] = Field(default_factory=list)
    dead_layers_blocking: list[str] = Field(
        default_factory=list,
        description="Dead layers below which every parameter's gradient is exactly zero.")
    dying_layers: list[str] = Field(default_factory=list)
    saturated_layers: list[str] = Field(default_factory=list)
    rules: list[RuleCheck] = Field(default_factory=list)


class Verdict(_Model):
    status: Status
    summary: str = Field(description="One sentence a person reads.")
    flags: list[Flag] = Field(default_factory=list)
    evidence: Evidence


class Verification(_Model):
    """What re-probing the model with a remedy applied showed."""

    judged_on: str = Field(
        "verdict", description="'verdict': the model's status; 'temporal': the status of the "
        "temporal profile (remedies for memory through time).")
    status_before: Status
    status_after: Status
    evidence_before: dict[str, Any]
    evidence_after: dict[str, Any]


class Remedy(_Model):
    id: str = Field(description="Stable identifier, e.g. 'reinit-kaiming'.")
    rank: int
    title: str
    rationale: str = Field(description="Why, citing layer names and measured numbers.")
    layers: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    verified: Verification | None = None
    verification_note: str | None = Field(
        None, description="Why the remedy was not verified, when ``verified`` is null."
    )
    repairable: bool = Field(
        False, description="Changes only initializer values: a repaired ONNX can be downloaded."
    )
    doc: str | None = Field(
        None, description="The guide section that explains it: a path the service serves, e.g. "
        "'/guide/rules#backward_signal_vanishing' (Markdown: docs/guide/rules.md).")


class Cause(_Model):
    """Why the profile looks as it does: one cause and the numbers that show it."""

    id: str = Field(description="saturating_activations | dead_units | initialization_scale | "
                    "plain_depth | recurrent_memory | low_precision | small_readout | "
                    "large_output_scale")
    title: str
    layers: list[str] = Field(default_factory=list)
    evidence: dict[str, Any] = Field(default_factory=dict)
    doc: str | None = Field(
        None, description="The guide section that explains it: a path the service serves, e.g. "
        "'/guide/rules#backward_signal_vanishing' (Markdown: docs/guide/rules.md).")


class SourceReport(_Model):
    kind: str
    sha256: str
    name: str | None = None
    opset: int | None = None
    producer: str | None = None


class SampleReport(_Model):
    seed: int
    loss: float | None
    status: Status


class SamplesReport(_Model):
    count: int
    batch_size: int
    input_shapes: dict[str, list[int]]
    runs: list[SampleReport]


class Timings(_Model):
    load_s: float = 0.0
    inputs_s: float = 0.0
    probe_s: float = 0.0
    verdict_s: float = 0.0
    remedies_s: float = 0.0
    verification_s: float = 0.0
    total_s: float = 0.0


class TemporalProfile(_Model):
    """‖∂L/∂x_t‖ for each time step t of the first recurrent layer's input, loss on the last
    step's output (median over samples)."""

    input: str = Field(description="The recurrent layer whose input sequence is profiled.")
    axis: int = Field(description="Time axis of that input; -1 for a cell a Python loop calls "
                                  "once per step (each call reads one step).")
    grad_norms: list[float | None] = Field(description="‖∂L/∂x_t‖ for t = 0 .. T-1.")
    decay_per_step: float | None = Field(
        description="Factor by which the gradient changes per step back in time (log-linear fit).")
    effective_horizon: int = Field(
        description="Steps back from the last for which the gradient stays above "
        "vanishing_ratio × its value at the last step (T = the whole sequence).")
    first_to_last_ratio: float | None = Field(description="‖∂L/∂x_0‖ / ‖∂L/∂x_{T-1}‖.")
    status: Status


class Report(_Model):
    schema_version: str = SCHEMA_VERSION
    source: SourceReport
    config: DiagnosisConfig
    verdict: Verdict
    layers: list[LayerReport]
    causes: list[Cause] = Field(default_factory=list)
    remedies: list[Remedy] = Field(default_factory=list)
    temporal: list[TemporalProfile] = Field(default_factory=list)
    samples: SamplesReport
    timings: Timings
    notes: list[str] = Field(default_factory=list)

    # In-memory only (never serialized): what repaired_model() needs, attached by diagnose()
    # (diagnostics.remedies.repair.RepairContext). The schema itself imports no engine module.
    _repair: Any = PrivateAttr(default=None)

    def repaired_model(self, remedy_id: str) -> bytes:
        """The ONNX model with a repairable remedy (re-initialization, LSUV) applied.

        Available on reports returned by ``diagnose`` in this process, for ONNX sources.

        Raises:
            RemedyNotRepairableError: Unknown remedy, one that changes the architecture, a spec
                source, or a report that was loaded from JSON.
        """
        if self._repair is None:
            raise RemedyNotRepairableError(
                "this report holds no model (it was loaded from JSON); re-run diagnose")
        return self._repair.repaired_onnx(remedy_id)

    def repaired_module(self, remedy_id: str) -> Any:
        """A new ``torch.nn.Module`` with a repairable remedy applied, for reports of a module.

        The diagnosed module is never modified; this returns a copy of it (same class, modes,
        device and dtype) whose weights are the ones the remedy's verification measured.

        Raises:
            RemedyNotRepairableError: Unknown remedy, one that changes the architecture, a
                source that was not an ``nn.Module``, or a report loaded from JSON.
        """
        if self._repair is None:
            raise RemedyNotRepairableError(
                "this report holds no model (it was loaded from JSON); re-run diagnose")
        return self._repair.repaired_module(remedy_id)
