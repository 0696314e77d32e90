"""What a remedy builder returns and what it looks at: Candidate, Context, Edit, and the
helpers every family shares (the ratio sentence, structural edits of spec models).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from diagnostics.config import DiagnosisConfig
from diagnostics.examination import Examination
from diagnostics.inputs import SampleBatch
from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.model import LoadedModel
from diagnostics.report import Evidence, Remedy

# An edit gets a private copy of the model (and the sample batches) and returns the model to
# re-examine: the copy edited in place, or a model rebuilt from an edited spec.
Edit = Callable[[LoadedModel, list[SampleBatch]], LoadedModel]


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


def ratio_sentence(evidence: Evidence) -> str:
    """The measured signal ratio as a leading sentence, or nothing where none was measured."""
    ratio = evidence.backward_signal_ratio.median if evidence.backward_signal_ratio else None
    if ratio is None:
        return ""
    return (f"The backward signal at {evidence.deepest_layer} is {ratio:.3g}× (width-corrected) "
            f"that at {evidence.shallowest_layer}. ")


def round_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.4g}")


ONNX_STRUCTURE_NOTE = ("not verified: inserting or replacing layers in an ONNX graph would be "
                       "speculative (where, with which shapes); the recommendation stands on the "
                       "evidence")


def structural(context: Context, remedy: Remedy,
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
