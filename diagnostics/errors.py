"""The errors a caller of :mod:`diagnostics` can act on.

Every class here means "the input is wrong" (a user can fix it); anything else raised from
``diagnose`` is a bug. Each error carries a machine-readable ``error_type`` and, where it applies,
what it is about (a JSON path, an ONNX node, an op) so the CLI and the HTTP API can name it.
"""

from __future__ import annotations

from typing import Any


class DiagnosticsError(Exception):
    """Base class: bad input that the user can fix.

    Attributes:
        error_type: Stable snake_case identifier, used as the ``error`` field of API bodies.
        detail: One line a person reads; it names the file, field, node or op at fault.
        context: Structured facts behind ``detail`` (field path, node name, op, opset ...).
    """

    error_type = "diagnostics_error"

    def __init__(self, detail: str, **context: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.context = {key: value for key, value in context.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        """The error as a JSON-ready body: ``{"error", "detail", **context}``."""
        return {"error": self.error_type, "detail": self.detail, **self.context}


class ModelLoadError(DiagnosticsError):
    """The model file is not a usable ONNX model (garbage, truncated, fails the checker ...)."""

    error_type = "invalid_model"


class ExternalDataError(ModelLoadError):
    """The ONNX model keeps tensors in external files, which we never open."""

    error_type = "external_data"


class UnsupportedOperatorError(ModelLoadError):
    """No converter exists for an ONNX op at the model's opset."""

    error_type = "unsupported_operator"

    def __init__(self, op_type: str, *, domain: str = "", opset: int | None = None,
                 node: str | None = None, detail: str | None = None) -> None:
        domain_text = domain or "ai.onnx"
        message = detail or (
            f"operator {op_type} (domain {domain_text}, opset {opset}) used by node "
            f"{node!r} is not supported"
        )
        super().__init__(message, op_type=op_type, domain=domain_text, opset=opset, node=node)


class InvalidSpecError(DiagnosticsError):
    """The JSON architecture spec is malformed; ``path`` is the JSON path at fault."""

    error_type = "invalid_spec"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message, path=path or None)
        self.path = path


class InvalidInputsError(DiagnosticsError):
    """Sample inputs (npz or synthesized) do not fit the model's inputs."""

    error_type = "invalid_inputs"

    def __init__(self, detail: str, *, input_name: str | None = None,
                 axis: int | None = None) -> None:
        super().__init__(detail, input=input_name, axis=axis)


class InvalidConfigError(DiagnosticsError):
    """A config field is out of range or of the wrong type; ``field`` names it."""

    error_type = "invalid_config"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail, field=field)


class ResourceLimitError(DiagnosticsError):
    """The model would exceed a size or work budget (parameters, elements, nodes, depth)."""

    error_type = "resource_limit"

    def __init__(self, detail: str, *, limit: str, value: Any) -> None:
        super().__init__(detail, limit=limit, limit_value=value)


class OutOfMemoryError(DiagnosticsError):
    """An allocation failed during the probe: the model and inputs need more memory than the
    process may use. ``node`` names the layer where it happened, where we can tell."""

    error_type = "out_of_memory"

    def __init__(self, detail: str, *, node: str | None = None) -> None:
        super().__init__(detail, node=node)


class ProbeError(DiagnosticsError):
    """The model loaded but its forward or backward pass failed on the sample inputs.

    ``node`` names the layer that raised, where we can tell.
    """

    error_type = "probe_failed"

    def __init__(self, detail: str, *, node: str | None = None) -> None:
        super().__init__(detail, node=node)


class RemedyNotRepairableError(DiagnosticsError):
    """The remedy does not exist, or changes more than initializer values."""

    error_type = "remedy_not_repairable"
