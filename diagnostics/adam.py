"""What Adam's first steps do, from the gradients a probe pass measured (``optimizer: adam``).

Adam (Kingma & Ba 2015, Algorithm 1; torch.optim.Adam) divides each element's step by the running
RMS of that element's own gradient: Δw = −lr · m̂ / (√v̂ + ε). Its first step is therefore
lr · g / (|g| + ε): about lr · sign(g) wherever |g| ≫ ε (1e-8 in torch), *whatever the size of g*,
and only lr · g / ε where |g| ≪ ε. The verdict uses three consequences (README, "Verdict rules"):

- Small gradient magnitudes alone do not stall Adam. A net initialized too small (every layer's
  gradient 1e-9, flat over depth) gets lr-sized steps everywhere and rescales its weights within
  about RMS(W)/lr steps; SGD, whose step is lr · g, does not move it.
- What a step does to the loss is, to first order, Σ |g| · lr = lr · ‖g‖₁ per weight tensor. So
  the ratio of ‖g‖₁ between the first and the last hidden weights says how much more slowly the
  first layers can change the output, lr-sized steps and all: a profile that decays with depth
  (saturated units, default-initialized deep stacks whose biases drown the input's signal) stalls
  Adam as it stalls SGD.
- Below ε the step shrinks in proportion to |g|: gradients ~100× under ε do not move at all.
"""

from __future__ import annotations

import math

from diagnostics.aggregate import is_weight, make_stat
from diagnostics.probe import SampleObservation
from diagnostics.report import LayerReport, ParameterStats, Stat
from diagnostics.stats import profile_ratio

# torch.optim.Adam's default ε (and Kingma & Ba's).
ADAM_EPSILON = 1e-8


def first_step_norm(grad_rms: float, numel: int, learning_rate: float) -> float:
    """‖ΔW‖ of Adam's first step: every element moves by lr·|g|/(|g| + ε), here at |g| = RMS."""
    return learning_rate * math.sqrt(numel) * grad_rms / (grad_rms + ADAM_EPSILON)


def _weight(layer: LayerReport) -> ParameterStats | None:
    return next((p for p in layer.parameters if is_weight(p)), None)


def first_weight_grad_rms(layers: list[LayerReport], deep: int) -> float | None:
    """Median per-element gradient RMS of the deepest hidden layer's weight."""
    weight = _weight(layers[deep])
    return weight.grad_rms.median if weight else None


def _l1(weight: ParameterStats, mean_abs: float | None) -> float | None:
    if mean_abs is None or not math.isfinite(mean_abs):
        return None
    return mean_abs * math.prod(weight.shape)


def l1_ratio(deep: float | None, shallow: float | None) -> float | None:
    """deep / shallow as :func:`~diagnostics.stats.profile_ratio` (None where either is unknown)."""
    if deep is None or shallow is None:
        return None
    return profile_ratio(deep, shallow)


def sample_l1_ratios(layers: list[LayerReport], samples: list[SampleObservation],
                     ends: tuple[int, int]) -> list[float | None]:
    """Per sample, ‖∂L/∂W‖₁ of the deepest hidden weight over that of the shallowest."""
    deep, shallow = (_weight(layers[i]) for i in ends)
    if deep is None or shallow is None:
        return [None] * len(samples)
    ratios = []
    for sample in samples:
        a, b = sample.parameters.get(deep.name), sample.parameters.get(shallow.name)
        ratios.append(l1_ratio(_l1(deep, a.mean_abs if a else None),
                               _l1(shallow, b.mean_abs if b else None)))
    return ratios


def sample_first_rms(layers: list[LayerReport], samples: list[SampleObservation],
                     deep: int) -> list[float | None]:
    """Per sample, the per-element gradient RMS of the deepest hidden weight."""
    weight = _weight(layers[deep])
    if weight is None:
        return [None] * len(samples)
    found = [sample.parameters.get(weight.name) for sample in samples]
    return [g.rms if g is not None and math.isfinite(g.rms) else None for g in found]


def l1_ratio_stat(ratios: list[float | None]) -> Stat | None:
    """The samples' ratios as a statistic (None when none was measured)."""
    stat = make_stat(ratios)
    return stat if stat.median is not None else None
