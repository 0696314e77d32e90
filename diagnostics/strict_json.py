"""Strict JSON: refuse what ``json.loads`` accepts but no user meant.

``json.loads`` alone accepts ``NaN`` and ``Infinity``, turns ``1e400`` into ``inf`` and keeps
the last of two duplicated keys (``{"loss": "sum", "loss": "mean_square"}`` silently means
``mean_square``). Every JSON document a user hands us (specs, configs, API request bodies) is
parsed by :func:`loads`; callers wrap :class:`StrictJSONError` in their own error type so the
message reaches the user with the field it concerns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any


class StrictJSONError(ValueError):
    """The text is JSON, but not JSON we accept (the message says why)."""


def reject_constant(name: str) -> Any:
    """``parse_constant`` hook: NaN, Infinity and -Infinity are refused."""
    raise StrictJSONError(f"{name} is not valid JSON: numbers must be finite")


def finite_float(literal: str) -> float:
    """``parse_float`` hook: a number that overflows to infinity is refused."""
    value = float(literal)
    if not math.isfinite(value):
        raise StrictJSONError(f"{literal[:40]} is out of range: numbers must be finite")
    return value


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: a key given twice in one object is refused."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"duplicated key {key[:40]!r} in a JSON object")
        result[key] = value
    return result


def loads(text: str | bytes, *, parse_float: Callable[[str], Any] = finite_float,
          parse_int: Callable[[str], Any] | None = None) -> Any:
    """Parse ``text`` strictly.

    Raises:
        StrictJSONError: Non-finite constants or numbers, duplicated keys.
        json.JSONDecodeError: Not JSON at all.
        RecursionError: Nested too deeply for the parser.
    """
    return json.loads(text, parse_constant=reject_constant, parse_float=parse_float,
                      parse_int=parse_int, object_pairs_hook=unique_keys)
