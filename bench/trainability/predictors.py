"""The predictors the benchmark scores: GradDoctor's verdict and the anchors' one-batch rules."""

from __future__ import annotations

from typing import Any

from bench.trainability.anchors import anchor_calls
from bench.trainability.models import BenchModel

# GradDoctor's default configuration, one sample (a single probe pass, as the anchors get one
# batch) and no remedy verification (it does not change the status and costs re-probes).
DIAGNOSE_CONFIG = {"samples": 1, "verify_remedies": False}
# Training outcome depends on the optimizer (14 models train under one and stall under the
# other), so each label set is predicted with the optimizer it was trained with, at that
# optimizer's default learning rate: SGD 1e-2 and Adam 1e-3, both inside its labelling grid
# (bench/trainability/labelling.py). The "agreed" labels are scored with the default (SGD).
OPTIMIZER_CONFIGS = {"sgd": {**DIAGNOSE_CONFIG, "optimizer": "sgd"},
                     "adam": {**DIAGNOSE_CONFIG, "optimizer": "adam"}}
# What the training loss reads of a sequence, told as a user would tell it: the adding problem's
# loss is the last step's error (tasks.Task.loss). The anchors' rules get that very loss too.
TASK_CONFIGS = {"adding": {"sequence_loss": "last_step"}}


def config_for(model: BenchModel, optimizer: str) -> dict[str, Any]:
    """The config GradDoctor is scored with on ``model`` against ``optimizer``'s labels."""
    return {**OPTIMIZER_CONFIGS[optimizer], **TASK_CONFIGS.get(model.task, {})}


def _median(stat: Any) -> float | None:
    return None if stat is None else stat.median


def graddoctor_call(model: BenchModel,
                    config: dict[str, Any] = DIAGNOSE_CONFIG) -> tuple[str, dict[str, Any]]:
    """GradDoctor's status for ``model`` with ``config`` (default: the default config), and its
    key evidence."""
    from diagnostics import diagnose

    report = diagnose(model.spec, config=config)
    verdict = report.verdict
    evidence = verdict.evidence
    facts: dict[str, Any] = {
        "backward_signal_ratio": _median(evidence.backward_signal_ratio),
        "backward_signal_ratio_raw": _median(evidence.backward_signal_ratio_raw),
        "per_layer_gain": evidence.per_layer_gain,
        "weight_grad_ratio": _median(evidence.weight_grad_ratio),
        "weight_grad_l1_ratio": _median(evidence.weight_grad_l1_ratio),
        "first_weight_grad_rms": evidence.first_weight_grad_rms,
        "forward_growth": _median(evidence.forward_growth),
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


def predict(model: BenchModel) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """Every predictor's call on ``model`` per label set, and the evidence behind them.

    GradDoctor is asked once per optimizer (``OPTIMIZER_CONFIGS``); the "agreed" label set gets
    its SGD call, the default. The anchors' one-batch rules know no optimizer: one call for all.
    """
    found = {name: graddoctor_call(model, config_for(model, name)) for name in OPTIMIZER_CONFIGS}
    anchors, facts = anchor_calls(model)
    calls = {label_set: {"graddoctor": found["sgd" if label_set == "agreed" else label_set][0],
                         **anchors} for label_set in ("sgd", "adam", "agreed")}
    evidence = {f"graddoctor_{name}": ev for name, (_status, ev) in found.items()}
    return calls, {**evidence, "anchors": facts}
