"""What a diagnosis can be told: one pydantic model shared by the library, the CLI and the API."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from diagnostics.errors import InvalidConfigError


class Loss(StrEnum):
    """The scalar the probe differentiates.

    ``random_projection`` (default): for every float output y, the mean over the batch of
    ⟨y_b, r_b⟩ with r a seeded Gaussian direction of unit expected norm per sample. Its gradient
    at the outputs is r whatever y is, so it sees a change of the output in every direction: it
    is never constant on a normalized output (LayerNorm/RMSNorm, softmax, sigmoid), where
    mean(y²) and sum(y) are (README, "Verdict rules": the probe loss). ``mean_square``: sum over the
    float outputs of mean(y²). ``cross_entropy``: softmax cross entropy over the last axis against
    seeded random labels, the loss a classifier trains with. ``sum``: sum of all float outputs.
    A loss the caller names is used exactly as named.
    """

    RANDOM_PROJECTION = "random_projection"
    MEAN_SQUARE = "mean_square"
    CROSS_ENTROPY = "cross_entropy"
    SUM = "sum"


class Optimizer(StrEnum):
    """The optimizer the verdict predicts training with (README, "Verdict rules": optimizer).

    ``sgd`` (default): SGD, with or without momentum. A step moves each weight by lr·g, so
    gradient *magnitudes* decide what learns: a gradient 1,000× smaller at the first layers than
    at the last is a stall. ``adam``: Adam/AdamW. Its first steps move every element by ≈ lr
    whatever |g| is, as long as |g| ≫ its ε (1e-8); small magnitudes alone do not stall it
    (Kingma & Ba 2015, §2.1), but gradients below ε, or a gradient whose first layers move the
    output far less than the last (the shape of the profile, not its size), still do.
    """

    SGD = "sgd"
    ADAM = "adam"


class SequenceLoss(StrEnum):
    """What the training loss reads of a recurrent model's output sequence.

    ``every_step`` (default): a loss at every step (language modelling, tagging,
    sequence-to-sequence). The nearest steps already carry signal, so a short effective horizon
    is no stall: a gated cell (LSTM/GRU) learns local structure first and lengthens its memory as
    it trains. ``last_step``: the loss reads only the final step (classifying a whole sequence,
    the adding problem). Every dependency must then cross the recurrence, and under SGD a gated
    cell whose horizon is far below the sequence length does not learn it: SGD moves the forget
    gates by lr·g, and g from the early steps is the short horizon's tiny fraction of g at the
    last one (README, "Verdict rules": temporal_vanishing). Adam moves them by about lr whatever
    g is, which is why Adam trains such cells.
    """

    EVERY_STEP = "every_step"
    LAST_STEP = "last_step"


# The learning rate a rule asks about when the caller names the optimizer but not the rate: the
# usual starting points (SGD 1e-2; Adam 1e-3, Kingma & Ba 2015's default and torch's).
DEFAULT_LEARNING_RATES = {Optimizer.SGD: 1e-2, Optimizer.ADAM: 1e-3}


class NormStats(StrEnum):
    """Which statistics normalization layers use during the probe.

    ``batch`` (default): the sample batch's statistics, as during training (running statistics are
    left untouched). ``running``: the stored running statistics, as in inference.
    """

    BATCH = "batch"
    RUNNING = "running"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class ProbeDtype(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class Thresholds(BaseModel):
    """Every number the verdict compares against; see the README's "Verdict rules".

    Ratios are of the backward signal ‖∂L/∂output‖ between the deepest and the shallowest layer
    with parameters, corrected for width changes (the smaller deviation of the total-norm and the
    per-element ratio is used), so a change of layer width is never mistaken for a pathology.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    vanishing_ratio: float = Field(
        1e-3, gt=0, lt=1,
        description="Backward-signal ratio (deepest / shallowest parametric layer) below which the "
        "model is 'vanishing': the first layers receive under 0.1 % of the last layers' signal. "
        "AUTOTRAINER uses the same factor on weight gradients.",
    )
    exploding_ratio: float = Field(
        1e3, gt=1,
        description="Backward-signal ratio above which the model is 'exploding': the signal grows "
        "over a thousandfold on its way to the input.",
    )
    max_relative_step: float = Field(
        1.0, gt=0,
        description="Largest first SGD step tolerated, learning_rate × ‖∂L/∂W‖ relative to the "
        "weight's scale (the larger of ‖W‖ and the norm a fan-in initialization of that shape "
        "has, so parameters initialized near zero on purpose are judged against the scale they "
        "are meant to reach). Above it the first step overwrites the weight: 'exploding'.",
    )
    forward_growth_ratio: float = Field(
        1e3, gt=1,
        description="Largest growth of the activations' RMS from the inputs to the output "
        "layer tolerated; above it the forward pass amplifies its input so much that a training "
        "loss on the outputs diverges: 'exploding'. Below it a large output scale is a slow "
        "start (the loss begins far above the trivial one and comes down), not a divergence, "
        "unless a first step overwrites a weight (relative_update).",
    )
    adam_forward_growth_ratio: float = Field(
        1e3, gt=1,
        description="With optimizer 'adam': the forward_growth_ratio. Adam's bounded steps "
        "(about learning_rate per weight) undo an overconfident readout slowly, in hundreds of "
        "steps, but they do undo it: nets at 10-1,000x train within the 3,000-step budget "
        "calibrated on library nets (docs/trainability.md). Lower it to flag slow starts.",
    )
    adam_gradient_floor: float = Field(
        1e-10, gt=0,
        description="With optimizer 'adam': per-element gradient RMS of the first hidden "
        "layer's weights below which Adam cannot move them: its step lr·|g|/(|g|+ε) is then "
        "under 1 % of lr (ε = 1e-8, torch's default). Assumes a loss whose gradient at the "
        "outputs is of order 1 per sample, averaged over the batch, like the default probe "
        "loss: 'vanishing'.",
    )
    rounding_ratio: float = Field(
        1e-5, gt=0, lt=1,
        description="Backward signal just below the output layers, relative to the signal at "
        "the outputs, under which it may be float rounding noise (an invariance of the loss). "
        "Below it the step is re-measured in float64; if the ratio collapses there, the status "
        "is 'inconclusive'.",
    )
    temporal_horizon_fraction: float = Field(
        0.5, gt=0, le=1,
        description="An ungated recurrent cell (vanilla RNN) whose effective horizon is shorter "
        "than this fraction of the sequence cannot carry information from the sequence's start "
        "to its end: 'vanishing'. Gated cells (LSTM, GRU) are flagged but judged on it only "
        "when the loss reads the last step alone (sequence_loss 'last_step') under SGD.",
    )
    small_readout_fraction: float = Field(
        0.1, gt=0, lt=1,
        description="A readout (the layer with weights nearest the outputs) whose weight norm "
        "is below this fraction of a fan-in initialization's is reported as a small or "
        "zero-initialized head.",
    )
    saturation_derivative: float = Field(
        0.05, gt=0, lt=1,
        description="A sigmoid/tanh-like unit is saturated where its derivative is below this "
        "fraction of the activation's largest derivative (sigmoid: |x| > 4.4; tanh: |x| > 1.8).",
    )
    saturated_layer_fraction: float = Field(
        0.5, gt=0, le=1,
        description="A layer is flagged 'saturated' when at least this fraction of its units are "
        "saturated (DeepDiagnosis, TheDeepChecker: 50 %).",
    )
    dying_layer_fraction: float = Field(
        0.7, gt=0, le=1,
        description="A ReLU-family layer is flagged 'dying' when at least this fraction of its "
        "units "
        "are zero for every sample (AUTOTRAINER, DeepDiagnosis: 70 %). At 100 % it is 'dead'.",
    )
    fp16_normal_min: float = Field(
        6.1e-5, gt=0,
        description="Smallest normal float16 magnitude; gradient entries below it lose precision "
        "in half precision.",
    )
    fp16_max: float = Field(65504.0, gt=0, description="Largest finite float16.")
    fp16_underflow_layer_fraction: float = Field(
        0.5, gt=0, le=1,
        description="A layer is flagged 'fp16_underflow' when at least this fraction of a "
        "parameter's non-zero gradient entries lies below the float16 normal range.",
    )


