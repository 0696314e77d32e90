"""Verdict + layer context -> candidate remedies, each with the edit that would verify it.

A remedy is proposed only when the evidence supports it, and its rationale cites that evidence
(layer names, measured numbers). Where the change can be made to a copy of the model, the
candidate carries the edit; :mod:`diagnostics.verification` re-probes the edited copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from diagnostics import edits, spec_edits, temporal
from diagnostics.aggregate import cancelled_parameters, is_weight
from diagnostics.config import DiagnosisConfig
from diagnostics.examination import Examination
from diagnostics.inputs import SampleBatch
from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.model import Activation, LayerKind, LoadedModel
from diagnostics.report import Evidence, Flag, LayerReport, Remedy, Status

# An edit gets a private copy of the model (and the sample batches) and returns the model to
# re-examine: the copy edited in place, or a model rebuilt from an edited spec.
Edit = Callable[[LoadedModel, list[SampleBatch]], LoadedModel]

# Ratio of measured to recommended weight std beyond which a layer is called mis-initialized.
INIT_TOLERANCE = 1.5
# A plain chain at least this deep (layers with weights) is "deep" for normalization/residuals.
DEEP_CHAIN = 8


@dataclass
class Candidate:
    remedy: Remedy
    edit: Edit | None = None
    note: str | None = None
    temporal: bool = False  # verified on the temporal profile rather than the verdict
    rebuilds: bool = False  # the edit builds a new model and ignores the copy it is handed


@dataclass(frozen=True)
class Context:
    """What the remedy builders look at."""

    model: LoadedModel
    found: Examination
    config: DiagnosisConfig
    spec: dict | None = None  # the spec document, for structural edits of spec models
    limits: Limits = DEFAULT_LIMITS

    def rebuild(self, document: dict) -> LoadedModel:
        """A spec model built from an edited document, seeded as the original."""
        from diagnostics.loading.spec.loader import load_spec

        return load_spec(document, limits=self.limits, seed=self.config.seed)


def propose(model: LoadedModel, found: Examination, config: DiagnosisConfig,
            spec: dict | None = None, limits: Limits = DEFAULT_LIMITS) -> list[Candidate]:
    """Candidates for this examination, most specific first (ranked after verification).

    None for an inconclusive verdict: the profile they would be built on is rounding noise or a
    different graph, and the summary already says what to do (change the loss, re-export).
    """
    if found.verdict.status is Status.INCONCLUSIVE:
        return []
    context = Context(model, found, config, spec, limits)
    candidates = []
    for builder in BUILDERS:
        candidate = builder(context)
        if candidate is not None:
            candidates.append(candidate)
    for rank, candidate in enumerate(candidates, 1):
        candidate.remedy.rank = rank
    return candidates


def _ratio_text(evidence: Evidence) -> str:
    ratio = evidence.backward_signal_ratio.median if evidence.backward_signal_ratio else None
    if ratio is None:
        return ""
    return (f"The backward signal at {evidence.deepest_layer} is {ratio:.3g}× (width-corrected) "
            f"that at {evidence.shallowest_layer}")


def _hidden_saturating(model: LoadedModel) -> list[int]:
    return [i for i, layer in enumerate(model.layers)
            if layer.activation in edits.SATURATING and layer.depth > 0]


def _replace_activation(context: Context) -> Candidate | None:
    model = context.model
    layers = context.found.layers
    verdict = context.found.verdict
    config = context.config
    if verdict.status is not Status.VANISHING:
        return None
    targets = _hidden_saturating(model)
    if not targets:
        return None
    names = [model.layers[i].name for i in targets]
    saturated = [layers[i].name for i in targets if Flag.SATURATED in layers[i].flags]
    feeding = sorted({f for i in targets if (f := edits.feeding_layer(model, i)) is not None})
    kinds = sorted({model.layers[i].op_type for i in targets})
    sigmoid_like = any(model.layers[i].activation in edits.SIGMOID_LIKE for i in targets)
    detail = f"; {len(saturated)} of them saturated" if saturated else ""
    remedy = Remedy(
        id="replace-activation", rank=0,
        title=f"Replace {'/'.join(kinds)} with ReLU in {len(names)} hidden layer(s) and "
              "He-initialize the layers feeding them",
        rationale=(f"{_ratio_text(verdict.evidence)}. {', '.join(kinds)} has slope at most "
                   f"{'0.25' if sigmoid_like else '1'}"
                   f" and flattens for large inputs{detail}, so the gradient shrinks at every "
                   "hidden layer. Keep a sigmoid only at an output that needs it."),
        layers=names,
        params={"activation": "ReLU", "layers": names, "init": "kaiming_normal",
                "reinitialized_layers": [model.layers[f].name for f in feeding]},
    )

    def edit(copy: LoadedModel, _batches: list[SampleBatch]) -> LoadedModel:
        updated = {i: edits.swap_activation(copy, copy.layers[i], nn.ReLU(), Activation.RELU)
                   for i in targets}
        edits.replace_layers(copy, updated)
        plan = {}
        for f in feeding:
            found = edits.weight_of(copy, copy.layers[f])
            layout = found and edits.weight_layout(copy, copy.layers[f], found[1])
            if found and layout:
                plan[found[0]] = edits.InitChoice(math.sqrt(2.0 / layout.fan_in))
        edits.reinitialize(copy, plan, config.seed)
        return copy

    return Candidate(remedy, edit)


def _fix_dead_units(context: Context) -> Candidate | None:
    model = context.model
    layers = context.found.layers
    targets = [i for i, layer in enumerate(layers)
               if Flag.DEAD in layer.flags or Flag.DYING in layer.flags]
    if not targets:
        return None
    described = []
    for i in targets:
        dead = layers[i].activations.dead_fraction.median if layers[i].activations and \
            layers[i].activations.dead_fraction else None
        described.append(f"{layers[i].name} ({dead:.0%} of units never active)" if dead is not None
                         else layers[i].name)
    biases = {i: edits.bias_of(model, f) for i in targets
              if (f := edits.feeding_layer(model, i)) is not None}
    bias_facts = [f"{name} mean {float(param.detach().mean()):.3g}"
                  for name, param in (b for b in biases.values() if b)]
    remedy = Remedy(
        id="fix-dead-units", rank=0,
        title=f"Revive dead ReLU units in {len(targets)} layer(s): LeakyReLU(0.01) and zero biases",
        rationale=(f"{'; '.join(described)}: a unit that is never active passes no gradient, and "
                   "a layer that is entirely inactive blocks all gradient below it."
                   + (f" Feeding biases: {', '.join(bias_facts)}." if bias_facts else "")
                   + " LeakyReLU keeps a small slope for negative inputs; biases at zero (or a "
                   "small positive value) and He initialization start every unit active on "
                   "about half of the inputs."),
        layers=[layers[i].name for i in targets],
        params={"activation": "LeakyReLU", "negative_slope": 0.01,
                "zero_biases": [b[0] for b in biases.values() if b]},
    )

    def edit(copy: LoadedModel, _batches: list[SampleBatch]) -> LoadedModel:
        import torch

        updated = {i: edits.swap_activation(copy, copy.layers[i], nn.LeakyReLU(0.01),
                                            Activation.LEAKY_RELU) for i in targets}
        edits.replace_layers(copy, updated)
        with torch.no_grad():
            for found in biases.values():
                if found:
                    copy.parameters[found[0]].zero_()
        return copy

    return Candidate(remedy, edit)


def init_plan(model: LoadedModel) -> list[dict]:
    """Per weight: measured std, the recommended scheme and std, and their ratio."""
    plan = []
    for index, layer in enumerate(model.layers):
        found = edits.weight_of(model, layer)
        if found is None:
            continue
        name, param = found
        layout = edits.weight_layout(model, layer, param)
        following = edits.following_activation(model, index)
        if layout is None or following == "normalization" or param.numel() < 2:
            continue
        scheme, std = edits.recommended_init(following, layout.fan_in, layout.fan_out)
        measured = float(param.detach().double().std())
        input_mean = edits.INPUT_MEANS.get(edits.preceding_activation(model, index), 0.0)
        plan.append({"layer": layer.name, "parameter": name, "scheme": scheme,
                     "std": std, "measured_std": measured, "input_mean": input_mean,
                     "ratio": measured / std if std else math.inf,
                     "activation": following.value if isinstance(following, Activation) else None})
    return plan


def _reinitialize(context: Context) -> Candidate | None:
    model = context.model
    verdict = context.found.verdict
    config = context.config
    if verdict.status is Status.HEALTHY:
        return None
    plan = init_plan(model)
    off = [p for p in plan if not (1 / INIT_TOLERANCE <= p["ratio"] <= INIT_TOLERANCE)]
    if not off:
        return None
    worst = max(off, key=lambda p: abs(math.log(max(p["ratio"], 1e-300))))
    centred = [p for p in off if p["input_mean"]]
    schemes = sorted({p["scheme"] for p in off})
    remedy = Remedy(
        id="reinitialize", rank=0,
        title=f"Re-initialize {len(off)} weight(s) with {', '.join(schemes)}",
        rationale=(f"{_ratio_text(verdict.evidence)}. {len(off)} weight(s) are off the fan-in "
                   f"rule for the activation that follows them; worst: {worst['parameter']} has "
                   f"std {worst['measured_std']:.3g} where {worst['scheme']} gives "
                   f"{worst['std']:.3g} ({worst['ratio']:.3g}×). Each layer scales the backward "
                   "signal by about that factor (times the activation's slope)."),
        layers=[p["layer"] for p in off],
        params={"weights": {p["parameter"]: {"scheme": p["scheme"], "std": _round(p["std"]),
                                             "measured_std": _round(p["measured_std"])}
                            for p in off},
                "biases": "zeros" if not centred else
                f"zeros, except layers fed by a sigmoid: bias = -0.5 * W.sum(inputs), so "
                f"pre-activations start centred ({len(centred)} layer(s))"},
        repairable=True,
    )

    def edit(copy: LoadedModel, _batches: list[SampleBatch]) -> LoadedModel:
        edits.reinitialize(copy, {p["parameter"]: edits.InitChoice(p["std"], p["input_mean"])
                                  for p in off}, config.seed)
        return copy

    return Candidate(remedy, edit)


def _data_dependent_init(context: Context) -> Candidate | None:
    model = context.model
    verdict = context.found.verdict
    if verdict.status is Status.HEALTHY:
        return None
    rescalable = [layer.name for layer in model.layers
                  if isinstance(model.module.get_submodule(layer.module_path),
                                (nn.Linear, nn.modules.conv._ConvNd))]
    if not rescalable:
        return None
    remedy = Remedy(
        id="data-dependent-init", rank=0,
        title=f"LSUV: rescale {len(rescalable)} layer(s) to unit output variance on your data",
        rationale=(f"{_ratio_text(verdict.evidence)}. Layer-sequential unit-variance "
                   "initialization (Mishkin & Matas 2015) fits each layer's weights, in order, so "
                   "its output units have zero mean and unit variance on the sample batch, which "
                   "keeps activations out of flat or dead regions and the per-layer gain near 1."),
        layers=rescalable,
        params={"method": "lsuv", "target_variance": 1.0, "per_unit": True,
                "layers": rescalable},
        repairable=True,
    )

    def edit(copy: LoadedModel, batches: list[SampleBatch]) -> LoadedModel:
        edits.rescale_data_dependent(copy, batches[0].tensors)
        return copy

    return Candidate(remedy, edit)


def _has_normalization(model: LoadedModel) -> bool:
    return any(LayerKind.NORMALIZATION in layer.kinds for layer in model.layers)


def _weighted_count(model: LoadedModel) -> int:
    return sum(1 for layer in model.layers if edits.weight_of(model, layer) is not None)


def _is_chain(model: LoadedModel) -> bool:
    depths = [layer.depth for layer in model.layers]
    return len(set(depths)) == len(depths)


def _add_normalization(context: Context) -> Candidate | None:
    model = context.model
    verdict = context.found.verdict
    if verdict.status is Status.HEALTHY or _has_normalization(model):
        return None
    count = _weighted_count(model)
    if count < 4:
        return None
    convolutional = any(op.startswith("Conv") for op in {layer.op_type for layer in model.layers})
    kind = "BatchNorm" if convolutional else "LayerNorm"
    remedy = Remedy(
        id="add-normalization", rank=0,
        title=f"Add {kind} after each of the {count} layers with weights",
        rationale=(f"{_ratio_text(verdict.evidence)}, and the model has no normalization layer: "
                   "nothing keeps the activation scale, and with it the per-layer gain, near 1 as "
                   f"depth grows. {kind} ({'CNN' if convolutional else 'sequence/MLP'}) "
                   "re-centres and rescales every layer's output."),
        layers=[layer.name for layer in model.layers if edits.weight_of(model, layer)],
        params={"normalization": kind, "position": "after each layer with weights, before its "
                                                   "activation"},
    )
    return _structural(context, remedy, spec_edits.insert_normalization)


def _add_residual(context: Context) -> Candidate | None:
    model = context.model
    verdict = context.found.verdict
    if verdict.status is Status.HEALTHY or not _is_chain(model):
        return None
    count = _weighted_count(model)
    if count < DEEP_CHAIN:
        return None
    remedy = Remedy(
        id="add-residual", rank=0,
        title=f"Add residual connections around the blocks of this {count}-layer plain stack",
        rationale=(f"{_ratio_text(verdict.evidence)} through a plain chain of {count} layers "
                   "with weights and no skip connection: every layer multiplies the backward "
                   "signal. Residual blocks (He et al. 2016) give it an identity path; zero-init "
                   "the last layer of each branch (Fixup, ReZero) so the net starts as identity."),
        layers=[layer.name for layer in model.layers if edits.weight_of(model, layer)],
        params={"block": "layer with weights + activation", "branch_last_layer_init": "zeros"},
    )
    return _structural(context, remedy, spec_edits.wrap_residual)


ONNX_STRUCTURE_NOTE = ("not verified: inserting or replacing layers in an ONNX graph would be "
                       "speculative (where, with which shapes); the recommendation stands on the "
                       "evidence")


def _structural(context: Context, remedy: Remedy,
                edit_document: Callable[[dict], dict | None]) -> Candidate:
    """A remedy that changes the architecture: verified by rebuilding an edited spec."""
    if context.spec is None:
        return Candidate(remedy, None, ONNX_STRUCTURE_NOTE)
    edited = edit_document(context.spec)
    if edited is None:
        return Candidate(remedy, None, "not verified: no layer of this spec can take the edit "
                                       "as it stands (shapes would not match)")
    remedy.params["spec_after"] = edited

    def edit(_copy: LoadedModel, _batches: list[SampleBatch]) -> LoadedModel:
        return context.rebuild(edited)

    return Candidate(remedy, edit, rebuilds=True)


def _total_grad_norm(layers: list[LayerReport]) -> float | None:
    squares = [p.grad_norm.median ** 2 for layer in layers for p in layer.parameters
               if p.grad_norm.median is not None]
    return math.sqrt(sum(squares)) if squares else None


def _clip_gradients(context: Context) -> Candidate | None:
    layers = context.found.layers
    verdict = context.found.verdict
    temporal_trouble = Flag.TEMPORAL_EXPLODING in verdict.flags or \
        Flag.TEMPORAL_VANISHING in verdict.flags
    if verdict.status is not Status.EXPLODING and not temporal_trouble:
        return None
    total = _total_grad_norm(layers)
    g2w = verdict.evidence.max_grad_to_weight
    if not total or not math.isfinite(total):
        params = {"max_norm": 1.0, "norm_type": 2.0}
        rationale = ("gradients are not finite, so no norm can be measured: clip at the common "
                     "max_norm 1.0 and fix the cause (see the other remedies)")
        clipped = None
    else:
        # Clip so that the largest relative update at learning rate 1 is at most 1.
        scale = min(1.0, 1.0 / g2w) if g2w else 1.0
        max_norm = float(f"{total * scale:.2g}")
        clipped = min(total, max_norm)
        params = {"max_norm": max_norm, "norm_type": 2.0, "measured_total_grad_norm": _round(total),
                  "clipped_update_norm": _round(clipped),
                  "clipped_max_grad_to_weight": _round(g2w * clipped / total) if g2w else None}
        largest = (f" and the largest ‖∂L/∂W‖/‖W‖ is {g2w:.3g} "
                   f"({verdict.evidence.max_grad_to_weight_parameter})" if g2w else "")
        rationale = (f"the total gradient norm is {total:.3g}{largest}; clipping at "
                     f"max_norm={max_norm:g} bounds every step to at most the weight's own size at "
                     "learning rate 1 (Pascanu et al. 2013)")
    remedy = Remedy(
        id="clip-gradients", rank=0,
        title="Clip the gradient norm: torch.nn.utils.clip_grad_norm_(model.parameters(), "
              f"max_norm={params['max_norm']:g})",
        rationale=rationale[0].upper() + rationale[1:] + ". Clipping bounds the step; it does "
                  "not repair the signal profile.",
        params=params,
    )
    return Candidate(remedy, None, "a training-time safeguard: it changes the update, not the "
                     "gradients a sample pass measures" + (
                         f"; clipped update norm {clipped:.3g}" if clipped else ""))


def _lower_learning_rate(context: Context) -> Candidate | None:
    layers = context.found.layers
    evidence = context.found.verdict.evidence
    config = context.config
    step = evidence.max_relative_step
    if not step or step <= config.thresholds.max_relative_step:
        return None
    # Scale the rate so that the first step moves the worst weight by about 1e-3 of its scale.
    lr = float(f"{config.learning_rate * 1e-3 / step:.2g}")
    remedy = Remedy(
        id="lower-learning-rate", rank=0,
        title=f"Use a learning rate of at most {lr:g} (with warmup)",
        rationale=(f"At learning rate {config.learning_rate:g} the first SGD step changes "
                   f"{evidence.max_relative_step_parameter} by {step:.3g}× its scale; a relative "
                   f"step of about 1e-3 needs lr ≈ {config.learning_rate:g} × 1e-3 / {step:.3g}. "
                   "Warm the learning rate up over the first steps (post-LN transformers "
                   "especially)."),
        layers=[layer.name for layer in layers if Flag.LARGE_UPDATE in layer.flags],
        params={"learning_rate": lr, "warmup": True},
    )
    return Candidate(remedy, None, "a training-time setting: a sample pass has no learning rate")


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.4g}")


def _temporal_trouble(context: Context):
    found = context.found.temporal
    return found[0] if found and found[0].status is Status.VANISHING else None


def _gated_cells(context: Context) -> Candidate | None:
    profile = _temporal_trouble(context)
    vanilla = [layer for layer in context.model.layers if layer.op_type == "RNN"]
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
        layers=[layer.name for layer in vanilla],
        params={"cell": "LSTM", "alternative": "GRU", "init": "chrono",
                "chrono_max_timescale": steps, "orthogonal_recurrent_init": True},
    )
    if context.spec is None:
        return Candidate(remedy, None, ONNX_STRUCTURE_NOTE, temporal=True)
    edited = spec_edits.replace_recurrent(context.spec, "RNN", "LSTM")

    def edit(_copy: LoadedModel, _batches: list[SampleBatch]) -> LoadedModel:
        rebuilt = context.rebuild(edited)
        _chrono(rebuilt, steps, context.config.seed)
        return rebuilt

    return Candidate(remedy, edit, temporal=True, rebuilds=True)


def _chrono(model: LoadedModel, horizon: int, seed: int) -> list[str]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [layer.name for layer in model.layers if layer.op_type in ("LSTM", "GRU") and
            edits.chrono_initialize(model.module.get_submodule(layer.module_path), horizon,
                                    generator)]


def _gate_init(context: Context) -> Candidate | None:
    profile = _temporal_trouble(context)
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
        _chrono(copy, steps, context.config.seed)
        return copy

    return Candidate(remedy, edit, temporal=True)


def _truncate_bptt(context: Context) -> Candidate | None:
    profile = _temporal_trouble(context)
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


def _loss_scaling(context: Context) -> Candidate | None:
    layers = context.found.layers
    verdict = context.found.verdict
    config = context.config
    flagged = [layer for layer in layers if Flag.FP16_UNDERFLOW in layer.flags]
    half = config.dtype.value == "float16"
    float32_vanishing = config.dtype.value == "float32" and verdict.status is Status.VANISHING
    if not flagged or not (half or float32_vanishing):
        return None
    means = [p.grad_mean_abs.median for layer in layers for p in layer.parameters
             if p.grad_mean_abs.median and p.name not in cancelled_parameters(layer)]
    peaks = [p.grad_max_abs.max for layer in layers for p in layer.parameters if p.grad_max_abs.max]
    if not means or not peaks:
        return None
    thresholds = config.thresholds
    needed = max(0, math.ceil(math.log2(thresholds.fp16_normal_min / min(means))))
    room = math.floor(math.log2(thresholds.fp16_max / max(peaks)))
    exponent = min(needed, room, 24)
    fits = needed <= room
    remedy = Remedy(
        id="loss-scaling", rank=0,
        title=(f"Use dynamic loss scaling (torch.amp.GradScaler, init_scale=2**{exponent})"
               if fits else "Train in bfloat16 rather than float16"),
        rationale=(f"In {len(flagged)} layer(s) most gradient entries lie below float16's normal "
                   f"range ({thresholds.fp16_normal_min:g}); the smallest mean |gradient| of a "
                   f"parameter is {min(means):.3g}. "
                   + (f"Scaling the loss by 2**{exponent} lifts it into range while the largest "
                      f"entry ({max(peaks):.3g}) stays below {thresholds.fp16_max:g}."
                      if fits else
                      f"No single scale fits: lifting the smallest by 2**{needed} would overflow "
                      f"the largest ({max(peaks):.3g}); bfloat16 keeps float32's exponent range.")),
        layers=[layer.name for layer in flagged],
        params={"grad_scaler_init_scale": 2 ** exponent, "dtype": "float16" if fits else
                "bfloat16", "needed_scale_exponent": needed, "headroom_exponent": room},
    )
    return Candidate(remedy, None, "a training-time setting: the sample pass measures the "
                     "gradients it would scale")


BUILDERS = (_replace_activation, _fix_dead_units, _reinitialize, _data_dependent_init,
            _add_normalization, _add_residual, _gated_cells, _gate_init, _truncate_bptt,
            _clip_gradients, _lower_learning_rate, _loss_scaling)

__all__ = ["Candidate", "Context", "init_plan", "is_weight", "propose"]
