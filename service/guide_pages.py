"""The guide (docs/guide/*.md) as self-contained HTML pages, rendered once per process.

The Markdown is the source users also read on the repository host; here it is rendered with the
pure-Python ``markdown`` package. Links between pages (``rules.md#non_finite``) become service
paths (``/guide/rules#non_finite``), figures (``figures/x.svg``) are served from the same origin,
and every heading gets an ``id`` (the same slug the repository host makes) and a ``¶`` anchor.
The pages load nothing from anywhere else: no script, no font, no stylesheet but their own.

Where the Markdown is: in a checkout (and an editable install) ``docs/guide`` beside the
``service`` package; in a wheel it is installed as data files under
``<prefix>/share/graddoctor/guide`` (pyproject's ``data-files``).
"""

from __future__ import annotations

import functools
import re
import sysconfig
from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element

import markdown
from markdown.extensions import Extension
from markdown.extensions.toc import TocExtension
from markdown.treeprocessors import Treeprocessor

GUIDE_URL = "/guide"
# Page order of the navigation; pages not listed follow in name order.
ORDER = ("index", "concepts", "math", "reading-reports", "rules", "causes", "remedies",
         "pytorch", "trends", "faq")
PAGE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
FIGURE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\.(svg|png)")
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; "
       "form-action 'none'")
FIGURE_CSP = "default-src 'none'; style-src 'unsafe-inline'"

_STYLE = """
body{font:15px/1.55 system-ui,sans-serif;margin:0;color:#1f2328;display:flex}
nav{min-width:13rem;padding:1rem;border-right:1px solid #d0d7de;background:#f6f8fa;
    position:sticky;top:0;align-self:flex-start;height:100vh;box-sizing:border-box}
nav a{display:block;padding:.15rem 0;color:#0969da;text-decoration:none}
nav a.current{font-weight:600;color:#1f2328}
main{max-width:52rem;padding:1rem 2rem 4rem;overflow-wrap:break-word;min-width:0}
code,pre{font:13px ui-monospace,monospace;background:#f6f8fa}
pre{padding:.7rem;overflow-x:auto;border-radius:6px}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .6rem;
vertical-align:top;text-align:left}img{max-width:100%;height:auto}
a.headerlink{color:#8c959f;text-decoration:none;margin-left:.3rem;font-size:.8em}
h1,h2,h3{scroll-margin-top:1rem}:target{background:#fff8c5}
"""


def guide_dir() -> Path | None:
    """The folder holding the guide's Markdown, or None if this installation has none."""
    checkout = Path(__file__).resolve().parent.parent / "docs" / "guide"
    installed = Path(sysconfig.get_path("data")) / "share" / "graddoctor" / "guide"
    for folder in (checkout, installed):
        if (folder / "index.md").is_file():
            return folder
    return None


@dataclass(frozen=True)
class Page:
    name: str
    title: str
    html: str  # the whole document
    anchors: frozenset[str]


class _Links(Treeprocessor):
    """Guide-relative links and images -> service paths; ids collected for the anchor check."""

    def run(self, root: Element) -> None:
        for element in root.iter():
            if element.tag == "a" and element.get("href"):
                element.set("href", _page_href(element.get("href", "")))
            elif element.tag == "img" and element.get("src"):
                src = element.get("src", "")
                if not urlsplit(src).scheme and not src.startswith("/"):
                    element.set("src", f"{GUIDE_URL}/{src.removeprefix('./')}")


class _LinksExtension(Extension):
    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 (markdown's API)
        # After the toc extension (priority 20) has read the headings.
        md.treeprocessors.register(_Links(md), "graddoctor_links", 5)


def _page_href(href: str) -> str:
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith(("/", "#")):
        return href
    name = parts.path.removeprefix("./")
    if not name.endswith(".md"):
        return href
    page = name.removesuffix(".md")
    path = f"{GUIDE_URL}/" if page == "index" else f"{GUIDE_URL}/{page}"
    return path + (f"#{parts.fragment}" if parts.fragment else "")


def _converter() -> markdown.Markdown:
    return markdown.Markdown(extensions=[
        "tables", "fenced_code", "sane_lists",
        TocExtension(permalink="¶", permalink_title="Link to this section"),
        _LinksExtension(),
    ])


@functools.lru_cache(maxsize=1)
def load_guide() -> dict[str, Page]:
    """Every page, rendered (once per process)."""
    folder = guide_dir()
    if folder is None:
        return {}
    names = sorted((p.stem for p in folder.glob("*.md") if PAGE_NAME.fullmatch(p.stem)),
                   key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    bodies, titles, anchors = {}, {}, {}
    for name in names:
        converter = _converter()
        text = (folder / f"{name}.md").read_text(encoding="utf-8")
        bodies[name] = converter.convert(text)
        found = list(converter.toc_tokens)  # type: ignore[attr-defined]
        titles[name] = found[0]["name"] if found else name
        anchors[name] = frozenset(re.findall(r'\sid="([^"]+)"', bodies[name]))
    return {name: Page(name, titles[name], _document(name, titles, bodies[name]), anchors[name])
            for name in names}


def figure_path(name: str) -> Path | None:
    """A figure file of the guide, or None if the name is not one."""
    folder = guide_dir()
    if folder is None or not FIGURE_NAME.fullmatch(name):
        return None
    path = folder / "figures" / name
    return path if path.is_file() else None


def _document(name: str, titles: dict[str, str], body: str) -> str:
    nav = "".join(
        f"<a href='{GUIDE_URL}/{'' if page == 'index' else page}'"
        f"{' class=current' if page == name else ''}>"
        f"{'Overview' if page == 'index' else escape(title)}</a>"
        for page, title in titles.items())
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{escape(titles[name])} · GradDoctor guide</title><style>{_STYLE}</style></head>"
        f"<body><nav aria-label='Guide'><b>GradDoctor guide</b>{nav}</nav>"
        f"<main>{body}</main></body></html>"
    )
