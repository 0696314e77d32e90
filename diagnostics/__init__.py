"""GradDoctor's diagnostics library: per-layer gradient statistics, a verdict and remedies.

    from diagnostics import diagnose
    report = diagnose("model.onnx", config={"samples": 1})
    report.verdict.status   # "healthy" | "vanishing" | "exploding"
"""

from diagnostics.config import DiagnosisConfig, Thresholds
from diagnostics.errors import DiagnosticsError
from diagnostics.limits import Limits
from diagnostics.pipeline import diagnose
from diagnostics.report import Report, Status

__all__ = ["DiagnosisConfig", "DiagnosticsError", "Limits", "Report", "Status", "Thresholds",
           "diagnose"]
