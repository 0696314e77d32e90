"""A rejected measure, kept to reproduce the numbers that rejected it: dynamical isometry.

Pennington, Schoenholz & Ganguli (2017, 2018) show that how fast a deep net learns depends on
the whole singular-value spectrum of its input-output Jacobian, not only on its mean square
(which GradDoctor's backward-signal ratio reads): nets whose singular values concentrate near
one ("dynamical isometry", e.g. orthogonal tanh nets) learn orders of magnitude faster than nets
with the same mean and a wide spread (Gaussian ReLU nets). Since the stalls GradDoctor misses are
long initial plateaus (:mod:`bench.trainability.budget`), the spread was a candidate.

Measured: the Jacobian J of the readout's input (the last Linear's input: the features the
readout learns from) with respect to the model's input, over the whole batch in training mode
(BatchNorm on batch statistics, so the coupling between samples is in it). Its spread is read
as the *effective-rank fraction* tr(JJᵀ)² / tr((JJᵀ)²) / min(input size, feature size): 1 for an
isometry, small where a few directions dominate. Both traces are Hutchinson estimates (24 seeded
probes; JJᵀu by a vector-Jacobian product and a Jacobian-vector product through the
double-backward trick). On the tune half it separated nothing (docs/trainability.md):
``mlp-tanh-d20-init1x`` (0.008), ``mlp-relu-d20-init1x`` (0.011) and ``mlp-tanh-d20-bn-init0.1x``
(0.013) train, while ``mlp-relu-d20-ln-init3x`` (0.012) and the ReLU mixers (0.012-0.016) stall,
so it was not tried on the held-out half.

Printed beside it, also rejected on the tune half: the linear CKA (centered kernel alignment,
Kornblith et al. 2019) between the batch's inputs and the readout's features — how much of the
inputs' geometry survives to where the readout learns from (the chaos measure's kernel form).
The ReLU mixers that stall keep 0.71-0.73 of it, ``mlp-relu-d20-init1x``, which trains, 0.12.

    python -m bench.trainability.isometry            # the tune half's MLPs and CNNs, sorted
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from bench.trainability.label import LABELS_PATH, load_labels
from bench.trainability.score import RESULTS_PATH
from diagnostics.loading.spec.build import build_spec
from diagnostics.loading.spec.loader import parse_spec

PROBES = 24
READING_SEED = 1234  # one random draw (dropout masks) for every reading of the features


def readout_features(module: nn.Module, inputs: torch.Tensor | dict[str, torch.Tensor]
                     ) -> torch.Tensor:
    """The readout's input (the last Linear's) on ``inputs`` (a tensor, or keyword inputs such as
    a transformers model's ``input_ids``), in training mode, with the graph back to ``inputs``
    kept when they require a gradient."""
    module.train()
    readout = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    captured: dict[str, torch.Tensor] = {}
    handle = readout.register_forward_pre_hook(
        lambda _module, args: captured.__setitem__("features", args[0]))
    try:
        module(**inputs) if isinstance(inputs, dict) else module(inputs)
    finally:
        handle.remove()
    return captured["features"]


@contextmanager
def same_draws() -> Iterator[None]:
    """Every forward pass inside draws the same random numbers (dropout masks, stochastic depth),
    so two readings of a module differ only where its weights do; the caller's RNG is kept."""
    with torch.random.fork_rng():
        torch.manual_seed(READING_SEED)
        yield


def held_features(module: nn.Module, inputs: torch.Tensor | dict[str, torch.Tensor]
                  ) -> torch.Tensor:
    """:func:`readout_features` without a graph and with :func:`same_draws`: a reading that can
    be compared with another one of the same module."""
    with same_draws(), torch.no_grad():
        return readout_features(module, inputs).clone()


def spec_module_and_batches(spec: dict[str, Any], count: int = 1, batch_seed: int = 0
                            ) -> tuple[nn.Module, list[torch.Tensor]]:
    """A benchmark spec's module with the weights ``diagnose`` probes (``config.seed`` 0) and
    ``count`` batches of its input shape, drawn in turn from one generator seeded ``batch_seed``."""
    module = build_spec(parse_spec(spec), seed=0).module
    generator = torch.Generator().manual_seed(batch_seed)
    shape = spec["inputs"][0]["shape"]
    return module, [torch.randn(*shape, generator=generator) for _ in range(count)]


def rank_fraction(module: nn.Module, inputs: torch.Tensor, seed: int = 0) -> float:
    """Effective-rank fraction of d(readout input)/d(input) (see the module docstring)."""
    x = inputs.clone().requires_grad_(True)
    features = readout_features(module, x)
    dummy = torch.zeros_like(features, requires_grad=True)
    transposed = torch.autograd.grad(features, x, grad_outputs=dummy, create_graph=True)[0]
    generator = torch.Generator().manual_seed(seed)
    first = second = 0.0
    for _ in range(PROBES):
        probe = torch.randn(features.shape, generator=generator)
        pulled = torch.autograd.grad(features, x, grad_outputs=probe, retain_graph=True)[0]
        pushed = torch.autograd.grad(transposed, dummy, grad_outputs=pulled, retain_graph=True)[0]
        first += float(pulled.double().square().sum())  # u'JJ'u
        second += float(pushed.double().square().sum())  # u'(JJ')²u
    if second == 0:
        return float("nan")
    return (first / PROBES) ** 2 / (second / PROBES) / min(x.numel(), features.numel())


def feature_cka(first: torch.Tensor, second: torch.Tensor) -> float:
    """Linear CKA between two representations of the same batch (first axis = samples): 1 when
    one is a rotation and scaling of the other, near 0 when their geometries are unrelated."""
    grams = []
    for values in (first, second):
        flat = values.reshape(values.shape[0], -1).double()
        flat = flat - flat.mean(0)
        grams.append(flat @ flat.T)
    return float((grams[0] * grams[1]).sum() / (grams[0].norm() * grams[1].norm()))


def linear_cka(module: nn.Module, inputs: torch.Tensor) -> float:
    """Linear CKA between the batch's inputs and the readout's input features (training mode)."""
    with torch.no_grad():
        features = readout_features(module, inputs)
    return feature_cka(inputs, features)


def spec_measures(spec: dict[str, Any]) -> tuple[float, float]:
    """Both measures on a benchmark spec (weights as ``diagnose`` builds them, a seeded batch)."""
    module, (inputs,) = spec_module_and_batches(spec)
    return rank_fraction(module, inputs), linear_cka(module, inputs)


def main() -> int:
    torch.set_num_threads(1)
    calls = {row["id"]: row["calls"] for row in json.loads(RESULTS_PATH.read_text())["rows"]}
    rows = []
    for ident, entry in load_labels(LABELS_PATH)["models"].items():
        if entry["split"] != "tune" or entry["task"] == "adding":
            continue
        call = calls[ident]
        rows.append((*spec_measures(entry["spec"]), ident, entry["labels"]["sgd"],
                     entry["labels"]["adam"], call["sgd"]["graddoctor"],
                     call["adam"]["graddoctor"]))
    print("rank fraction  CKA  model")
    for fraction, cka, ident, sgd, adam, called_sgd, called_adam in sorted(
            rows, key=lambda row: (row[0] != row[0], row[0])):
        print(f"{fraction:8.4f} {cka:7.3f}  {ident:34s} labels sgd={sgd:9s} adam={adam:9s} "
              f"GradDoctor {called_sgd}/{called_adam}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
