"""Remedies for weight scales: re-initialize by the fan-in rule of each layer's activation, or
rescale data-dependently (LSUV).
"""

from __future__ import annotations

import math
from collections import Counter

from torch import nn

from diagnostics import anatomy
from diagnostics.inputs import SampleBatch
from diagnostics.model import LoadedModel
from diagnostics.remedies import edits
from diagnostics.remedies.candidates import Candidate, Context, ratio_sentence, round_or_none
from diagnostics.report import Remedy, Status


def reinitialize(context: Context) -> Candidate | None:
    model = context.model
    verdict = context.found.verdict
    config = context.config
    if verdict.status is Status.HEALTHY:
        return None
    plan = anatomy.init_plan(model)
    tolerance = anatomy.INIT_TOLERANCE
    off = [p for p in plan if not (1 / tolerance <= p["ratio"] <= tolerance)]
    if not off:
        return None
    worst = max(off, key=lambda p: abs(math.log(max(p["ratio"], 1e-300))))
    centred = [p for p in off if p["input_mean"]]
    schemes = sorted({p["scheme"] for p in off})
    # A weight shared by several layers (an unrolled recurrence, tied layers) counts once.
    count = len({p["parameter"] for p in off})
    remedy = Remedy(
        id="reinitialize", rank=0,
        title=f"Re-initialize {count} weight(s) with {', '.join(schemes)}",
        rationale=(f"{ratio_sentence(verdict.evidence)}{count} weight(s) are off the fan-in "
                   f"rule for the activation that follows them; worst: {worst['parameter']} has "
                   f"std {worst['measured_std']:.3g} where {worst['scheme']} gives "
                   f"{worst['std']:.3g} ({worst['ratio']:.3g}×). Each layer scales the backward "
                   "signal by about that factor (times the activation's slope)."),
        layers=[p["layer"] for p in off],
        params={"weights": {p["parameter"]: {"scheme": p["scheme"], "std": round_or_none(p["std"]),
                                             "measured_std": round_or_none(p["measured_std"])}
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


def data_dependent_init(context: Context) -> Candidate | None:
    model = context.model
    verdict = context.found.verdict
    if verdict.status is Status.HEALTHY:
        return None
    # LSUV fits each layer's own weights in turn: a weight several layers share (every step's
    # copy of an unrolled cell, tied layers) cannot be fitted to each of them.
    users = Counter(name for layer in model.layers for name in layer.parameters)
    rescalable = [layer.name for layer in model.layers
                  if isinstance(model.module.get_submodule(layer.module_path),
                                (nn.Linear, nn.modules.conv._ConvNd))
                  and not anatomy.in_unrolled_cell(model, layer)
                  and all(users[name] == 1 for name in layer.parameters)]
    if not rescalable:
        return None
    remedy = Remedy(
        id="data-dependent-init", rank=0,
        title=f"LSUV: rescale {len(rescalable)} layer(s) to unit output variance on your data",
        rationale=(f"{ratio_sentence(verdict.evidence)}Layer-sequential unit-variance "
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
