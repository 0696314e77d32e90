"""A rejected verdict rule's measure, kept to reproduce the evidence that rejected it.

The *chain ratio* of a model: along the longest chain of normalized layers in series — layers
whose output reaches the loss only through a normalization (scale-invariant,
:mod:`diagnostics.scale_invariance`), each of whose outputs every path from the previous one's
to the loss passes through, i.e. no skip connection bypasses any of them — the angular gradient
‖∂L/∂W‖·‖W‖ of the first layer's weight over the last one's. BatchNorm without skips grows it
layer by layer (Yang et al. 2019, "A Mean Field Theory of Batch Normalization"), and on the
benchmark's BatchNorm stacks it separated the nets that stall (10.6 and up) from those that
train (5.8 and below). A verdict rule on it (``normalized_chain_stall``) was built and then
removed: on BatchNorm stacks trained beside the benchmark it predicted nothing
(:mod:`bench.trainability.validation`, docs/trainability.md).

Measured as the probe measures: the module in training mode (BatchNorm on batch statistics), the
default probe loss (a seeded random projection of the outputs), one batch; the chain is read from
the autograd graph (post-dominators with the loss as the exit; Cooper, Harvey & Kennedy 2001).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.trainability.isometry import spec_module_and_batches
from diagnostics.config import Loss
from diagnostics.probe import compute_loss
from diagnostics.scale_invariance import scale_invariant


@dataclass(frozen=True)
class ChainRatio:
    """The longest chain (module indices in definition order, input side first) and the ratio."""

    chain: tuple[int, ...]
    ratio: float | None


def _children(node: object) -> Iterable[object]:
    return (child for child, _ in getattr(node, "next_functions", ()) if child is not None)


def _walk(loss_node: object) -> tuple[dict[int, list[int]], list[int]]:
    """Each node's consumers (nodes nearer the loss) and the reverse postorder of a depth-first
    walk from the loss (iterative: deep nets give paths thousands of nodes long)."""
    order: list[int] = []
    consumers: dict[int, list[int]] = {}
    seen = {id(loss_node)}
    stack: list[tuple[object, Iterator[object]]] = [(loss_node, iter(list(_children(loss_node))))]
    while stack:
        node, pending = stack[-1]
        for child in pending:
            consumers.setdefault(id(child), []).append(id(node))
            if id(child) not in seen:
                seen.add(id(child))
                stack.append((child, iter(list(_children(child)))))
                break
        else:
            stack.pop()
            order.append(id(node))
    order.reverse()
    return consumers, order


def post_dominators(loss_node: object) -> dict[int, int]:
    """``id(node) -> id(its immediate post-dominator)``: the nearest node every path from it to
    the loss passes through (the loss maps to itself)."""
    consumers, order = _walk(loss_node)
    rank = {key: position for position, key in enumerate(order)}
    idom = {id(loss_node): id(loss_node)}

    def meet(a: int, b: int) -> int:
        while a != b:
            while rank[a] > rank[b]:
                a = idom[a]
            while rank[b] > rank[a]:
                b = idom[b]
        return a

    changed = True
    while changed:
        changed = False
        for key in order[1:]:
            done = [user for user in consumers.get(key, ()) if user in idom]
            if not done:
                continue
            nearest = done[0]
            for user in done[1:]:
                nearest = meet(user, nearest)
            if idom.get(key) != nearest:
                idom[key] = nearest
                changed = True
    return idom


def longest_series_chain(loss_node: object, outputs: dict[int, object],
                         members: Iterable[int]) -> tuple[int, ...]:
    """The longest run of ``members`` (keys of ``outputs``: index -> output's autograd node)
    each of whose outputs every path from the previous one's to the loss passes through."""
    idom = post_dominators(loss_node)
    chosen = [index for index in members if id(outputs[index]) in idom]
    index_of = {id(outputs[index]): index for index in chosen}
    best: list[int] = []
    for index in chosen:
        key, chain = id(outputs[index]), [index]
        while idom[key] != key:
            key = idom[key]
            if key in index_of:
                chain.append(index_of[key])
        if len(chain) > len(best):
            best = chain
    return tuple(best)


def chain_ratio(module: nn.Module, inputs: tuple[torch.Tensor, ...], seed: int = 0) -> ChainRatio:
    """The chain ratio of ``module`` on ``inputs`` (see the module docstring)."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    outputs: dict[int, object] = {}

    def hook(index: int):
        def record(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
            if output.grad_fn is not None:
                outputs.setdefault(index, output.grad_fn)
        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    module.train()
    try:
        loss = compute_loss(module(*inputs), Loss.RANDOM_PROJECTION, seed)
    finally:
        for handle in handles:
            handle.remove()
    chain = longest_series_chain(loss.grad_fn, outputs, scale_invariant(loss.grad_fn, outputs))
    module.zero_grad(set_to_none=True)
    loss.backward()
    if len(chain) < 2:
        return ChainRatio(chain, None)

    def angular(index: int) -> float:
        weight = layers[index].weight
        grad = weight.grad
        return float(grad.double().norm() * weight.detach().double().norm()) if grad is not None \
            else math.nan

    last = angular(chain[-1])
    return ChainRatio(chain, angular(chain[0]) / last if last else None)


def spec_chain_ratio(spec: dict[str, Any], seed: int = 0) -> ChainRatio:
    """The chain ratio of a benchmark spec, on a seeded batch of its input shape."""
    module, (batch,) = spec_module_and_batches(spec, batch_seed=seed)
    return chain_ratio(module, (batch,), seed)
