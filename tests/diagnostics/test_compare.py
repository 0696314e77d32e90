"""diagnostics.compare: per-layer changes matched by name, and the CI gate's decision."""

from __future__ import annotations

import math

import pytest

from diagnostics.compare import compare_reports
from diagnostics.render.comparison import render_comparison_html, render_comparison_text
from diagnostics.report import Report, Stat, Status
from tests.report_factory import demo_report


def _scaled(report: Report, factors: dict[str, float]) -> Report:
    """A copy whose named layers' backward signals are multiplied by the given factors."""
    copy = report.model_copy(deep=True)
    for layer in copy.layers:
        factor = factors.get(layer.name)
        if factor is not None and layer.output_grad_norm is not None:
            s = layer.output_grad_norm
            layer.output_grad_norm = Stat(median=s.median * factor, min=s.min * factor,
                                          max=s.max * factor)
    return copy


def test_identical_reports_are_not_worse_and_every_layer_matches():
    report = demo_report(blocks=6)
    result = compare_reports(report, report)
    assert not result.worse
    assert result.reasons == []
    assert len(result.layers) == len(report.layers)
    assert all(c.signal_change == pytest.approx(1.0) for c in result.layers)
    assert result.reference_layer == report.verdict.evidence.shallowest_layer
    assert result.only_before == result.only_after == []


def test_uniform_scaling_of_every_signal_is_not_a_regression():
    # A loss scaled by 1000 multiplies every δ alike: the profile over depth is the same.
    report = demo_report(blocks=6)
    louder = _scaled(report, {layer.name: 1000.0 for layer in report.layers})
    result = compare_reports(report, louder)
    assert not result.worse
    assert all(c.signal_change == pytest.approx(1000.0) for c in result.layers)
    assert all(c.drift == pytest.approx(1.0) for c in result.layers)


@pytest.mark.parametrize(("shrink", "factor", "worse"), [
    (1 / 100, 10.0, True),     # layer 0's signal 100x smaller relative to the reference
    (1 / 5, 10.0, False),      # 5x: within the factor
    (1 / 100, 1000.0, False),  # a looser gate
], ids=["100x-smaller-fails", "5x-passes", "loose-factor-passes"])
def test_a_layer_moving_away_from_the_reference_beyond_the_factor_regresses(shrink, factor,
                                                                          worse):
    report = demo_report(blocks=6)
    first = report.layers[0].name
    result = compare_reports(report, _scaled(report, {first: shrink}), factor=factor)
    assert result.worse is worse
    change = next(c for c in result.layers if c.name == first)
    assert change.signal_change == pytest.approx(shrink)
    assert change.regressed is worse
    if worse:
        assert any(first in reason for reason in result.reasons)


def test_a_layer_moving_toward_the_reference_is_an_improvement_not_a_regression():
    report = demo_report(blocks=6)  # vanishing: the first layers are far below the reference
    first = report.layers[0].name
    result = compare_reports(report, _scaled(report, {first: 1e4}))
    change = next(c for c in result.layers if c.name == first)
    assert not result.worse
    assert change.drift is not None
    assert change.drift < 1


def test_verdict_from_healthy_to_anything_else_is_worse_and_the_reverse_is_not():
    healthy = demo_report(blocks=4)
    healthy.verdict.status = Status.HEALTHY
    vanishing = demo_report(blocks=4)
    assert compare_reports(healthy, vanishing).worse
    assert compare_reports(healthy, vanishing).reasons[0].startswith("the verdict went")
    assert not compare_reports(vanishing, healthy).worse


def test_a_signal_that_becomes_zero_or_non_finite_regresses():
    report = demo_report(blocks=4)
    zero = _scaled(report, {report.layers[1].name: 0.0})
    assert compare_reports(report, zero).layers[1].regressed
    broken = report.model_copy(deep=True)
    broken.layers[2].output_grad_nonfinite_count = 3
    broken.layers[2].output_grad_norm = Stat(median=None, min=None, max=None)
    result = compare_reports(report, broken)
    assert result.worse
    assert "non-finite" in (result.layers[2].reason or "")


def test_layers_and_parameters_are_matched_by_name():
    before = demo_report(blocks=4)
    after = before.model_copy(deep=True)
    renamed = after.layers[0]
    renamed.name = "stem.0"
    result = compare_reports(before, after)
    assert result.only_before == [before.layers[0].name]
    assert result.only_after == ["stem.0"]
    assert len(result.layers) == len(before.layers) - 1
    names = {p.name for p in result.parameters}
    assert names == {p.name for layer in before.layers for p in layer.parameters}
    assert all(p.change == pytest.approx(1.0) for p in result.parameters)


def test_factor_must_exceed_one():
    report = demo_report(blocks=2)
    for bad in (1.0, 0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="factor"):
            compare_reports(report, report, factor=bad)


def test_renderers_show_the_gate_and_escape_names():
    before = demo_report(blocks=4)
    after = _scaled(before, {before.layers[0].name: 1e-4})
    after.layers[0].name = before.layers[0].name  # keep the match
    result = compare_reports(before, after)
    text = render_comparison_text(result)
    assert text.startswith("Gradient health: WORSE")
    assert f"!  {before.layers[0].name}" in text
    html = render_comparison_html(result, "<b>old</b>", "new")
    assert "&lt;b&gt;old&lt;/b&gt;" in html
    assert "<b>old</b>" not in html
    assert "<script" not in html
    assert "got worse" in html
