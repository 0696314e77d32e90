"""Re-probe a copy of the model with each remedy applied, and rank remedies by what that showed.

The re-probe uses the same inputs and seeds as the diagnosis, so "before" and "after" differ only
by the remedy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from diagnostics.config import DiagnosisConfig
from diagnostics.errors import DiagnosticsError
from diagnostics.examination import Examination, examine
from diagnostics.inputs import SampleBatch
from diagnostics.model import LoadedModel, copy_model, restoring_values
from diagnostics.probe import probe_mode
from diagnostics.remedies.candidates import Candidate
from diagnostics.report import Remedy, Status, Verification


def evidence_digest(found: Examination) -> dict:
    """The few numbers a before/after comparison needs."""
    verdict = found.verdict
    evidence = verdict.evidence
    ratio = evidence.backward_signal_ratio.median if evidence.backward_signal_ratio else None
    digest = {
        "status": verdict.status.value,
        "backward_signal_ratio": ratio,
        "per_layer_gain": evidence.per_layer_gain,
        "max_grad_to_weight": evidence.max_grad_to_weight,
        "max_relative_step": evidence.max_relative_step,
        "nonfinite_count": evidence.nonfinite_count,
        "dead_layers": list(evidence.dead_layers),
        "summary": verdict.summary,
    }
    for profile in found.temporal[:1]:
        digest.update(temporal_status=profile.status.value,
                      temporal_ratio=profile.first_to_last_ratio,
                      effective_horizon=profile.effective_horizon)
    return digest


def verify(candidates: list[Candidate], model: LoadedModel, batches: list[SampleBatch],
           config: DiagnosisConfig, before: Examination,
           progress: Callable[[str], None] | None = None) -> list[Remedy]:
    """Apply each candidate's edit to a fresh copy, re-probe, and attach the result.

    ``progress`` is told ``"verifying remedy k/n (id)"`` before each re-probe.

    Returns:
        The remedies, ranked: verified healthy first (closest to a unit signal ratio), then
        verified improvements, then unverified ones in proposal order, then verified failures.
    """
    digest_before = evidence_digest(before)
    say = progress or (lambda _message: None)
    checked = [c for c in candidates if c.edit is not None]
    for candidate in candidates:
        if candidate.edit is None:
            candidate.remedy.verification_note = candidate.note
            continue
        say(f"verifying remedy {checked.index(candidate) + 1}/{len(checked)} "
            f"({candidate.remedy.id})")
        try:
            if candidate.rebuilds:  # a new model from an edited spec: copying the old is waste
                after = examine(candidate.edit(model, batches), batches, config)
            elif candidate.remedy.repairable:  # values only: edit in place, then put them back
                with restoring_values(model):
                    with probe_mode(model.module, config.norm_stats):
                        edited = candidate.edit(model, batches)
                    after = examine(edited, batches, config)
            else:
                copy = copy_model(model)
                with probe_mode(copy.module, config.norm_stats):
                    edited = candidate.edit(copy, batches)
                after = examine(edited, batches, config)
        except DiagnosticsError as exc:
            candidate.remedy.verification_note = f"verification failed: {exc.detail}"
            continue
        judged_on = "temporal" if candidate.temporal and before.temporal and after.temporal \
            else "verdict"
        candidate.remedy.verified = Verification(
            judged_on=judged_on, status_before=_status(before, judged_on),
            status_after=_status(after, judged_on),
            evidence_before=digest_before, evidence_after=evidence_digest(after))
    return rank([c.remedy for c in candidates])


def _status(found: Examination, judged_on: str) -> Status:
    return found.temporal[0].status if judged_on == "temporal" else found.verdict.status


def skip_verification(candidates: list[Candidate], reason: str) -> list[Remedy]:
    for candidate in candidates:
        candidate.remedy.verification_note = reason if candidate.edit else candidate.note
    return rank([c.remedy for c in candidates])


def _distance(digest: dict, judged_on: str = "verdict") -> float:
    ratio = digest.get("temporal_ratio" if judged_on == "temporal" else "backward_signal_ratio")
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return math.inf
    return abs(math.log10(ratio))


def _key(indexed: tuple[int, Remedy]) -> tuple:
    order, remedy = indexed
    check = remedy.verified
    if check is None:
        return (2, 0.0, order)
    after = _distance(check.evidence_after, check.judged_on)
    if check.status_after is Status.HEALTHY:
        return (0, after, order)
    if after < _distance(check.evidence_before, check.judged_on) or (
            check.evidence_after.get("nonfinite_count", 0)
            < check.evidence_before.get("nonfinite_count", 0)):
        return (1, after, order)
    return (3, after, order)


def rank(remedies: list[Remedy]) -> list[Remedy]:
    ranked = [remedy for _, remedy in sorted(enumerate(remedies), key=_key)]
    for position, remedy in enumerate(ranked, 1):
        remedy.rank = position
    return ranked
