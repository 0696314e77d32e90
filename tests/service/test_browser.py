"""The two pages people look at, in a real browser: the HTML report and the API docs (/docs).

Headless Chromium from Debian's ``chromium`` package, driven by Playwright with
``executable_path`` (Playwright's own browser download does not work on our machines; never run
``playwright install``). Each page must draw, log no console error and request nothing from
anywhere but its own origin: every other request is recorded and aborted.

The service half uses the ``server`` fixture of ``tests/service/conftest.py`` (a real
``graddoctor serve``). Screenshots land in ``test-artifacts/``; ``GRADDOCTOR_UPDATE_SCREENSHOTS=1``
also refreshes the README's ``docs/report-screenshot.png`` (the served report of a real deep-sigmoid
diagnosis), like a golden file.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from diagnostics.render import render_html
from tests.report_factory import demo_report
from tests.service.conftest import ServiceProcess

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
README_SCREENSHOT = ROOT / "docs" / "report-screenshot.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DEEP_SIGMOID_SPEC = {
    "name": "deep-sigmoid",
    "inputs": [{"name": "x", "shape": [8, 32]}],
    "layers": [{"type": "Linear", "in_features": 32, "out_features": 32}, {"type": "Sigmoid"}] * 8,
}


@dataclass
class PageLog:
    """What a page did besides drawing: its requests and every error it logged."""

    allowed_prefix: str
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.blocked == [], f"requests left the server: {self.blocked}"
        assert self.console_errors == [], self.console_errors
        assert self.page_errors == [], self.page_errors


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (scripts/test-prereqs.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser: Any, url: str, allowed_prefix: str) -> tuple[Any, PageLog]:
    """Load ``url`` in a fresh context; requests outside ``allowed_prefix`` are logged, aborted."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  service_workers="block")
    log = PageLog(allowed_prefix)

    def route(request_route: Any) -> None:
        target = request_route.request.url
        if target.startswith(allowed_prefix) or target.startswith("data:"):
            request_route.continue_()
        else:
            log.blocked.append(target)
            request_route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("request", lambda request: log.requests.append(request.url))
    page.on("console", lambda message: message.type == "error"
            and log.console_errors.append(message.text))
    page.on("pageerror", lambda error: log.page_errors.append(str(error)))
    page.goto(url, wait_until="networkidle")
    return page, log


def _assert_not_blank(png: bytes, min_colours: int = 16) -> None:
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) >= min_colours, f"only {len(colours)} distinct colours: blank?"
    assert max(ImageStat.Stat(image).stddev) > 10


