"""Strict, bounded JSON parsing for architecture specs.

``json.loads`` alone accepts ``NaN`` and ``Infinity``, turns ``1e400`` into ``inf``, keeps the
last of duplicated keys, converts integers of any length (CPython then refuses past 4300 digits
with a ValueError) and recurses as deep as the document goes. A spec is a small document, so
everything here is bounded before the parser builds a single object.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from diagnostics import strict_json
from diagnostics.errors import InvalidSpecError, ResourceLimitError
from diagnostics.limits import Limits

# Longest integer literal we convert; anything longer is out of range for every spec field, and
# converting it would cost time quadratic in its length.
_MAX_INT_DIGITS = 40
# A legitimate layer object holds well under this many JSON values (its keys, kernel tuples and
# an init object); multiplied by max_nodes it bounds the parsed document's memory.
_VALUES_PER_NODE = 32
_BYTES_PER_NODE = 1024
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class OutOfRangeNumber:
    """Stands in for a JSON number no spec field can hold (too many digits, or overflows float).

    Parsing keeps going so that validation can name the field holding it.
    """

    def __init__(self, literal: str) -> None:
        self.literal = literal[:20] + ("…" if len(literal) > 20 else "")

    def __repr__(self) -> str:
        return f"<number {self.literal} out of range>"


def max_document_bytes(limits: Limits) -> int:
    """Largest spec document accepted under ``limits``, in bytes."""
    return min(limits.max_model_bytes, limits.max_nodes * _BYTES_PER_NODE)


def max_json_depth(limits: Limits) -> int:
    """Deepest JSON nesting accepted: what ``limits.max_nesting`` containers need, plus slack.

    Each container level costs two JSON levels (its object and its ``layers`` array); a leaf adds
    at most two more (an ``init`` object, a kernel tuple). The slack lets a spec nested a little
    too deep reach the validator, which reports it against ``max_nesting`` by path.
    """
    return 2 * limits.max_nesting + 16


def max_json_values(limits: Limits) -> int:
    """About how many JSON values a spec document may hold: ``32 × max_nodes``."""
    return limits.max_nodes * _VALUES_PER_NODE


def check_document_bounds(text: str, limits: Limits, *, extra_depth: int = 0) -> None:
    """The bounds :func:`parse_json_text` checks before parsing, for a spec sent inside another
    JSON document (the service's request body), checked before anything is parsed.

    Args:
        text: The JSON text.
        limits: ``max_nodes`` bounds the number of values, ``max_nesting`` the depth.
        extra_depth: Levels the enclosing document adds around the spec.

    Raises:
        ResourceLimitError: More values than :func:`max_json_values` (counted from brackets and
            commas, strings included: an over-estimate).
        InvalidSpecError: Nesting deeper than :func:`max_json_depth` plus ``extra_depth``.
    """
    _check_value_count(text, limits)
    _check_depth(text, max_json_depth(limits) + extra_depth)


def parse_json_text(text: str | bytes, limits: Limits) -> Any:
    """Parse a spec document strictly.

    Args:
        text: JSON text, or its UTF-8 bytes (a BOM is allowed).
        limits: Size budgets; the document may be at most :func:`max_document_bytes` long and
            hold about ``32 × max_nodes`` JSON values.

    Returns:
        The parsed value (not yet validated as a spec). Numbers no spec field can hold are
        returned as :class:`OutOfRangeNumber` so validation can name their field.

    Raises:
        InvalidSpecError: Not UTF-8, not JSON, ``NaN``/``Infinity`` constants, duplicated keys,
            or nesting deeper than :func:`max_json_depth`.
        ResourceLimitError: The document is larger than the budgets allow.
    """
    max_bytes = max_document_bytes(limits)
    if len(text) > max_bytes:
        raise ResourceLimitError(
            f"the spec document is {len(text)} bytes, over the limit of {max_bytes} "
            f"(min(max_model_bytes, {_BYTES_PER_NODE} × max_nodes))",
            limit="max_model_bytes", value=max_bytes)
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidSpecError("", f"the spec is not UTF-8 text ({exc.reason} at byte "
                                       f"{exc.start})") from None
    check_document_bounds(text, limits)
    try:
        return strict_json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
    except strict_json.StrictJSONError as exc:
        raise InvalidSpecError("", str(exc)) from None
    except json.JSONDecodeError as exc:
        raise InvalidSpecError(
            "", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidSpecError("", "JSON nested too deeply") from None


def _check_value_count(text: str, limits: Limits) -> None:
    # Counting separators (inside strings too) over-estimates the number of values: safe side.
    count = text.count("{") + text.count("[") + text.count(",")
    bound = max_json_values(limits)
    if count > bound:
        raise ResourceLimitError(
            f"the spec document holds about {count} JSON values, over the {bound} that "
            f"max_nodes={limits.max_nodes} layers can need",
            limit="max_nodes", value=limits.max_nodes)


def _check_depth(text: str, bound: int) -> None:
    # Brackets inside strings do not nest, so drop escapes and string contents first (all
    # C-speed: a regex over a 20 MB string literal takes seconds). Escapes occur only inside
    # strings; removing ``\\`` pairs before ``\"`` pairs follows JSON's left-to-right reading.
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    outside = "".join(unescaped.split('"')[::2])
    depth = 0
    # _check_value_count caps the opening brackets; a stray closing one ends the loop early.
    for bracket in _NOT_BRACKET.sub("", outside):
        depth += 1 if bracket in "[{" else -1
        if depth > bound:
            raise InvalidSpecError("", f"JSON nested deeper than {bound} levels")
        if depth < 0:
            return  # not JSON; the parser says where


def _parse_int(literal: str) -> int | OutOfRangeNumber:
    if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
        return OutOfRangeNumber(literal)
    return int(literal)


def _parse_float(literal: str) -> float | OutOfRangeNumber:
    value = float(literal)
    return value if math.isfinite(value) else OutOfRangeNumber(literal)
