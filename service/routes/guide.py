"""/guide: the user guide as HTML pages and its figures, served offline from the Markdown."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from service.errors import NotFoundError
from service.guide_pages import CSP, FIGURE_CSP, GUIDE_URL, figure_path, load_guide

# Pages, not API: kept out of the OpenAPI document (and so out of the API fuzzing).
router = APIRouter(prefix=GUIDE_URL, tags=["guide"], include_in_schema=False)

_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def get_guide_index() -> Response:
    """The guide's first page, with the list of pages."""
    return await _page("index")


@router.get("/figures/{name}")
def get_guide_figure(name: str) -> Response:
    """A figure of the guide (SVG or PNG drawn by GradDoctor)."""
    path = figure_path(name)
    if path is None:
        raise NotFoundError(f"the guide has no figure {name!r}")
    media = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return FileResponse(path, media_type=media, headers={
        "Content-Security-Policy": FIGURE_CSP, "X-Content-Type-Options": "nosniff",
        "Cache-Control": "public, max-age=3600"})


@router.get("/{page}", response_class=HTMLResponse)
async def get_guide_page(page: str) -> Response:
    """One page of the guide."""
    return await _page(page)


async def _page(name: str) -> Response:
    pages = await run_in_threadpool(load_guide)  # the first call renders every page
    found = pages.get(name.removesuffix(".md"))
    if found is None:
        known = ", ".join(pages) or "none: this installation has no guide files"
        raise NotFoundError(f"the guide has no page {name!r} (pages: {known})")
    return HTMLResponse(found.html, headers=_HEADERS)
