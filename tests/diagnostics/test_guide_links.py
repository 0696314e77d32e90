"""The guide and the links to it: every rule, cause and remedy id the code can produce has a
section, every link's anchor exists in the rendered Markdown, every link between guide pages
resolves, and the guide's complete snippets run.

Ids are read from the code, not from the table: rules from a real diagnosis (every rule is
evaluated and listed, fired or not), causes and remedies from the ``Cause(id=...)`` and
``Remedy(id=...)`` calls in ``diagnostics/`` (an AST scan, so a new builder is seen at once).
"""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

from diagnostics import diagnose, guide_links
from diagnostics.report import Cause, Remedy, Report, RuleCheck
from service.guide_pages import GUIDE_URL, guide_dir, load_guide

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guide"
TINY_SPEC = {"inputs": [{"name": "x", "shape": [4, 8]}],
             "layers": [{"type": "Linear", "in_features": 8, "out_features": 8},
                        {"type": "Tanh"}, {"type": "Linear", "in_features": 8, "out_features": 2}]}


def _ids_built_as(class_name: str) -> set[str]:
    found = set()
    for path in (ROOT / "diagnostics").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == class_name:
                for keyword in node.keywords:
                    if keyword.arg == "id" and isinstance(keyword.value, ast.Constant):
                        found.add(keyword.value.value)
    return found


def _resolve(link: str) -> tuple[str, str]:
    """(page, anchor) of a ``/guide/page#anchor`` path; the anchor must exist on the page."""
    parts = urlsplit(link)
    assert parts.path.startswith(f"{GUIDE_URL}/"), link
    page = parts.path.removeprefix(f"{GUIDE_URL}/") or "index"
    pages = load_guide()
    assert page in pages, f"{link}: no page docs/guide/{page}.md"
    if parts.fragment:
        assert parts.fragment in pages[page].anchors, f"{link}: no heading with that anchor"
    return page, parts.fragment


def test_the_service_reads_the_guide_from_the_repository() -> None:
    assert guide_dir() == GUIDE


def test_every_rule_a_diagnosis_lists_has_a_section() -> None:
    report = diagnose(TINY_SPEC, config={"samples": 1, "verify_remedies": False})
    rules = {check.rule for check in report.verdict.evidence.rules}
    assert rules, "a diagnosis lists every rule it evaluated"
    for check in report.verdict.evidence.rules:
        assert check.doc == f"{GUIDE_URL}/rules#{check.rule}", check.rule
    assert rules <= set(guide_links.RULES)


@pytest.mark.parametrize(("kind", "class_name", "listed"), [
    ("cause", "Cause", guide_links.CAUSES), ("remedy", "Remedy", guide_links.REMEDIES)])
def test_every_cause_and_remedy_the_code_builds_has_a_section(kind: str, class_name: str,
                                                             listed: tuple[str, ...]) -> None:
    built = _ids_built_as(class_name)
    assert len(built) >= 6, f"the AST scan found the {class_name}(id=...) calls: {built}"
    assert built <= set(listed), f"{kind}s without a guide section: {built - set(listed)}"
    for identifier in built:
        assert guide_links.doc_link(kind, identifier) is not None


def test_every_link_in_the_table_has_its_anchor() -> None:
    for kind, table in guide_links.LINKS.items():
        for identifier in table:
            page, anchor = _resolve(guide_links.doc_link(kind, identifier))
            assert anchor == identifier, "anchors are the ids themselves"
            assert page == {"rule": "rules", "cause": "causes", "remedy": "remedies"}[kind]


def test_the_link_helpers_fill_the_doc_fields() -> None:
    rule = RuleCheck(rule="dead_layer", value=0, threshold=0, fired=False, detail="")
    cause = Cause(id="plain_depth", title="t")
    remedy = Remedy(id="chrono-init", rank=1, title="t", rationale="r")
    guide_links.link_rules([rule])
    guide_links.link_causes([cause])
    guide_links.link_remedies([remedy])
    assert (rule.doc, cause.doc, remedy.doc) == (
        "/guide/rules#dead_layer", "/guide/causes#plain_depth", "/guide/remedies#chrono-init")
    assert guide_links.doc_link("rule", "no_such_rule") is None


def test_links_between_pages_and_figures_resolve() -> None:
    pages = load_guide()
    assert set(pages) >= {"index", "concepts", "math", "reading-reports", "rules", "causes",
                          "remedies", "pytorch", "trends", "faq"}
    for name, page in pages.items():
        for href in re.findall(r'href="([^"]+)"', page.html):
            if href.startswith("#"):
                assert href[1:] in page.anchors, f"{name}: {href}"
            elif href.startswith(GUIDE_URL):
                _resolve(href)
            else:
                assert not href.endswith(".md"), f"{name}: {href} was not rewritten"
        for src in re.findall(r'<img[^>]* src="([^"]+)"', page.html):
            assert src.startswith(f"{GUIDE_URL}/figures/"), src
            assert (GUIDE / src.removeprefix(f"{GUIDE_URL}/")).is_file(), src


def test_page_html_is_self_contained() -> None:
    for name, page in load_guide().items():
        assert "<script" not in page.html, name
        assert "<link" not in page.html, name
        assert not re.search(r'src="(https?:)?//', page.html), f"{name} loads from elsewhere"


def _snippets(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (GUIDE / page).read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("page", [
    "index.md", "remedies.md", pytest.param("pytorch.md", marks=pytest.mark.slow)])
def test_the_complete_snippets_run(page: str) -> None:
    namespace: dict[str, object] = {}
    for snippet in _snippets(page):
        exec(compile(snippet, page, "exec"), namespace)  # our own documentation


def _field_names(model: type[BaseModel], seen: set[type]) -> set[str]:
    """Every field name of a report model and of the report models it contains."""
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for field in model.model_fields.values():
        for inner in _models_in(field.annotation):
            names |= _field_names(inner, seen)
    return names


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation] if annotation.__module__ == "diagnostics.report" else []
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def test_every_report_field_is_explained() -> None:
    text = (GUIDE / "reading-reports.md").read_text(encoding="utf-8")
    text += (GUIDE / "remedies.md").read_text(encoding="utf-8")
    names = _field_names(Report, set()) - {"config"}  # the configuration has its own table
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert not missing, f"report fields the guide does not explain: {missing}"
