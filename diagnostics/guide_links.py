"""Where the guide explains each finding: rule, cause and remedy ids -> guide section links.

The one table behind every ``doc`` field of a report. A link is the path the service serves the
guide under (``/guide/<page>#<anchor>``); the Markdown source of ``<page>`` is
``docs/guide/<page>.md``, and every anchor is the id itself, written as that page's heading.
``tests/diagnostics/test_guide_links.py`` checks that every id the code can produce is here and
that every anchor exists. :func:`link_report` fills a finished report's links.
"""

from __future__ import annotations

from collections.abc import Iterable

from diagnostics.report import Cause, Remedy, Report, RuleCheck

GUIDE_PATH = "/guide"

RULES = ("non_finite", "no_gradient", "dead_layer", "rounding_noise", "folded_batchnorm",
         "forward_scale_exploding", "backward_signal_exploding", "backward_signal_vanishing",
         "adam_epsilon", "weight_gradient_vanishing", "relative_update", "temporal_vanishing")
CAUSES = ("saturating_activations", "dead_units", "initialization_scale", "plain_depth",
          "recurrent_memory", "low_precision", "small_readout", "large_output_scale")
REMEDIES = ("replace-activation", "fix-dead-units", "reinitialize", "data-dependent-init",
            "add-normalization", "add-residual", "gated-cells", "chrono-init", "truncate-bptt",
            "clip-gradients", "lower-learning-rate", "loss-scaling")

# id -> "page#anchor" (page without .md). Each kind has its own page, anchored by the id.
LINKS: dict[str, dict[str, str]] = {
    "rule": {rule: f"rules#{rule}" for rule in RULES},
    "cause": {cause: f"causes#{cause}" for cause in CAUSES},
    "remedy": {remedy: f"remedies#{remedy}" for remedy in REMEDIES},
}


def doc_link(kind: str, identifier: str) -> str | None:
    """The guide path for a ``rule``, ``cause`` or ``remedy`` id, or None if it has no section."""
    target = LINKS.get(kind, {}).get(identifier)
    return f"{GUIDE_PATH}/{target}" if target else None


def link_report(report: Report) -> None:
    """Set ``doc`` on every rule check, cause and remedy of a report (in place).

    The one place the links are filled: the pipeline calls it on the finished report, so the
    code that builds rules, causes and remedies needs to know nothing about the guide.
    """
    link_rules(report.verdict.evidence.rules)
    link_causes(report.causes)
    link_remedies(report.remedies)


def link_rules(rules: Iterable[RuleCheck]) -> None:
    """Set ``doc`` on each rule check (in place)."""
    for rule in rules:
        rule.doc = doc_link("rule", rule.rule)


def link_causes(causes: Iterable[Cause]) -> None:
    """Set ``doc`` on each cause (in place)."""
    for cause in causes:
        cause.doc = doc_link("cause", cause.id)


def link_remedies(remedies: Iterable[Remedy]) -> None:
    """Set ``doc`` on each remedy (in place)."""
    for remedy in remedies:
        remedy.doc = doc_link("remedy", remedy.id)
