"""Structural remedies for deep plain chains: normalization layers and residual connections
(verified on spec models, advice on ONNX graphs).
"""

from __future__ import annotations

from diagnostics import anatomy
from diagnostics.remedies import spec_edits
from diagnostics.remedies.candidates import Candidate, Context, ratio_sentence, structural
from diagnostics.report import Remedy, Status


def add_normalization(context: Context) -> Candidate | None:
    model = context.model
    verdict = context.found.verdict
    # An unrolled recurrence's "depth" is its time steps: the remedy is a gated cell, not this.
    if verdict.status is Status.HEALTHY or anatomy.has_normalization(model) \
            or model.unrolled_recurrence is not None:
        return None
    count = anatomy.weighted_count(model)
    if count < 4:
        return None
    convolutional = any(op.startswith("Conv") for op in {layer.op_type for layer in model.layers})
    kind = "BatchNorm" if convolutional else "LayerNorm"
    remedy = Remedy(
        id="add-normalization", rank=0,
        title=f"Add {kind} after each of the {count} layers with weights",
        rationale=(f"{ratio_sentence(verdict.evidence)}The model has no normalization layer: "
                   "nothing keeps the activation scale, and with it the per-layer gain, near 1 as "
                   f"depth grows. {kind} ({'CNN' if convolutional else 'sequence/MLP'}) "
                   "re-centres and rescales every layer's output."),
        layers=[layer.name for layer in model.layers if anatomy.weight_of(model, layer)],
        params={"normalization": kind, "position": "after each layer with weights, before its "
                                                   "activation"},
    )
    return structural(context, remedy, spec_edits.insert_normalization)


def add_residual(context: Context) -> Candidate | None:
    model = context.model
    verdict = context.found.verdict
    if verdict.status is Status.HEALTHY or not anatomy.is_chain(model) \
            or model.unrolled_recurrence is not None:
        return None
    count = anatomy.weighted_count(model)
    if count < anatomy.DEEP_CHAIN:
        return None
    remedy = Remedy(
        id="add-residual", rank=0,
        title=f"Add residual connections around the blocks of this {count}-layer plain stack",
        rationale=(f"{ratio_sentence(verdict.evidence)}The model is a plain chain of {count} "
                   "layers with weights and no skip connection: every layer multiplies the "
                   "backward signal. Residual blocks (He et al. 2016) give it an identity path; "
                   "zero-init the last layer of each branch (Fixup, ReZero) so the net starts as "
                   "identity."),
        layers=[layer.name for layer in model.layers if anatomy.weight_of(model, layer)],
        params={"block": "layer with weights + activation", "branch_last_layer_init": "zeros"},
    )
    return structural(context, remedy, spec_edits.wrap_residual)
