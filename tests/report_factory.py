"""A hand-built report of a deep sigmoid MLP, to preview the renderers without running a probe.

The numbers follow the shape a real probe gives for such a net (the backward signal shrinks by
about 4x per sigmoid, the first layers' weights barely move) but are synthetic. Used by the render
tests, the browser test and the README screenshot::

    python -m tests.report_factory > report.html
"""

from __future__ import annotations

import sys

from diagnostics.config import DiagnosisConfig
from diagnostics.report import (
    ActivationStats,
    Evidence,
    Flag,
    LayerReport,
    ParameterStats,
    Remedy,
    Report,
    RuleCheck,
    SampleReport,
    SamplesReport,
    SourceReport,
    Stat,
    Status,
    TemporalProfile,
    Timings,
    Verdict,
    Verification,
)

_NONE = Stat(median=None, min=None, max=None)


def _stat(median: float, spread: float = 0.25) -> Stat:
    return Stat(median=median, min=median * (1 - spread), max=median * (1 + spread))


def _linear(block: int, blocks: int, signal: float) -> LayerReport:
    name = f"layers.{2 * block}"
    grad = signal * 0.9
    params = [
        ParameterStats(
            name=f"{name}.{part}", shape=shape, grad_norm=_stat(grad * scale),
            grad_rms=_stat(grad * scale / 64), grad_mean_abs=_stat(grad * scale / 80),
            grad_max_abs=_stat(grad * scale / 8), weight_norm=8.0 if part == "weight" else 0.0,
            grad_to_weight=_stat(grad * scale / 8.0) if part == "weight" else _NONE,
            zero_fraction=_stat(0.0, 0), nonfinite_count=0,
        )
        for part, shape, scale in (("weight", [64, 64], 1.0), ("bias", [64], 0.12))
    ]
    flags = [Flag.VANISHING] if block < blocks // 3 else []
    return LayerReport(
        name=name, op_type="Linear", index=2 * block, depth=2 * (blocks - block) - 1,
        kinds=["parametric"], output_numel=64, output_grad_norm=_stat(signal),
        activations=ActivationStats(mean=_stat(0.02), std=_stat(3.1)), parameters=params,
        flags=flags,
    )


def _sigmoid(block: int, blocks: int, signal: float) -> LayerReport:
    saturated = 0.35 + 0.3 * block / blocks
    return LayerReport(
        name=f"layers.{2 * block + 1}", op_type="Sigmoid", index=2 * block + 1,
        depth=2 * (blocks - block) - 2, kinds=["activation"], activation="sigmoid", output_numel=64,
        output_grad_norm=_stat(signal),
        activations=ActivationStats(mean=_stat(0.5), std=_stat(0.42),
                                    saturated_fraction=_stat(saturated, 0.1)),
        flags=[Flag.SATURATED] if saturated >= 0.5 else [],
    )


def demo_report(blocks: int = 10, temporal: bool = False) -> Report:
    """A vanishing-gradient report for ``blocks`` Linear+Sigmoid pairs (2 × blocks layers).

    Args:
        blocks: Number of Linear+Sigmoid pairs.
        temporal: Also include a temporal profile of a sequence input.

    Returns:
        A valid :class:`Report` with flagged layers, a verified remedy and an unverified one.
    """
    layers: list[LayerReport] = []
    for block in range(blocks):
        signal = 0.08 * 0.22 ** (blocks - 1 - block)  # each sigmoid scales δ by ~0.22 going back
        layers += [_linear(block, blocks, signal * 0.22), _sigmoid(block, blocks, signal)]
    first, last = layers[0], layers[-2]
    ratio = 0.22 ** (blocks - 1)
    saturated = [layer.name for layer in layers if Flag.SATURATED in layer.flags]
    evidence = Evidence(
        backward_signal_ratio=_stat(ratio, 0.4), backward_signal_ratio_raw=_stat(ratio, 0.4),
        per_layer_gain=0.22, deepest_layer=first.name, shallowest_layer=last.name,
        weight_grad_ratio=_stat(ratio, 0.4), max_grad_to_weight=0.011,
        max_grad_to_weight_parameter=f"{last.name}.weight", saturated_layers=saturated,
        rules=[
            RuleCheck(rule="backward_signal_ratio < vanishing_ratio", value=ratio, threshold=1e-3,
                      fired=True,
                      detail=f"‖δ‖ at {first.name} is {ratio:.1e} of ‖δ‖ at {last.name}"),
            RuleCheck(rule="backward_signal_ratio > exploding_ratio", value=ratio, threshold=1e3,
                      fired=False, detail="the signal does not grow"),
            RuleCheck(rule="max_grad_to_weight > max_grad_to_weight", value=0.011, threshold=1e4,
                      fired=False, detail="relative steps are small"),
        ],
    )
    verdict = Verdict(
        status=Status.VANISHING, flags=[Flag.VANISHING, Flag.SATURATED], evidence=evidence,
        summary=f"Vanishing gradients: the backward signal reaching {first.name} is {ratio:.1e} of "
        f"the signal at {last.name} ({blocks} sigmoid layers, {len(saturated)} saturated).",
    )
    sigmoids = [layer.name for layer in layers if layer.op_type == "Sigmoid"]
    remedies = [
        Remedy(
            id="replace-activation", rank=1, title="Replace the sigmoid activations with ReLU",
            rationale=f"{len(saturated)} of {len(sigmoids)} sigmoid layers are saturated and each "
            "sigmoid scales the backward signal by about 0.22.",
            layers=sigmoids, params={"activation": "ReLU", "init": {"scheme": "kaiming_normal"}},
            verified=Verification(
                status_before=Status.VANISHING, status_after=Status.HEALTHY,
                evidence_before={"backward_signal_ratio": ratio, "per_layer_gain": 0.22},
                evidence_after={"backward_signal_ratio": 0.61, "per_layer_gain": 0.97},
            ),
        ),
        Remedy(
            id="add-normalization", rank=2, title="Add LayerNorm before each activation",
            rationale="Normalization keeps pre-activations out of the sigmoid's flat region.",
            layers=[layer.name for layer in layers if layer.op_type == "Linear"],
            params={"kind": "LayerNorm"}, verification_note="needs a change of architecture",
        ),
    ]
    norms = [0.8 ** (39 - t) if t != 5 else None for t in range(40)]  # one step not finite
    profiles = [TemporalProfile(input="x", axis=1, status=Status.VANISHING, decay_per_step=0.8,
                                effective_horizon=12, grad_norms=norms,
                                first_to_last_ratio=norms[0] / norms[-1])]
    return Report(
        source=SourceReport(kind="spec", sha256="9f2c" * 16, name="deep-sigmoid"),
        config=DiagnosisConfig(), verdict=verdict, layers=layers, remedies=remedies,
        temporal=profiles if temporal else [],
        samples=SamplesReport(count=3, batch_size=8, input_shapes={"x": [8, 64]},
                              runs=[SampleReport(seed=s, loss=0.25, status=Status.VANISHING)
                                    for s in range(3)]),
        timings=Timings(load_s=0.01, inputs_s=0.001, probe_s=0.12, verdict_s=0.002,
                        remedies_s=0.01, verification_s=0.2, total_s=0.343),
        notes=["Synthetic demonstration report."],
    )


if __name__ == "__main__":
    from diagnostics.render import render_html

    sys.stdout.write(render_html(demo_report(temporal="--temporal" in sys.argv)))
