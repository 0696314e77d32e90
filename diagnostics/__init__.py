"""GradDoctor's diagnostics library: per-layer gradient statistics, a verdict and remedies.

    from diagnostics import diagnose
    report = diagnose("model.onnx", config={"samples": 1})
    report.verdict.status   # "healthy" | "vanishing" | "exploding"
"""

from typing import TYPE_CHECKING, Any

from diagnostics.config import DiagnosisConfig, Thresholds
from diagnostics.errors import DiagnosticsError
from diagnostics.limits import Limits
from diagnostics.report import Report, Status

if TYPE_CHECKING:
    from diagnostics.pipeline import diagnose, warm_up

__all__ = ["DiagnosisConfig", "DiagnosticsError", "Limits", "Report", "Status", "Thresholds",
           "diagnose", "warm_up"]


def __getattr__(name: str) -> Any:
    # diagnose pulls in torch; the report types and renderers must not (a pipeline client that
    # only prints reports should start in milliseconds).
    if name in ("diagnose", "warm_up"):
        from diagnostics import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'diagnostics' has no attribute {name!r}")
