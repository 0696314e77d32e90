"""The longest chain of normalized layers in series: depth with no way around it.

Layers whose output reaches the loss only through a normalization (scale-invariant,
:mod:`diagnostics.scale_invariance`) are *in series* when every path from the earlier one's
output to the loss passes through the later one's output: no skip connection bypasses the later
layer. A plain BatchNorm stack (VGG, the benchmark's ``*-bn`` nets) is one chain as long as the
net; a ResNet's chains end at each residual sum (three layers at most in a bottleneck block);
a ConvMixer's pointwise convolutions form one chain, its residual depthwise ones are bypassed.

Along such a chain BatchNorm *amplifies* the gradient with depth: even with unit-variance
activations the backward pass through each BatchNorm-ReLU layer grows the gradient's angular
size ‖∂L/∂W‖·‖W‖ by a fixed factor (Yang et al. 2019, "A Mean Field Theory of Batch
Normalization": the gradient explosion is intrinsic to BatchNorm without skips, and it is the
backward side of the forward map becoming chaotic). The angular size is the one that matters
for a scale-invariant weight — it is the loss's sensitivity to turning the weight, free of the
weight's scale — so its ratio between the chain's first and last layer says how much faster a
step turns the first layer than the last. The verdict's ``normalized_chain_stall`` rule reads it.

Read from the probe's own autograd graph, like the scale-invariant layers: post-dominators with
the loss as the exit (Cooper, Harvey & Kennedy 2001, "A Simple, Fast Dominance Algorithm").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from diagnostics.scale_invariance import batch_normalizes


def _children(node: object) -> Iterable[object]:
    return (child for child, _ in getattr(node, "next_functions", ()) if child is not None)


@dataclass
class _Graph:
    """The loss's autograd graph: each node's consumers (nodes nearer the loss) and immediate
    post-dominator (the nearest node every path from it to the loss passes through)."""

    nodes: dict[int, object]
    consumers: dict[int, list[int]]
    idom: dict[int, int]


def post_dominators(loss_node: object) -> _Graph:
    """Cooper-Harvey-Kennedy on the graph reversed (the loss is the entry; it maps to itself)."""
    root = id(loss_node)
    nodes, consumers, order = _walk(loss_node)
    rank = {key: position for position, key in enumerate(order)}
    idom = {root: root}

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
    return _Graph(nodes, consumers, idom)


def _walk(loss_node: object) -> tuple[dict[int, object], dict[int, list[int]], list[int]]:
    """Every node below the loss, each node's consumers, and the reverse postorder of a
    depth-first walk from the loss (iterative: deep nets give paths thousands of nodes long)."""
    order: list[int] = []
    consumers: dict[int, list[int]] = {}
    nodes = {id(loss_node): loss_node}
    stack: list[tuple[object, Iterator[object]]] = [(loss_node, iter(list(_children(loss_node))))]
    while stack:
        node, pending = stack[-1]
        for child in pending:
            consumers.setdefault(id(child), []).append(id(node))
            if id(child) not in nodes:
                nodes[id(child)] = child
                stack.append((child, iter(list(_children(child)))))
                break
        else:
            stack.pop()
            order.append(id(node))
    order.reverse()
    return nodes, consumers, order


@dataclass(frozen=True)
class NormalizedChain:
    """The longest chain of normalized layers in series.

    Attributes:
        layers: Layer indices, from the input side to the loss.
        batch_values: The fewest values any batch normalization after the chain's first layer
            averages each channel over (batch × spatial positions); None where there is none.
    """

    layers: tuple[int, ...] = ()
    batch_values: int | None = None


def longest_series_chain(loss_node: object | None, outputs: dict[int, object],
                         members: Iterable[int]) -> NormalizedChain:
    """The longest run of ``members`` (keys of ``outputs``: layer index -> its output's
    autograd node) each of whose outputs every path from the previous one's to the loss
    passes through. Empty when no member has an output node in the loss's graph."""
    chosen = [index for index in members if index in outputs]
    if loss_node is None or not chosen:
        return NormalizedChain()
    graph = post_dominators(loss_node)
    layer_of = {id(outputs[index]): index for index in chosen}
    best: list[int] = []
    for index in chosen:
        key = id(outputs[index])
        if key not in graph.idom:
            continue
        chain = [index]
        while graph.idom[key] != key:
            key = graph.idom[key]
            if key in layer_of:
                chain.append(layer_of[key])
        if len(chain) > len(best):
            best = chain
    if not best:
        return NormalizedChain()
    return NormalizedChain(tuple(best), _fewest_batch_values(graph, id(outputs[best[0]])))


def _fewest_batch_values(graph: _Graph, start: int) -> int | None:
    """Over the batch normalizations downstream of ``start``: the fewest values per channel."""
    fewest: int | None = None
    seen, frontier = {start}, [start]
    while frontier:
        key = frontier.pop()
        node = graph.nodes[key]
        if batch_normalizes(node) and hasattr(node, "_saved_input"):
            shape = node._saved_input.shape
            if len(shape) >= 2 and shape[1]:
                values = math.prod(shape) // shape[1]
                fewest = values if fewest is None else min(fewest, values)
        for user in graph.consumers.get(key, ()):
            if user not in seen:
                seen.add(user)
                frontier.append(user)
    return fewest