class DiagnosisConfig(BaseModel):
    """Everything that shapes a diagnosis. Unknown fields are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    batch_size: int = Field(8, ge=1, le=4096, description="Size of dynamic batch dimensions.")
    input_shapes: dict[str, list[int]] = Field(
        default_factory=dict,
        description="Full shapes for inputs whose dimensions the model leaves dynamic, by input "
        "name.",
    )
    norm_stats: NormStats = NormStats.BATCH
    loss: Loss = Loss.RANDOM_PROJECTION
    optimizer: Optimizer = Field(
        Optimizer.SGD,
        description="The optimizer you train with; the rules predict what it does at "
        "learning_rate. 'sgd' (default): gradient magnitudes decide. 'adam': Adam rescales "
        "each parameter's step, so small magnitudes alone do not stall it (README, 'Verdict "
        "rules').",
    )
    learning_rate: float = Field(
        1e-2, gt=0, le=10,
        description="The learning rate the rules ask about: what does the first step at this "
        "rate do to each weight? Default 1e-2 with optimizer 'sgd' and 1e-3 with 'adam' (the "
        "usual starting points); set your own.",
    )
    sequence_loss: SequenceLoss = Field(
        SequenceLoss.EVERY_STEP,
        description="What your training loss reads of a recurrent model's output sequence: "
        "'every_step' (default; language modelling, tagging) or 'last_step' (classifying a "
        "whole sequence). With 'last_step' the probe's loss reads the last output step alone, and "
        "with optimizer 'sgd' gated cells (LSTM/GRU) are judged on their effective horizon too "
        "(README, 'Verdict rules').",
    )
    samples: int = Field(
        3, ge=1, le=64,
        description="Independent seeded batches; each statistic is the median with min/max spread.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)
    device: Device = Device.AUTO
    dtype: ProbeDtype = Field(
        ProbeDtype.FLOAT32, description="Precision the probe runs in (statistics are float64)."
    )
    vocab_size: int | None = Field(
        None, ge=1, le=10_000_000,
        description="Range of synthesized integer inputs when no embedding table tells it.",
    )
    verify_remedies: bool | None = Field(
        None,
        description="Re-probe the model with each remedy applied. Default: on for models up to "
        "max_verify_parameters parameters.",
    )
    max_verify_parameters: int = Field(50_000_000, ge=0)
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @model_validator(mode="before")
    @classmethod
    def _default_learning_rate(cls, data: Any) -> Any:
        # learning_rate left out: the usual rate of the chosen optimizer (Adam's steps are
        # ~lr per element, so SGD's 1e-2 would be a tenfold larger rate than Adam users pick).
        if isinstance(data, dict) and "learning_rate" not in data:
            try:
                optimizer = Optimizer(data.get("optimizer", Optimizer.SGD))
            except ValueError:
                return data  # the field validator names the bad value
            return {**data, "learning_rate": DEFAULT_LEARNING_RATES[optimizer]}
        return data

    @property
    def forward_growth_limit(self) -> float:
        """The output growth above which forward_scale_exploding fires for this optimizer."""
        return (self.thresholds.forward_growth_ratio if self.optimizer is Optimizer.SGD
                else self.thresholds.adam_forward_growth_ratio)


def resolve_config(config: DiagnosisConfig | dict[str, Any] | None) -> DiagnosisConfig:
    """Validate ``config`` into a :class:`DiagnosisConfig`.

    Raises:
        InvalidConfigError: naming the first offending field (dotted path).
    """
    if config is None:
        return DiagnosisConfig()
    if isinstance(config, DiagnosisConfig):
        return config
    if not isinstance(config, dict):
        raise InvalidConfigError(
            f"config must be a JSON object, got {type(config).__name__}", field="config"
        )
    try:
        return DiagnosisConfig.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "config"
        raise InvalidConfigError(f"config.{field}: {first['msg']}", field=field) from None
