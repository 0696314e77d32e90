"""Remedies for activations: saturating units (replace them, He-initialize what feeds them)
and dead ReLU units (LeakyReLU, zero biases).
"""

from __future__ import annotations

import math

from torch import nn

from diagnostics import anatomy
from diagnostics.inputs import SampleBatch
from diagnostics.model import Activation, LoadedModel
from diagnostics.remedies import edits
from diagnostics.remedies.candidates import Candidate, Context, ratio_sentence
from diagnostics.report import Flag, Remedy, Status


def hidden_saturating(model: LoadedModel) -> list[int]:
    return [i for i, layer in enumerate(model.layers)
            if layer.activation in anatomy.SATURATING and layer.depth > 0
            and not anatomy.in_unrolled_cell(model, layer)]


def replace_activation(context: Context) -> Candidate | None:
    model = context.model
    layers = context.found.layers
    verdict = context.found.verdict
    config = context.config
    if verdict.status is not Status.VANISHING:
        return None
    targets = hidden_saturating(model)
    if not targets:
        return None
    names = [model.layers[i].name for i in targets]
    saturated = [layers[i].name for i in targets if Flag.SATURATED in layers[i].flags]
    feeding = sorted({f for i in targets if (f := anatomy.feeding_layer(model, i)) is not None})
    kinds = sorted({model.layers[i].op_type for i in targets})
    sigmoid_like = any(model.layers[i].activation in anatomy.SIGMOID_LIKE for i in targets)
    detail = f"; {len(saturated)} of them saturated" if saturated else ""
    remedy = Remedy(
        id="replace-activation", rank=0,
        title=f"Replace {'/'.join(kinds)} with ReLU in {len(names)} hidden layer(s) and "
              "He-initialize the layers feeding them",
        rationale=(f"{ratio_sentence(verdict.evidence)}{', '.join(kinds)} has slope at most "
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
            found = anatomy.weight_of(copy, copy.layers[f])
            layout = found and anatomy.weight_layout(copy, copy.layers[f], found[1])
            if found and layout:
                plan[found[0]] = edits.InitChoice(math.sqrt(2.0 / layout.fan_in))
        edits.reinitialize(copy, plan, config.seed)
        return copy

    return Candidate(remedy, edit)


def fix_dead_units(context: Context) -> Candidate | None:
    model = context.model
    layers = context.found.layers
    targets = [i for i, layer in enumerate(layers)
               if Flag.DEAD in layer.flags or Flag.DYING in layer.flags]
    if not targets:
        return None
    described = []
    for i in targets:
        stats = layers[i].activations
        dead = stats.dead_fraction.median if stats and stats.dead_fraction else None
        described.append(f"{layers[i].name} ({dead:.0%} of units never active)" if dead is not None
                         else layers[i].name)
    biases = {i: anatomy.bias_of(model, f) for i in targets
              if (f := anatomy.feeding_layer(model, i)) is not None}
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
