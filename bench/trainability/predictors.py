"""The predictors the benchmark scores: GradDoctor's verdict and the anchors' one-batch rules."""

from __future__ import annotations

from typing import Any

from bench.trainability.anchors import anchor_calls
from bench.trainability.models import BenchModel

# GradDoctor's default configuration, one sample (a single probe pass, as the anchors get one
# batch) and no remedy verification (it does not change the status and costs re-probes).
DIAGNOSE_CONFIG = {"samples": 1, "verify_remedies": False}


def _median(stat: Any) -> float | None:
    return None if stat is None else stat.median


def graddoctor_call(model: BenchModel) -> tuple[str, dict[str, Any]]:
    """GradDoctor's status for ``model`` with the default config, and its key evidence."""
    from diagnostics import diagnose

    report = diagnose(model.spec, config=DIAGNOSE_CONFIG)
    verdict = report.verdict
    evidence = verdict.evidence
    facts: dict[str, Any] = {
        "backward_signal_ratio": _median(evidence.backward_signal_ratio),
        "backward_signal_ratio_raw": _median(evidence.backward_signal_ratio_raw),
        "per_layer_gain": evidence.per_layer_gain,
        "weight_grad_ratio": _median(evidence.weight_grad_ratio),
        "max_grad_to_weight": evidence.max_grad_to_weight,
        "max_grad_to_weight_parameter": evidence.max_grad_to_weight_parameter,
        "nonfinite_count": evidence.nonfinite_count,
        "rules_fired": [rule.rule for rule in evidence.rules if rule.fired],
        "flags": sorted({str(flag) for flag in verdict.flags}),
        "dead_layers": len(evidence.dead_layers),
        "saturated_layers": len(evidence.saturated_layers),
        "summary": verdict.summary,
    }
    if report.temporal:
        profile = report.temporal[0]
        facts["temporal"] = {"status": str(profile.status),
                             "effective_horizon": profile.effective_horizon,
                             "steps": len(profile.grad_norms),
                             "first_to_last_ratio": profile.first_to_last_ratio,
                             "decay_per_step": profile.decay_per_step}
    return str(verdict.status), facts


def predict(model: BenchModel) -> tuple[dict[str, str], dict[str, Any]]:
    """Every predictor's call on ``model`` and the evidence behind them."""
    status, evidence = graddoctor_call(model)
    calls, facts = anchor_calls(model)
    return {"graddoctor": status, **calls}, {"graddoctor": evidence, "anchors": facts}
