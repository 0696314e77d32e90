"""Typed, range-checked values of a spec: one small validator per kind of argument.

Every validator takes the raw JSON value and its JSON path and returns the normalized value
(ints stay ints, floats become floats, lists become tuples) or raises
:class:`~diagnostics.errors.InvalidSpecError` naming the path. Values arrive from JSON or from a
caller's dict, so anything can show up: ``bool`` is not an ``int`` here (it is one in Python),
numbers must be finite, and error messages never print a value in full.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from diagnostics.errors import InvalidSpecError
from diagnostics.loading.spec.parsing import OutOfRangeNumber

# torch indexes sizes with int64, but no sane layer has a dimension near 2**31; the cap keeps
# products of a few dimensions inside int64 while the parameter budget does the real limiting.
MAX_DIM = 2**31 - 1
MAX_RANK = 8


class Arg(Protocol):
    """Validates one argument value."""

    def parse(self, value: Any, path: str) -> Any:
        """The normalized value, or InvalidSpecError naming ``path``."""
        ...


def describe(value: Any) -> str:
    """A short, safe description of any value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # str() of an int over 4300 digits raises in CPython; never format one in full.
        bits = value.bit_length()
        return repr(value) if bits <= 64 else f"an integer of {bits} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "…"
    if isinstance(value, OutOfRangeNumber):
        return f"the number {value.literal} (out of range)"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def is_int(value: Any) -> bool:
    """True for a JSON integer (a Python int that is not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a finite JSON number (int or float, not a bool)."""
    if is_int(value):
        return abs(value) <= 1e300
    return isinstance(value, float) and math.isfinite(value)


def key_path(path: str, key: Any) -> str:
    """The JSON path of ``key`` inside the object at ``path`` (keys shown safely)."""
    name = key[:40] if isinstance(key, str) else f"<{describe(key)}>"
    return f"{path}.{name}" if path else name


def wrong_type(path: str, expected: str, value: Any) -> InvalidSpecError:
    """The error for a value of the wrong type."""
    return InvalidSpecError(path, f"expected {expected}, got {describe(value)}")


@dataclass(frozen=True)
class Int:
    """An integer in ``[low, high]``, or null when ``nullable``."""

    low: int = 1
    high: int = MAX_DIM
    nullable: bool = False

    def parse(self, value: Any, path: str) -> int | None:
        """See :class:`Arg`."""
        if value is None and self.nullable:
            return None
        return self.parse_int(value, path)

    def parse_int(self, value: Any, path: str) -> int:
        """:meth:`parse` where null is not an answer (``nullable`` only words the error)."""
        if not is_int(value):
            raise wrong_type(path, "an integer" + (" or null" if self.nullable else ""), value)
        if value < self.low:
            raise InvalidSpecError(path, f"must be ≥ {self.low}, got {describe(value)}")
        if value > self.high:
            raise InvalidSpecError(path, f"must be ≤ {self.high}, got {describe(value)}")
        return value


@dataclass(frozen=True)
class Float:
    """A finite number in a range; ``open_low`` excludes ``low`` itself."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    nullable: bool = False

    def parse(self, value: Any, path: str) -> float | None:
        """See :class:`Arg`."""
        if value is None and self.nullable:
            return None
        if not is_number(value):
            raise wrong_type(path, "a finite number" + (" or null" if self.nullable else ""),
                             value)
        number = float(value)
        if self.low is not None and (number < self.low or (self.open_low and number == self.low)):
            relation = ">" if self.open_low else "≥"
            raise InvalidSpecError(path, f"must be {relation} {self.low}, got {describe(value)}")
        if self.high is not None and number > self.high:
            raise InvalidSpecError(path, f"must be ≤ {self.high}, got {describe(value)}")
        return number


@dataclass(frozen=True)
class Bool:
    """``true`` or ``false``."""

    def parse(self, value: Any, path: str) -> bool:
        """See :class:`Arg`."""
        if not isinstance(value, bool):
            raise wrong_type(path, "true or false", value)
        return value


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    choices: tuple[str, ...]

    def parse(self, value: Any, path: str) -> str:
        """See :class:`Arg`."""
        if not isinstance(value, str) or value not in self.choices:
            options = ", ".join(repr(choice) for choice in self.choices)
            raise wrong_type(path, f"one of {options}", value)
        return value


@dataclass(frozen=True)
class IntTuple:
    """An integer, or a list of integers (exactly ``length`` of them, or 1..MAX_RANK).

    ``item_nullable`` lets list items be null (adaptive pooling keeps that axis).
    """

    length: int | None = None
    low: int = 1
    item_nullable: bool = False
    nullable: bool = False

    def parse(self, value: Any, path: str) -> int | tuple[int | None, ...] | None:
        """See :class:`Arg`."""
        if value is None and self.nullable:
            return None
        item = Int(low=self.low)
        if is_int(value):
            return item.parse(value, path)
        if not isinstance(value, list | tuple) or not self._length_ok(value):
            count = f"{self.length}" if self.length else f"1 to {MAX_RANK}"
            raise wrong_type(path, f"an integer ≥ {self.low} or a list of {count} of them", value)
        list_item = Int(low=self.low, nullable=self.item_nullable)
        return tuple(list_item.parse(entry, f"{path}[{index}]")
                     for index, entry in enumerate(value))

    def _length_ok(self, value: Sequence[Any]) -> bool:
        return len(value) == self.length if self.length else 1 <= len(value) <= MAX_RANK


@dataclass(frozen=True)
class Padding:
    """Convolution padding: integers like :class:`IntTuple`, or ``"same"`` / ``"valid"``."""

    length: int

    def parse(self, value: Any, path: str) -> int | str | tuple[int | None, ...] | None:
        """See :class:`Arg`."""
        if isinstance(value, str):
            return Choice(("same", "valid")).parse(value, path)
        return IntTuple(self.length, low=0).parse(value, path)


def as_tuple(value: int | tuple[int, ...], length: int) -> tuple[int, ...]:
    """An int-or-tuple argument as a tuple of ``length`` items."""
    return value if isinstance(value, tuple) else (value,) * length
