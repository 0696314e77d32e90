"""Is a tiny gradient real, or float rounding noise? Re-measure it in float64.

When the loss is (nearly) invariant to the output layer's input — mean(y²) or sum(y) of a
normalized output — the exact gradient below that layer is zero and what float32 computes is
rounding noise, ~1e-7 of the signal at the output. A real loss of signal (a saturated unit) is
the same in any precision; an invariance falls to ~1e-16 in float64. One float64 pass of one
sample tells them apart (README, "Verdict rules": rounding_noise).
"""

from __future__ import annotations

from diagnostics.aggregate import build_layer_reports
from diagnostics.config import DiagnosisConfig
from diagnostics.errors import DiagnosticsError
from diagnostics.inputs import SampleBatch
from diagnostics.model import LoadedModel, copy_model
from diagnostics.probe import probe_mode, run_sample
from diagnostics.temporal import TemporalTarget, last_step_view
from diagnostics.verdict import rounding_step


def float64_rounding_ratio(model: LoadedModel, batch: SampleBatch, config: DiagnosisConfig,
                           last_step_of: TemporalTarget | None = None) -> float | None:
    """The output-layer step ratio (see :func:`diagnostics.verdict.rounding_step`) measured in
    float64 on a copy of the model, the loss on the last step of ``last_step_of``'s sequence
    when given; None when the copy cannot run in float64."""
    copy = copy_model(model)
    try:
        copy.module.double()
    except (RuntimeError, TypeError):
        return None
    wide = SampleBatch(batch.seed, tuple(t.double() if t.is_floating_point() else t
                                         for t in batch.tensors))
    try:
        with probe_mode(copy.module, config.norm_stats), \
                last_step_view(copy.module, last_step_of) as loss_reads:
            observed = run_sample(copy, wide, config, loss_reads)
    except (DiagnosticsError, RuntimeError):
        return None
    step = rounding_step(build_layer_reports(copy, [observed], config.thresholds))
    return step[1] if step else None
