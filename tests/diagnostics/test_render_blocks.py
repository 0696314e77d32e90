"""Grouping layers into blocks by module path, and the grouped HTML and text reports."""

from __future__ import annotations

import pytest

from diagnostics.render import render_html, render_text
from diagnostics.render.blocks import TOP_LEVEL, block_key, group_layers, worth_grouping
from diagnostics.report import Flag, LayerReport, Stat
from tests.report_factory import demo_report


@pytest.mark.parametrize(("name", "key"), [
    ("/model/encoder/layer.3/attention/self/key/MatMul", "model/encoder/layer.3"),
    ("/model/encoder/layer.11/output/LayerNorm/LayerNormalization", "model/encoder/layer.11"),
    ("/model/embeddings/word_embeddings/Gather", "model/embeddings"),
    ("/model/pooler/dense/Gemm", "model/pooler"),
    ("/layer2/layer2.1/conv1/Conv", "layer2/layer2.1"),
    ("/Add_3", TOP_LEVEL),
    ("Conv_0", TOP_LEVEL),
    ("encoder.layer.3.attention.self.key", "encoder.layer.3"),
    ("layer2.1.conv1", "layer2.1"),
    ("layers.0[3].layers.1", "layers.0[3]"),
    ("layers.7", "layers"),
], ids=lambda value: value if "/" in value or "." in value else None)
def test_block_key_is_the_path_up_to_the_first_index(name, key):
    assert block_key(name) == key


def _layer(index: int, name: str, signal: float, op: str = "MatMul",
           flags: list[Flag] | None = None) -> LayerReport:
    return LayerReport(name=name, op_type=op, index=index, depth=100 - index, kinds=[],
                       output_grad_norm=Stat(median=signal, min=signal, max=signal),
                       flags=flags or [])


def _transformer_layers(blocks: int = 6, per_block: int = 5) -> list[LayerReport]:
    layers = [_layer(0, "/model/embeddings/word_embeddings/Gather", 1.0, "Gather")]
    for b in range(blocks):
        for k in range(per_block):
            # a zigzag inside each block: the skip path at 1, the attention path far below
            layers.append(_layer(len(layers), f"/model/encoder/layer.{b}/attention/n{k}/MatMul",
                                 1.0 if k % 2 else 1e-6,
                                 flags=[Flag.VANISHING] if k == 2 else None))
    return layers


def test_blocks_keep_topological_order_and_report_their_extremes():
    layers = _transformer_layers()
    blocks = group_layers(layers)
    assert [b.key for b in blocks] == ["model/embeddings",
                                       *(f"model/encoder/layer.{b}" for b in range(6))]
    assert worth_grouping(blocks, layers)
    first = blocks[1]
    assert first.label == "layer.0"
    assert first.signal_max() == 1.0
    assert first.signal_min() == 1e-6
    assert [layer.name for layer in first.flagged] == ["/model/encoder/layer.0/attention/n2/MatMul"]
    assert first.short_name(first.layers[0]) == "attention/n0"  # the op has its own column


def test_a_flat_chain_is_not_grouped():
    layers = [_layer(i, f"layers.{i}", 1.0) for i in range(40)]
    assert not worth_grouping(group_layers(layers), layers)


def test_grouped_html_has_a_details_block_each_and_names_in_titles():
    report = demo_report(blocks=2)
    report.layers = _transformer_layers()
    page = render_html(report)
    assert page.count("<details class=block") == 7
    assert 'title="/model/encoder/layer.3/attention/n2/MatMul"' in page
    assert "Layers (31 in 7 blocks)" in page
    assert "block max" in page  # the caption says which per-block value is drawn
    assert "vanishing ×1" not in page  # a single flag is not counted
    assert "<script" not in page


def test_grouped_text_has_a_block_table_then_layers_under_block_lines():
    report = demo_report(blocks=2)
    report.layers = _transformer_layers()
    text = render_text(report)
    assert "7 blocks (layers grouped by module path)" in text
    assert "── block 3: model/encoder/layer.2" in text
    block_rows = [line for line in text.splitlines() if "model/encoder/layer." in line
                  and not line.startswith("──")]
    assert len(block_rows) == 6
    assert all(line.startswith("!") for line in block_rows)
    header = next(line for line in text.splitlines() if line.lstrip().startswith("#  layer"))
    assert "sat." not in header  # no layer has activation statistics: the names get the room
    assert "dead" not in header


def test_comparison_text_and_page_summarize_blocks():
    from diagnostics.compare import compare_reports
    from diagnostics.render.comparison import render_comparison_html, render_comparison_text

    before = demo_report(blocks=2)
    before.layers = _transformer_layers()
    before.verdict.evidence.shallowest_layer = before.layers[-2].name  # its signal is 1
    after = before.model_copy(deep=True)
    for layer in after.layers:
        if "/layer.0/" in layer.name and layer.output_grad_norm is not None:
            s = layer.output_grad_norm
            layer.output_grad_norm = Stat(median=s.median * 1e-3, min=s.min, max=s.max)
    result = compare_reports(before, after)
    text = render_comparison_text(result)
    assert "Blocks (layers grouped by module path)" in text
    summary = [line for line in text.splitlines() if line.startswith("! model/encoder/layer.")]
    assert len(summary) == 1
    assert summary[0].startswith("! model/encoder/layer.0")
    assert "5 of 5 layers regressed" in summary[0]
    assert "<h2>Blocks (layers grouped by module path)</h2>" in render_comparison_html(
        result, "a", "b")


_DOC = "/guide/rules#backward_signal_vanishing"


def _with_doc(model: type, **fields: object) -> object:
    """An instance carrying ``doc``: the real field once report.py has it, else a subclass
    that adds it (the renderers read it with getattr)."""
    if "doc" in model.model_fields:  # type: ignore[attr-defined]
        return model(**{**fields, "doc": _DOC})
    return type(f"Documented{model.__name__}", (model, _Documented), {})(**fields)


class _Documented:
    doc = _DOC  # a plain class attribute, outside pydantic's fields


def test_findings_with_a_doc_link_to_the_guide_in_html_and_text():
    """Rules, causes and remedies that carry ``doc`` (a guide section) show a link; those
    without one render as before."""
    from diagnostics.report import Cause, Remedy, RuleCheck

    report = demo_report(blocks=2)
    rules = report.verdict.evidence.rules
    report.verdict.evidence.rules = [_with_doc(RuleCheck, **r.model_dump()) for r in rules]
    report.causes = [_with_doc(Cause, id="plain_depth", title="plain depth")]
    report.remedies = [_with_doc(Remedy, **report.remedies[0].model_dump()), report.remedies[1]]
    page = render_html(report)
    link = f'<a class=guide href="{_DOC}">guide</a>'
    assert page.count(link) == len(rules) + 1 + 1
    text = render_text(report)
    assert text.count(f"guide: {_DOC}") == 1 + 1 + 1  # the fired rule, the cause, the remedy


def test_short_names_never_shrink_to_the_op_alone():
    stem = _layer(0, "/conv1/Conv", 1.0, op="Conv")
    inner = _layer(1, "/layer1/layer1.0/relu/Relu", 1.0, op="Relu")
    blocks = {block.key: block for block in group_layers([stem, inner])}
    assert blocks["conv1"].short_name(stem) == "/conv1/Conv"
    assert blocks["layer1/layer1.0"].short_name(inner) == "relu"
