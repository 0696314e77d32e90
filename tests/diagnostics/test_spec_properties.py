"""Properties of the spec validator under arbitrary input (hypothesis).

test_loading_spec.py already feeds arbitrary JSON values in as one layer or as the whole spec.
Here: whole spec trees built from the real allowlist (containers of any ``times``, every layer
type, its real argument names with hostile values), arbitrary JSON *text* (brackets and quotes
inside strings, huge number literals, invalid UTF-8), and valid specs generated from scratch.

- Whatever the document, ``parse_spec``/``load_spec`` raise nothing but InvalidSpecError or
  ResourceLimitError, quickly.
- The budgets are honest: a spec that builds holds no more parameters, layers or elements per
  tensor than the limits allow, so "accepted" never means "allocates more than the operator set".
- The depth pre-check (which scans brackets before parsing) never refuses a document that is
  within the depth bound, whatever its strings contain, and never lets a deeper one through.
- Valid small specs always build and run, and survive ``to_dict`` -> ``parse_spec`` unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diagnostics.errors import InvalidSpecError, ResourceLimitError
from diagnostics.limits import Limits
from diagnostics.loading.spec.layers import CONTAINER_TYPES, LAYER_TYPES
from diagnostics.loading.spec.loader import load_spec, parse_spec
from diagnostics.loading.spec.parsing import max_json_depth, parse_json_text

LIMITS = Limits(max_parameters=100_000, max_nodes=64, max_nesting=3,
                max_tensor_elements=200_000, max_input_elements=20_000)
SPEC_ERRORS = (InvalidSpecError, ResourceLimitError)
PROPERTIES = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Values an attacker would try in any argument: boundaries, huge, negative, wrong types.
HOSTILE = (st.integers(min_value=-3, max_value=12)
           | st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**63, 10**12, 10**400])
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.booleans() | st.none() | st.text(max_size=6)
           | st.lists(st.integers(min_value=-1, max_value=9), max_size=4)
           | st.sampled_from(["same", "valid", "relu", "gelu", "zeros", "circular",
                              {"scheme": "orthogonal"}, {"scheme": "constant", "value": 1e308},
                              {"scheme": "normal", "std": -1}, {}, []]))
TYPE_NAMES = st.sampled_from(sorted(LAYER_TYPES)) | st.sampled_from(["Lineer", "os.system", ""])


# Values a real spec uses, so that many generated layers get past their arguments.
PLAUSIBLE = st.integers(min_value=1, max_value=8) | st.sampled_from([True, False, 0.5, 1e-5])


@st.composite
def leaves(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(TYPE_NAMES)
    layer_type = LAYER_TYPES.get(kind)
    layer: dict[str, Any] = {"type": kind}
    if layer_type is not None:  # its required arguments, mostly plausible
        for name in layer_type.required:
            layer[name] = draw(PLAUSIBLE | HOSTILE)
    arg_names = [*layer_type.args, "init", "bias_init"] if layer_type else []
    for name in draw(st.lists(st.sampled_from([*arg_names, "inplace", "bogus"]), unique=True,
                              max_size=3)):
        layer[name] = draw(HOSTILE)
    return layer


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    times = st.integers(min_value=-1, max_value=5) | st.sampled_from([10**6, 10**18, 2**63])
    return st.builds(
        lambda kind, layers, count: {"type": kind, "layers": layers,
                                     **({"times": count} if kind == "Repeat" else {})},
        st.sampled_from(CONTAINER_TYPES), st.lists(children, max_size=3), times)


LAYER_TREES = st.recursive(leaves(), containers, max_leaves=8)
INPUTS = st.builds(
    lambda shape, dtype: [{"name": "x", "shape": shape, "dtype": dtype}],
    st.lists(st.integers(min_value=1, max_value=8), min_size=2, max_size=4)
    | st.lists(st.integers(min_value=-1, max_value=12) | st.sampled_from([10**6, 2**40]),
               max_size=5),
    st.sampled_from(["float32", "float32", "int64"])
    | st.sampled_from(["int32", "float16", "complex64"]))
SPECS = st.fixed_dictionaries({"inputs": INPUTS,
                               "layers": st.lists(LAYER_TREES, min_size=1, max_size=4)},
                              optional={"name": st.text(max_size=10), "init": HOSTILE})


def _assert_within_budgets(model: Any, limits: Limits) -> None:
    parameters = list(model.module.parameters())
    buffers = list(model.module.buffers())
    assert sum(p.numel() for p in parameters) + sum(b.numel() for b in buffers) \
        <= limits.max_parameters
    assert all(t.numel() <= limits.max_tensor_elements for t in [*parameters, *buffers])
    assert sum(1 for _ in model.module.modules()) <= limits.max_nodes + 1  # + the root


@settings(PROPERTIES, max_examples=300)
@given(spec=SPECS)
def test_spec_trees_raise_only_spec_errors_and_respect_the_budgets(spec: dict[str, Any]) -> None:
    try:
        model = load_spec(spec, limits=LIMITS)
    except SPEC_ERRORS:
        pass
    else:
        _assert_within_budgets(model, LIMITS)


# JSON-ish text: real JSON, then cut, spliced or salted with what trips scanners up.
NASTY_TEXT = st.sampled_from(['"[[[["', '"\\\\"', '"\\""', "\\", "[", "]", "{", "}", '"',
                              "1e999", "-" + "9" * 50, "9" * 5000, "NaN", "Infinity", ",",
                              '"a": 1, "a": 2', "\ufeff", "\x00", "\ud800"])


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    text = json.dumps(draw(SPECS))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        if draw(st.booleans()):
            text = text[:at] + draw(NASTY_TEXT) + text[at:]
        else:
            text = text[:at]
    return text


@PROPERTIES
@given(text=json_texts() | st.text(max_size=200))
def test_json_text_raises_only_spec_errors(text: str) -> None:
    for source in (text, text.encode("utf-8", "surrogatepass")):
        try:
            parse_spec(source, limits=LIMITS)
        except SPEC_ERRORS:
            pass


@PROPERTIES
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_spec_errors(data: bytes) -> None:
    try:
        parse_spec(b"{" + data, limits=LIMITS)
    except SPEC_ERRORS:
        pass


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    return 0


STRINGS_WITH_BRACKETS = st.text(alphabet='[]{}"\\ab', max_size=12)
NESTED_VALUES = st.recursive(
    st.integers(0, 3) | STRINGS_WITH_BRACKETS,
    lambda children: st.lists(children, max_size=2)
    | st.dictionaries(STRINGS_WITH_BRACKETS, children, max_size=2), max_leaves=30)


@st.composite
def nested_documents(draw: st.DrawFn) -> Any:
    """A value with brackets and escapes in its strings, wrapped in 0 to 30 more levels."""
    value = draw(NESTED_VALUES)
    for level in range(draw(st.integers(0, 30))):
        value = [value] if level % 2 else {draw(STRINGS_WITH_BRACKETS): value}
    return value


@PROPERTIES
@given(value=nested_documents())
def test_the_depth_precheck_agrees_with_the_parser(value: Any) -> None:
    text = json.dumps(value)
    if _depth(value) > max_json_depth(LIMITS):
        with pytest.raises(InvalidSpecError, match="nested deeper"):
            parse_json_text(text, LIMITS)
    else:
        assert parse_json_text(text, LIMITS) == value


ACTIVATIONS = st.sampled_from(["ReLU", "Tanh", "Sigmoid", "GELU", "SiLU", "LeakyReLU", "ELU"])


@st.composite
def valid_specs(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[int, int]]:
    """A small MLP with residual and repeated blocks: always valid under LIMITS."""
    batch, width = draw(st.integers(1, 8)), draw(st.integers(1, 16))
    layers: list[dict[str, Any]] = []
    current = width
    for _ in range(draw(st.integers(1, 4))):
        block = draw(st.sampled_from(["linear", "residual", "repeat", "norm"]))
        if block == "linear":
            out = draw(st.integers(1, 16))
            layers += [{"type": "Linear", "in_features": current, "out_features": out},
                       {"type": draw(ACTIVATIONS)}]
            current = out
        elif block == "residual":
            layers.append({"type": "Residual", "layers": [
                {"type": "Linear", "in_features": current, "out_features": current},
                {"type": draw(ACTIVATIONS)}]})
        elif block == "repeat":
            layers.append({"type": "Repeat", "times": draw(st.integers(1, 3)), "layers": [
                {"type": "Linear", "in_features": current, "out_features": current,
                 "init": {"scheme": draw(st.sampled_from(["xavier_uniform", "orthogonal"]))}},
                {"type": draw(ACTIVATIONS)}]})
        else:
            layers.append({"type": "LayerNorm", "normalized_shape": current})
    layers.append({"type": "Linear", "in_features": current, "out_features": 1})
    return {"inputs": [{"name": "x", "shape": [batch, width]}], "layers": layers}, (batch, width)


@settings(PROPERTIES, max_examples=60)
@given(sample=valid_specs())
def test_valid_small_specs_always_build_and_run(
        sample: tuple[dict[str, Any], tuple[int, int]]) -> None:
    spec, shape = sample
    model = load_spec(spec, limits=LIMITS)
    _assert_within_budgets(model, LIMITS)
    x = torch.randn(shape, requires_grad=True)
    y = model.module(x)
    assert y.shape == (shape[0], 1)
    y.square().mean().backward()
    assert x.grad is not None
    assert parse_spec(parse_spec(spec, limits=LIMITS).to_dict(), limits=LIMITS) \
        == parse_spec(spec, limits=LIMITS)
