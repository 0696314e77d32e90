"""Verdict + layer context -> candidate remedies, each with the edit that would verify it.

A remedy is proposed only when the evidence supports it, and its rationale cites that evidence
(layer names, measured numbers). Where the change can be made to a copy of the model, the
candidate carries the edit; :mod:`diagnostics.remedies.verification` re-probes the edited copy.
"""

from __future__ import annotations

from diagnostics.config import DiagnosisConfig
from diagnostics.examination import Examination
from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.model import LoadedModel
from diagnostics.remedies.activations import fix_dead_units, replace_activation
from diagnostics.remedies.architecture import add_normalization, add_residual
from diagnostics.remedies.candidates import Candidate, Context
from diagnostics.remedies.initialization import data_dependent_init, reinitialize
from diagnostics.remedies.recurrent import gate_init, gated_cells, truncate_bptt
from diagnostics.remedies.training import clip_gradients, loss_scaling, lower_learning_rate
from diagnostics.report import Status


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


BUILDERS = (replace_activation, fix_dead_units, reinitialize, data_dependent_init,
            add_normalization, add_residual, gated_cells, gate_init, truncate_bptt,
            clip_gradients, lower_learning_rate, loss_scaling)
