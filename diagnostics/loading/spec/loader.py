"""JSON architecture spec -> :class:`~diagnostics.model.LoadedModel`.

A spec names torch.nn layers from an allowlist, with their constructor arguments::

    {
      "name": "deep-sigmoid",
      "inputs": [{"name": "x", "shape": [16, 64], "dtype": "float32"}],
      "init": {"scheme": "xavier_uniform"},
      "layers": [
        {"type": "Linear", "in_features": 64, "out_features": 64},
        {"type": "Sigmoid"},
        {"type": "Repeat", "times": 10, "layers": [...]},
        {"type": "Residual", "layers": [...]}
      ]
    }

Loading is three steps, each a public function so remedies can edit a spec and rebuild it:
:func:`parse_spec` (strict JSON, schema, budgets by arithmetic), then
:func:`~diagnostics.loading.spec.build.build_spec` (shapes checked on the meta device, then
modules built and initialized with per-layer seeds). Nothing in a spec is ever evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.loading.spec.build import build_spec
from diagnostics.loading.spec.parsing import parse_json_text
from diagnostics.loading.spec.schema import SpecModel, validate_spec
from diagnostics.model import LoadedModel

__all__ = ["SpecModel", "build_spec", "load_spec", "parse_spec"]


def parse_spec(spec: SpecModel | Mapping[str, Any] | str | bytes, *,
               limits: Limits = DEFAULT_LIMITS) -> SpecModel:
    """Parse and validate a spec without building anything.

    Args:
        spec: The spec as a dict, its JSON text (str or UTF-8 bytes), or a :class:`SpecModel`
            (validated again).
        limits: Budgets checked before anything is allocated: document size, ``max_nesting``
            of containers, ``max_nodes`` after expanding Repeat, ``max_parameters``,
            ``max_tensor_elements``, ``max_input_elements``.

    Returns:
        The validated spec; ``spec.to_dict()`` gives it back as JSON-ready data.

    Raises:
        InvalidSpecError: Malformed JSON (``NaN``, duplicated keys, nesting too deep) or spec,
            naming the JSON path at fault (``layers[3].out_features``).
        ResourceLimitError: A budget would be exceeded; names the limit and its value.
    """
    if isinstance(spec, str | bytes | bytearray):
        return validate_spec(parse_json_text(spec, limits), limits)
    if isinstance(spec, SpecModel):
        return validate_spec(spec.to_dict(), limits)
    return validate_spec(dict(spec) if isinstance(spec, Mapping) else spec, limits)


def load_spec(spec: SpecModel | Mapping[str, Any] | str | bytes, *,
              limits: Limits = DEFAULT_LIMITS, seed: int = 0) -> LoadedModel:
    """Load an architecture spec as a model ready to probe: :func:`parse_spec` then build.

    Args:
        spec: The spec as a dict, its JSON text (str or UTF-8 bytes), or a :class:`SpecModel`.
        limits: Size budgets (see :func:`parse_spec`).
        seed: Seeds every layer's initialization; the global RNG state is left as it was.

    Returns:
        The model (eval mode; ``module(x)`` returns one tensor), its single input, watched
        layers named by JSON path (``layers.2.layers.1``, Repeat copies ``layers.2[4]``) and
        parameters named ``<layer name>.<parameter>`` (``layers.3.weight``).

    Raises:
        InvalidSpecError: The spec is malformed, or consecutive layers' shapes do not fit.
        ResourceLimitError: It would exceed a budget.
    """
    return build_spec(parse_spec(spec, limits=limits), seed=seed, limits=limits)
