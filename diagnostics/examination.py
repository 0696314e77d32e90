"""One examination of a model on a set of batches: probe -> statistics -> verdict (+ temporal).

The diagnosis runs it once; verification runs it again on each remedied copy with the same
batches, so "before" and "after" are measured the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from diagnostics import temporal
from diagnostics.aggregate import build_layer_reports
from diagnostics.config import DiagnosisConfig
from diagnostics.inputs import SampleBatch
from diagnostics.model import LoadedModel
from diagnostics.probe import SampleObservation, probe_mode, run_sample
from diagnostics.report import Flag, LayerReport, Status, TemporalProfile, Verdict
from diagnostics.verdict import judge

Progress = Callable[[str], None]


@dataclass
class Examination:
    observations: list[SampleObservation]
    layers: list[LayerReport]
    verdict: Verdict
    sample_statuses: list[Status]
    temporal: list[TemporalProfile] = field(default_factory=list)
    probe_s: float = 0.0
    verdict_s: float = 0.0


def examine(model: LoadedModel, batches: list[SampleBatch], config: DiagnosisConfig,
            progress: Progress | None = None) -> Examination:
    """Probe every batch, summarize, judge, and profile recurrent memory over time.

    The temporal profile is reported and flagged (``temporal_vanishing`` /
    ``temporal_exploding``) but does not change the status: gated cells at their default
    initialization forget within tens of steps too, and a healthy LSTM must not fail a build.
    """
    say = progress or (lambda _message: None)
    clock = time.perf_counter()
    observations = []
    profiles: list[TemporalProfile] = []
    target = temporal.find_target(model)
    with probe_mode(model.module, config.norm_stats):
        for number, batch in enumerate(batches, 1):
            say(f"sample {number}/{len(batches)}: forward + backward")
            observations.append(run_sample(model, batch, config))
        if target is not None:
            say("temporal profile")
            norms = [temporal.step_norms(model, batch, config, target) for batch in batches]
            if all(norms):
                profiles.append(temporal.profile(target, norms, config.thresholds))
    probe_s = time.perf_counter() - clock

    clock = time.perf_counter()
    layers = build_layer_reports(model, observations, config.thresholds)
    verdict, statuses = judge(model, layers, observations, config.thresholds)
    for found in profiles:
        flag = {Status.VANISHING: Flag.TEMPORAL_VANISHING,
                Status.EXPLODING: Flag.TEMPORAL_EXPLODING}.get(found.status)
        if flag is not None and flag not in verdict.flags:
            verdict.flags.append(flag)
            verdict.summary += f" {temporal.describe(found)}"
    return Examination(observations, layers, verdict, statuses, profiles, probe_s,
                       time.perf_counter() - clock)
