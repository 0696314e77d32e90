"""The guide as the service serves it, in a real browser: every page draws offline, and every
``doc`` link of a real job's report opens a page with that section.

Same harness as ``test_browser.py`` (Debian's Chromium driven by Playwright, every request
off the server recorded and aborted) and the same shared ``server`` fixture.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.guide_pages import load_guide
from tests.service.conftest import ServiceProcess
from tests.service.test_browser import DEEP_SIGMOID_SPEC, _open, _save
from tests.service.test_browser import browser as browser  # a fixture, re-exported for pytest

pytestmark = pytest.mark.browser


def test_every_guide_page_renders_offline(browser: Any, server: ServiceProcess) -> None:
    base = server.base_url
    for name in load_guide():
        url = f"{base}/guide/" + ("" if name == "index" else name)
        page, log = _open(browser, url, base + "/")
        try:
            assert page.locator("main h1").count() == 1, name
            headings = page.locator("main h2, main h3")
            for index in range(headings.count()):  # anchors on every heading
                assert headings.nth(index).get_attribute("id"), name
            for image in page.locator("main img").all():
                assert image.evaluate("img => img.complete && img.naturalWidth > 0"), name
            if name in ("index", "rules"):
                _save(page.screenshot(full_page=True), f"guide-{name}.png")
        finally:
            page.context.close()
        assert all(request.startswith(base + "/") for request in log.requests), log.requests
        log.assert_clean()


def test_every_doc_link_of_a_real_report_resolves(browser: Any, server: ServiceProcess) -> None:
    base = server.base_url
    with server.client() as client:
        answer = client.post("/v1/diagnoses", params={"wait": 60},
                             json={"spec": DEEP_SIGMOID_SPEC, "config": {"samples": 1}})
    assert answer.status_code == 200, answer.text
    report = answer.json()["result"]
    links = {check["doc"] for check in report["verdict"]["evidence"]["rules"]}
    links |= {item["doc"] for item in report["causes"] + report["remedies"]}
    assert None not in links, "every rule, cause and remedy has a doc link"
    assert len(links) >= 8, links
    context = browser.new_context(service_workers="block")
    page = context.new_page()
    try:
        for link in sorted(links):
            path, anchor = urlsplit(link).path, urlsplit(link).fragment
            response = page.goto(base + path, wait_until="load")
            assert response is not None, link
            assert response.status == 200, link
            page.goto(base + link)  # the same document, scrolled to the section
            section = page.locator(f"[id='{anchor}']")
            assert section.count() == 1, f"{link}: no element with id {anchor!r}"
            assert section.is_visible(), link
            assert section.evaluate("element => element.matches(':target')"), link
    finally:
        context.close()


@pytest.mark.parametrize(("path", "status"), [
    ("/guide", 200), ("/guide/", 200), ("/guide/rules", 200), ("/guide/rules.md", 200),
    ("/guide/figures/sigmoid-mlp.svg", 200), ("/guide/no-such-page", 404),
    ("/guide/figures/..%2F..%2Fpyproject.toml", 404), ("/guide/figures/x.html", 404),
    ("/guide/..%2F..%2FREADME", 404)])
def test_guide_paths(server: ServiceProcess, path: str, status: int) -> None:
    answer = httpx.get(server.base_url + path, timeout=30)
    assert answer.status_code == status, answer.text[:200]
    if status == 200:
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-content-type-options"] == "nosniff"
    else:
        assert answer.json()["error"] == "not_found"
