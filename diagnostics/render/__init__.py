"""Presentation of a finished :class:`~diagnostics.report.Report`: HTML page and terminal text.

Nothing here computes a statistic; it only formats what the report holds.
"""

from diagnostics.render.html import render_html
from diagnostics.render.text import render_text

__all__ = ["render_html", "render_text"]
