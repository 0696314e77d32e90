"""The anchors' one-batch rules (docs/trainability.md, "What is scored"), as implemented here.

All three are computed from ONE batch of the model's own training loss (cross-entropy on the
teacher's labels, or the adding problem's last-step MSE) at the initial weights — the weights
``diagnose`` probes — in training mode (BatchNorm on batch statistics). "Weight tensors" are the
parameters with at least two dimensions (Linear weights, Conv kernels, recurrent weight_ih /
weight_hh), in definition order: the first is the input layer's, the last the readout's. Biases
and normalization scales are not weights. Each rule checks exploding before vanishing.

- **AUTOTRAINER** (Zhang et al., ICSE'21): r = ‖g_first‖/‖g_last‖ over the first and last weight
  tensors' gradients. Exploding: a NaN/Inf loss or gradient, or r > 70. Vanishing: r < 1e-3 and
  ‖g_first‖ < 1e-4. (Its training-time condition, "accuracy also stays low", has no counterpart
  in a one-batch check and is dropped.)
- **DeepDiagnosis** (Wardat et al., ICSE'22): exploding: a NaN/Inf loss or gradient. Vanishing:
  some weight tensor's mean |∂L/∂W| < 1e-7.
- **TheDeepChecker** (Ben Braiek & Khomh, TOSEM'22): exploding: a NaN/Inf loss or gradient, or
  some weight tensor's mean |∂L/∂W| > 1e6. Vanishing: some weight tensor's mean |∂L/∂W| < 1e-6.
  (Its "steady halving/doubling" conditions need a training trace and are dropped.)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.trainability.models import BenchModel
from bench.trainability.tasks import make_task
from bench.trainability.train import DATA_SEED, build_module

ANCHORS = ("autotrainer", "deepdiagnosis", "thedeepchecker")


def one_batch_gradients(model: BenchModel) -> dict[str, Any]:
    """Gradient facts of one training batch at the initial weights."""
    task = make_task(model)
    torch.manual_seed(DATA_SEED)
    module = build_module(model).train()
    x, target = task.batch(torch.Generator().manual_seed(DATA_SEED))
    loss = task.loss(module(x), target)
    weights = [p for p in module.parameters() if p.dim() >= 2]
    finite_loss = bool(torch.isfinite(loss))
    if finite_loss:
        loss.backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in weights]
    finite = finite_loss and all(bool(torch.isfinite(g).all()) for g in grads)
    mean_abs = [float(g.abs().mean()) for g in grads] if finite else []
    return {"loss": float(loss.detach()), "nonfinite": not finite,
            "first_grad_norm": float(grads[0].norm()) if finite else None,
            "last_grad_norm": float(grads[-1].norm()) if finite else None,
            "min_mean_abs_grad": min(mean_abs) if mean_abs else None,
            "max_mean_abs_grad": max(mean_abs) if mean_abs else None}


def autotrainer(facts: dict[str, Any]) -> str:
    """AUTOTRAINER's gradient rule on one batch."""
    if facts["nonfinite"]:
        return "exploding"
    first, last = facts["first_grad_norm"], facts["last_grad_norm"]
    ratio = first / last if last > 0 else (math.inf if first > 0 else 1.0)
    if ratio > 70:
        return "exploding"
    if ratio < 1e-3 and first < 1e-4:
        return "vanishing"
    return "healthy"


def deepdiagnosis(facts: dict[str, Any]) -> str:
    """DeepDiagnosis's gradient rule on one batch."""
    if facts["nonfinite"]:
        return "exploding"
    return "vanishing" if facts["min_mean_abs_grad"] < 1e-7 else "healthy"


def thedeepchecker(facts: dict[str, Any]) -> str:
    """TheDeepChecker's gradient rule on one batch."""
    if facts["nonfinite"] or facts["max_mean_abs_grad"] > 1e6:
        return "exploding"
    return "vanishing" if facts["min_mean_abs_grad"] < 1e-6 else "healthy"


def anchor_calls(model: BenchModel) -> tuple[dict[str, str], dict[str, Any]]:
    """Each anchor's call on ``model`` and the gradient facts they rest on."""
    facts = one_batch_gradients(model)
    calls = {"autotrainer": autotrainer(facts), "deepdiagnosis": deepdiagnosis(facts),
             "thedeepchecker": thedeepchecker(facts)}
    return calls, facts