def _save(png: bytes, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(png)
    return path


def _assert_plot_drawn(page: Any) -> bytes:
    plot = page.locator("#gradient-flow-plot")
    assert plot.count() == 1
    assert plot.is_visible()
    box = plot.bounding_box()
    assert box is not None
    assert box["width"] > 400
    assert box["height"] > 150
    assert plot.locator("path").count() > 20  # axes, ticks, series, markers
    png = plot.screenshot()
    _assert_not_blank(png)
    return png


def _top_screenshot(page: Any) -> bytes:
    """The page from its title to the bottom of the plot: what the README shows."""
    # Page coordinates: bounding_box() is relative to the viewport, which earlier steps scrolled.
    bottom = page.locator("figure").first.evaluate(
        "element => element.getBoundingClientRect().bottom + window.scrollY")
    height = int(bottom) + 16
    return page.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": height})


def test_report_file_draws_offline(browser: Any, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(render_html(demo_report(temporal=True)), encoding="utf-8")
    url = path.as_uri()
    page, log = _open(browser, url, url)
    try:
        _assert_plot_drawn(page)
        assert page.locator("#temporal-plot").is_visible()
        assert page.locator("tr.flagged").count() == 8
        png = _top_screenshot(page)
        _assert_not_blank(png)
        _save(png, "report.png")
        _save(page.screenshot(full_page=True), "report-full.png")
    finally:
        page.context.close()
    assert log.requests == [url], log.requests
    log.assert_clean()


def test_report_file_escapes_hostile_layer_names(browser: Any, tmp_path: Path) -> None:
    report = demo_report(blocks=2)
    report.layers[0].name = "<script>console.error('xss')</script><img src=https://example.com/x>"
    path = tmp_path / "hostile.html"
    path.write_text(render_html(report), encoding="utf-8")
    page, log = _open(browser, path.as_uri(), path.as_uri())
    try:
        assert page.get_by_text("<script>console.error('xss')</script>", exact=False).count() >= 1
    finally:
        page.context.close()
    log.assert_clean()


def test_docs_page_lists_the_api_offline(browser: Any, server: ServiceProcess) -> None:
    base = server.base_url
    page, log = _open(browser, f"{base}/docs", base + "/")
    try:
        page.wait_for_selector(".opblock", timeout=20_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert any(p.startswith("/v1/diagnoses") for p in paths), paths
        assert any("/report" in p for p in paths), paths
        png = page.screenshot(full_page=True)
        _assert_not_blank(png)
        _save(png, "docs.png")
    finally:
        page.context.close()
    log.assert_clean()


def test_report_page_of_a_finished_job(browser: Any, server: ServiceProcess) -> None:
    base = server.base_url
    with server.client() as client:
        answer = client.post("/v1/diagnoses", params={"wait": 60},
                             json={"spec": DEEP_SIGMOID_SPEC, "config": {"samples": 1}})
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["status"] == "succeeded", job
    page, log = _open(browser, f"{base}/v1/diagnoses/{job['id']}/report", base + "/")
    try:
        _assert_plot_drawn(page)
        assert job["result"]["verdict"]["status"] in page.locator("h1").inner_text()
        _save(page.screenshot(full_page=True), "report-served-full.png")
        png = _top_screenshot(page)
        _save(png, "report-served.png")
        if os.environ.get("GRADDOCTOR_UPDATE_SCREENSHOTS") == "1":  # a real diagnosis
            README_SCREENSHOT.write_bytes(png)
    finally:
        page.context.close()
    log.assert_clean()


DEEP_SCREENSHOT = ROOT / "docs" / "report-deep-transformer.png"
# Every bounding box of a text element of the flow plot, in page pixels.
_PLOT_TEXT_BOXES = """() => [...document.querySelectorAll('#gradient-flow-plot g[id*="-text_"]')]
  .map(g => { const r = g.getBoundingClientRect();
              return {id: g.id, x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; })
  .filter(b => b.x1 > b.x0 && b.y1 > b.y0)"""


def _bert_12_layers_onnx() -> bytes:
    """A 12-layer BERT encoder (transformers, random weights, hidden size 32): 186 layers."""
    import torch

    from tests.model_zoo import _Seq2Tuple
    from tests.onnx_export import export_legacy

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=12,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)
    ids = torch.randint(0, 100, (2, 16))
    names = ("input_ids", "attention_mask", "token_type_ids")
    return export_legacy(_Seq2Tuple(transformers.BertModel(config)).eval(),
                         (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                         do_constant_folding=False, input_names=names,
                         dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names})


def _overlaps(boxes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    pairs = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a["x0"] < b["x1"] and b["x0"] < a["x1"] and a["y0"] < b["y1"] and b["y0"] < a["y1"]:
                pairs.append((a["id"], b["id"]))
    return pairs


def test_deep_transformer_report_reads_at_a_glance(browser: Any, tmp_path: Path) -> None:
    """BERT with 12 encoder layers (186 layers in the report) at 1280 px: one point per block,
    no two plot labels overlap, names never wrap a character per line, per-layer detail folds."""
    from diagnostics import diagnose

    report = diagnose(_bert_12_layers_onnx(), config={"samples": 1, "verify_remedies": False,
                                                      "input_shapes": {
                                                          "input_ids": [2, 16],
                                                          "attention_mask": [2, 16],
                                                          "token_type_ids": [2, 16]}})
    assert len(report.layers) >= 150
    path = tmp_path / "bert12.html"
    path.write_text(render_html(report), encoding="utf-8")
    page, log = _open(browser, path.as_uri(), path.as_uri())
    try:
        _assert_plot_drawn(page)
        boxes = page.evaluate(_PLOT_TEXT_BOXES)
        assert len(boxes) >= 14 + 4  # a tick label per block, axis labels, legend entries
        assert _overlaps(boxes) == []
        blocks = page.locator("details.block")
        assert blocks.count() >= 14  # embeddings, 12 encoder layers, pooler
        _save(_top_screenshot(page), "report-deep-transformer.png")
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        line = page.evaluate("parseFloat(getComputedStyle(document.body).lineHeight)")
        heights = page.evaluate("""() => [...document.querySelectorAll('td.name, .bname')]
            .map(e => e.getBoundingClientRect().height)""")
        assert len(heights) >= len(report.layers)
        assert max(heights) <= 3 * line, max(heights)  # no one-character-per-line wrapping
        titles = page.locator("td.name[title]").count()
        assert titles >= len(report.layers)  # the full name is always one hover away
        _save(page.screenshot(full_page=True), "report-deep-transformer-full.png")
        if os.environ.get("GRADDOCTOR_UPDATE_SCREENSHOTS") == "1":
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = false)")
            DEEP_SCREENSHOT.write_bytes(_top_screenshot(page))
    finally:
        page.context.close()
    log.assert_clean()
