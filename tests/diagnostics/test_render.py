"""Rendering hand-built reports to HTML and text: self-contained, escaped, robust to gaps."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser

import pytest

from diagnostics.config import DiagnosisConfig
from diagnostics.render import render_html, render_text
from diagnostics.render._format import number
from diagnostics.report import (
    ActivationStats,
    Evidence,
    Flag,
    LayerReport,
    ParameterStats,
    Remedy,
    Report,
    RuleCheck,
    SampleReport,
    SamplesReport,
    SourceReport,
    Stat,
    Status,
    TemporalProfile,
    Timings,
    Verdict,
    Verification,
)
from tests.report_factory import demo_report

XSS_NAME = "<script>alert(1)</script>"
ATTR_XSS_NAME = '"><img src=x onerror=alert(1)>'
NONE = Stat(median=None, min=None, max=None)


def _stat(value: float | None) -> Stat:
    return NONE if value is None else Stat(median=value, min=value / 2, max=value * 2)


def _layer(i: int, n: int, name: str | None = None) -> LayerReport:
    """Layer i of n: every 3rd flagged, every 4th without a backward signal, every 5th all-None."""
    grad = 10.0 ** (-(n - i) / 2)
    empty = i % 5 == 4
    param = ParameterStats(
        name=f"layers.{i}.weight", shape=[4, 4], grad_norm=_stat(None if empty else grad),
        grad_rms=_stat(grad), grad_mean_abs=_stat(grad), grad_max_abs=_stat(grad),
        weight_norm=None if empty else 1.0, grad_to_weight=_stat(None if empty else grad),
        zero_fraction=_stat(0.0), nonfinite_count=0,
    )
    return LayerReport(
        name=name or f"layers.{i}", op_type="Gemm" if i % 2 == 0 else "Sigmoid", index=i,
        depth=n - 1 - i, kinds=["parametric"],
        output_grad_norm=None if i % 4 == 3 else _stat(None if empty else grad),
        activations=None if empty else ActivationStats(
            mean=_stat(0.1), std=_stat(1.0), saturated_fraction=_stat(0.6) if i % 2 else None),
        parameters=[] if i % 2 else [param],
        flags=[Flag.VANISHING, Flag.SATURATED] if i % 3 == 0 else [],
    )


def make_report(
    n_layers: int = 12, names: dict[int, str] | None = None, temporal: bool = False
) -> Report:
    """A valid vanishing report with ``n_layers`` layers, a verified and an unverified remedy."""
    names = names or {}
    layers = [_layer(i, n_layers, names.get(i)) for i in range(n_layers)]
    first = layers[0].name if layers else "x"
    evidence = Evidence(
        backward_signal_ratio=_stat(1e-6), per_layer_gain=0.3, deepest_layer=first,
        rules=[RuleCheck(rule="backward_signal_ratio < vanishing_ratio", value=1e-6,
                         threshold=1e-3, fired=True, detail="signal shrinks"),
               RuleCheck(rule="nonfinite", value=None, threshold=None, fired=False, detail="none")],
    )
    remedies = [
        Remedy(id="reinit-kaiming", rank=2, title="Re-initialize", rationale=f"{first} is small",
               layers=[layer.name for layer in layers],
               params={"weights": {f"{first}.weight": {"scheme": "kaiming_normal", "std": 0.17}},
                       "biases": "zeros", "layers": [first, "other"]},
               verification_note="too large to verify"),
        Remedy(id="replace-activation", rank=1, title="Use ReLU", rationale="saturated sigmoids",
               layers=[first], params={"activation": "ReLU", "per_layer": {"a": 1}},
               verified=Verification(
                   status_before=Status.VANISHING, status_after=Status.HEALTHY,
                   evidence_before={"backward_signal_ratio": 1e-6},
                   evidence_after={"backward_signal_ratio": 0.5, "extra": [1, 2],
                                   "summary": "healthy now"})),
    ]
    profiles = [TemporalProfile(input="tokens", axis=1, grad_norms=[None, 0.0, 1e-3, 1e-2, 1e-1],
                                decay_per_step=0.1, effective_horizon=2, first_to_last_ratio=None,
                                status=Status.VANISHING)]
    return Report(
        source=SourceReport(kind="onnx", sha256="ab" * 32, name="model.onnx", opset=17),
        config=DiagnosisConfig(),
        verdict=Verdict(status=Status.VANISHING, summary="Gradients vanish toward the input.",
                        flags=[Flag.VANISHING], evidence=evidence),
        layers=layers, remedies=remedies, temporal=profiles if temporal else [],
        samples=SamplesReport(count=2, batch_size=4, input_shapes={"x": [4, 8]},
                              runs=[SampleReport(seed=0, loss=0.5, status=Status.VANISHING),
                                    SampleReport(seed=1, loss=None, status=Status.VANISHING)]),
        timings=Timings(total_s=1.5), notes=["a note"],
    )


class _Structure(HTMLParser):
    """Records elements, ids, attribute values and checks that non-void tags balance."""

    VOID = frozenset({"meta", "br", "img", "link", "input", "hr", "wbr", "source"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")


def _parse(page: str) -> _Structure:
    parser = _Structure()
    parser.feed(page)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def full_page() -> str:
    """The full page of a report with every section, rendered once (matplotlib takes ~1 s)."""
    return render_html(make_report(temporal=True))


def test_html_is_one_balanced_document(full_page: str) -> None:
    page = full_page
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<html") == 1
    assert page.count("</html>") == 1
    structure = _parse(page)
    assert structure.errors == []
    assert structure.stack == []


def test_html_requests_nothing_outside_the_page(full_page: str) -> None:
    page = full_page
    structure = _parse(page)
    for tag, attrs in structure.tags:
        for key in ("src", "href", "xlink:href", "action", "data"):
            value = attrs.get(key)
            assert value is None or value.startswith("#"), (tag, key, value)
    assert not {tag for tag, _ in structure.tags} & {"script", "link", "img", "iframe", "object"}
    assert "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(?!#)", page)
    assert "default-src 'none'" in page  # the Content-Security-Policy


def test_html_has_gradient_flow_svg_with_stable_id(full_page: str) -> None:
    page = full_page
    structure = _parse(page)
    plots = [tag for tag, attrs in structure.tags if attrs.get("id") == "gradient-flow-plot"]
    assert plots == ["svg"]
    assert any(attrs.get("id") == "temporal-plot" for _, attrs in structure.tags)
    ids = [attrs["id"] for _, attrs in structure.tags if attrs.get("id")]
    assert len(ids) == len(set(ids)), "two plots on one page must not share element ids"


@pytest.mark.parametrize("name", [XSS_NAME, ATTR_XSS_NAME], ids=["script-tag", "attribute-break"])
def test_html_escapes_layer_names(name: str) -> None:
    page = render_html(make_report(names={0: name, 3: name}))
    assert name not in page
    assert "&lt;script&gt;" in page or "&quot;&gt;&lt;img" in page
    tags = {tag for tag, _ in _parse(page).tags}
    assert "script" not in tags
    assert "img" not in tags


def test_html_handles_none_statistics_and_odd_names() -> None:
    report = make_report(n_layers=10, names={2: "cost $x^{2$ 100%", 4: "tab\tand\x1bescape"})
    page = render_html(report)
    assert "—" in page  # missing statistics shown as a dash, not "None"
    assert ">None<" not in page
    assert ">nan<" not in page.lower()
    assert "tab\\x09and\\x1bescape" in page


def test_plot_marks_zero_and_non_finite_signals_on_the_edges() -> None:
    report = make_report(n_layers=3)
    report.layers[1].output_grad_norm = Stat(median=0.0, min=0.0, max=0.0)
    report.layers[2].output_grad_nonfinite_count = 5
    page = render_html(report)
    assert "‖δ‖ = 0 (exactly)" in page  # legend entries (matplotlib keeps text as comments)
    assert "non-finite values" in page


def test_html_with_zero_layers_still_has_the_plot() -> None:
    page = render_html(make_report(n_layers=0))
    assert 'id="gradient-flow-plot"' in page
    assert "No layers were measured." in page


def test_html_shows_verdict_remedies_and_verification(full_page: str) -> None:
    page = full_page
    assert 'class="badge s-vanishing"' in page
    assert "Gradients vanish toward the input." in page
    assert page.index("Use ReLU") < page.index("Re-initialize")  # ranked, not in list order
    assert "Verified by re-probing" in page
    assert 'class="badge s-healthy"' in page
    assert "too large to verify" in page
    assert "<th>scheme</th><th>std</th>" in page  # per-weight params as a nested table
    assert "<td>healthy now</td>" in page  # text wraps in a plain cell, not a number cell
    assert page.count("<tr class=flagged>") == 4  # layers 0, 3, 6, 9 of 12


def test_html_without_temporal_profiles_has_one_plot() -> None:
    assert 'id="temporal-plot"' not in render_html(make_report())


def test_html_for_many_layers() -> None:
    page = render_html(make_report(n_layers=500))
    assert page.count("<tr class=flagged>") == 167
    # no names written on the plot: the flagged layers are listed under it, folded
    assert "<summary>Flagged layers: 167 (circled on the plot)</summary>" in page


def test_text_contains_status_names_and_remedies() -> None:
    text = render_text(make_report())
    assert "VANISHING" in text
    assert "Gradients vanish toward the input." in text
    assert all(f"layers.{i}" in text for i in range(12))
    assert "1. Use ReLU" in text
    assert "verified: vanishing → healthy" in text
    assert "\x1b" not in text


def test_text_marks_flagged_rows() -> None:
    rows = [line for line in render_text(make_report()).splitlines() if "  layers." in line]
    flagged = [line for line in rows if line.startswith("!")]
    assert len(flagged) == 4
    assert all("vanishing" in line for line in flagged)


def test_text_color_only_when_asked() -> None:
    assert "\x1b[" in render_text(make_report(), color=True)


def test_text_neutralizes_markup_and_control_characters() -> None:
    text = render_text(make_report(names={1: "[bold]x[/bold]\x1b[31mred"}))
    assert "[bold]x[/bold]\\x1b[31mred" in text
    assert "\x1b" not in text


def test_text_with_zero_layers() -> None:
    assert "No layers were measured." in render_text(make_report(n_layers=0))


def test_text_is_fast_for_500_layers() -> None:
    report = make_report(n_layers=500)
    start = time.perf_counter()
    text = render_text(report)
    assert time.perf_counter() - start < 1.0  # ~0.05 s here; rich's Table took ~1 s
    assert "layers.499" in text
    assert max(len(line) for line in text.splitlines()) <= 120


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "—"), (float("nan"), "—"), (0.0, "0"), (0.5, "0.5"), (1234.5, "1234"),
     (1e4, "1.00e+04"), (2.5e-7, "2.50e-07"), (float("inf"), "—")],
    ids=["none", "nan", "zero", "plain", "thousands", "large", "small", "inf"],
)
def test_number_format(value: float | None, expected: str) -> None:
    assert number(value) == expected


def test_demo_report_renders() -> None:
    report = demo_report(temporal=True)
    assert report.verdict.status == Status.VANISHING
    assert 'id="temporal-plot"' in render_html(report)
    assert "layers.19" in render_text(report)


def test_causes_render_in_html_and_text_escaped() -> None:
    from diagnostics.report import Cause

    report = demo_report(blocks=2)
    report.causes = [Cause(id="dead_units", title="layer <b>x</b> is dead",
                           layers=["<script>alert(1)</script>"],
                           evidence={"dead_fraction": {"<script>": 1.0}})]
    page = render_html(report)
    assert "Causes (1)" in page
    assert "layer &lt;b&gt;x&lt;/b&gt; is dead" in page
    assert "<script>alert(1)</script>" not in page
    text = render_text(report)
    assert "Causes" in text
    assert "[dead_units]" in text
