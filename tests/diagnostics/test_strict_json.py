"""diagnostics.strict_json: the one parser for every JSON document a user hands us."""

from __future__ import annotations

import json

import pytest

from diagnostics import strict_json


@pytest.mark.parametrize(("text", "message"), [
    ('{"x": NaN}', "NaN is not valid JSON"),
    ('[Infinity]', "Infinity is not valid JSON"),
    ('[-Infinity]', "-Infinity is not valid JSON"),
    ('{"x": 1e400}', "1e400 is out of range"),
    ('{"loss": "sum", "loss": "mean_square"}', "duplicated key 'loss'"),
    ('{"a": {"b": 1, "b": 1}}', "duplicated key 'b'"),
])
def test_refuses_what_json_loads_accepts(text: str, message: str) -> None:
    json.loads(text)  # the standard parser takes every one of these
    with pytest.raises(strict_json.StrictJSONError, match=message):
        strict_json.loads(text)


def test_plain_documents_parse_as_json_loads_does() -> None:
    text = '{"a": [1, 2.5, -3e-7, true, null, "s"], "b": {"c": {}}}'
    assert strict_json.loads(text) == json.loads(text)
    assert strict_json.loads(text.encode()) == json.loads(text)


def test_callers_can_keep_big_numbers_to_name_them_later() -> None:
    marker = object()
    assert strict_json.loads("[1e400]", parse_float=lambda literal: marker) == [marker]


def test_not_json_is_the_standard_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        strict_json.loads("{nope")
