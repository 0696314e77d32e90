"""Recurrences an exporter unrolled: one copy of the cell per time step, no RNN/LSTM/GRU node.

PyTorch's default (dynamo) exporter writes ``nn.RNN`` this way, and both exporters write a Python
loop over ``nn.RNNCell``/``LSTMCell``/``GRUCell`` (or a hand-written cell) this way: the sequence
is cut into single steps (``Slice``/``Gather``/``Split`` along its time axis) and each step's
copy of the cell multiplies the previous step's state by the same recurrent weight. Without
finding that structure the file has no temporal profile, and a vanilla RNN whose memory is far
shorter than its sequence was judged healthy when exported with the default exporter while its
legacy export (an ``RNN`` node) was judged vanishing.

The recurrence is recognized from the graph alone:

- a value cut into ≥ 3 single steps along one axis (``Slice`` of length 1, ``Gather`` of a
  scalar index, ``Split`` into pieces of 1), covering 0..T-1;
- a weight (an initializer, possibly through ``Transpose``/``Identity``/``Cast``) multiplied in by
  ≥ T-1 ``MatMul``/``Gemm`` nodes that form a chain, each one's output reaching the next one's
  data input: the state passes from step to step through the same matrix. Shared weights that
  are applied to every step independently (a readout on every step, ``TimeDistributed``) do not
  chain and are not recurrences;
- the steps reach the chain.

The cell is *gated* when a ``Sigmoid``/``HardSigmoid`` lies on the path from one step's
recurrent product to the next (LSTM, GRU and their hand-written forms); otherwise it is ungated.

The temporal profile then measures ‖∂L/∂x_t‖ on the sequence the steps are cut from, walked back
through per-step ops (a projection applied to all steps at once, its bias, a transpose) to the
value the user fed in, so it reads the same tensor as the legacy export's ``RNN`` node input.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import replace

from onnx import GraphProto, NodeProto, TensorProto, numpy_helper

from diagnostics.loading.onnx.checks import attribute_value, element_count
from diagnostics.loading.onnx.graph import consumers
from diagnostics.model import UnrolledSequence

_MIN_STEPS = 3
_PRODUCTS = frozenset({"MatMul", "Gemm"})
_WEIGHT_PASS = frozenset({"Transpose", "Identity", "Cast"})
_GATES = frozenset({"Sigmoid", "HardSigmoid"})
_INT_TYPES = frozenset({TensorProto.INT64, TensorProto.INT32})


def find_unrolled_recurrence(graph: GraphProto, real_inputs: list[str],
                             ranks: dict[str, int]) -> UnrolledSequence | None:
    """The first unrolled recurrence in ``graph`` (by its sequence's position), or None.

    Args:
        graph: The top-level graph, node names as the converted module's submodule names.
        real_inputs: Names of the graph inputs the module is called with, in order.
        ranks: Known ranks of values (from shape inference), to keep a walk-back from moving
            the time axis; a value without one ends the walk.
    """
    ints = _IntConstants(graph)
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    users = consumers(graph)
    initializers = {init.name for init in graph.initializer}
    cuts = [(value, axis, steps) for value, axis, steps in _cut_sequences(graph, ints)
            if not _is_shape(value, graph, producers)]
    if not cuts:
        return None
    chains = _chains(graph, producers, users, initializers)
    found: UnrolledSequence | None = None
    cells: set[int] = set()  # every recurrence's step copies (both directions, every layer)
    for value, axis, steps in cuts:
        for chain in chains:
            if len(chain) < len(steps) - 1 or not all(
                    _reaches(graph, [steps[t]], set(chain), users) for t in (0, len(steps) // 2)):
                continue
            cells |= _cell_nodes(graph, chain, steps[0], steps[-1], users)
            if found is None:
                found = _sequence(graph, value, axis, len(steps), _gated(graph, chain, users),
                                  producers, users, initializers, real_inputs, ranks)
    if found is None:
        return None
    return replace(found, cell_paths=frozenset(graph.node[i].name for i in cells))


def _sequence(graph: GraphProto, value: str, axis: int, steps: int, gated: bool,
              producers: dict[str, int], users: dict[str, list[int]], initializers: set[str],
              real_inputs: list[str], ranks: dict[str, int]) -> UnrolledSequence | None:
    """Where the recurrence's input sequence is measured: the cut value, walked back."""
    value, axis = _walk_back(graph, value, axis, producers, users, initializers, ranks)
    if value in producers:
        node = graph.node[producers[value]]
        return UnrolledSequence(value, node.name, list(node.output).index(value), axis, steps,
                                gated)
    if value in real_inputs:
        return UnrolledSequence(value, "", real_inputs.index(value), axis, steps, gated)
    return None


def _is_shape(value: str, graph: GraphProto, producers: dict[str, int]) -> bool:
    # Shape arithmetic (Gather(Shape(x), 0), 1, 2 ...) cuts integer vectors, not sequences.
    index = producers.get(value)
    return index is not None and graph.node[index].op_type in ("Shape", "Size", "Constant")


class _IntConstants:
    """Integer constants (initializers and Constant nodes) by name, decoded when first read:
    Slice bounds, Gather indices, Split sizes (one per step: as long as the sequence)."""

    _MAX_ELEMENTS = 1 << 16

    def __init__(self, graph: GraphProto) -> None:
        self._tensors: dict[str, TensorProto] = {init.name: init for init in graph.initializer}
        self._decoded: dict[str, list[int] | None] = {}
        for node in graph.node:
            if node.op_type != "Constant" or not node.output:
                continue
            tensor = attribute_value(node, "value")
            ints = attribute_value(node, "value_ints")
            one = attribute_value(node, "value_int")
            if isinstance(tensor, TensorProto):
                self._tensors[node.output[0]] = tensor
            elif ints is not None:
                self._decoded[node.output[0]] = [int(v) for v in ints]
            elif one is not None:
                self._decoded[node.output[0]] = [int(one)]

    def get(self, name: str) -> list[int] | None:
        if name not in self._decoded:
            tensor = self._tensors.get(name)
            self._decoded[name] = (
                [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
                if tensor is not None and tensor.data_type in _INT_TYPES
                and tensor.data_location != TensorProto.EXTERNAL
                and element_count(tensor.dims) <= self._MAX_ELEMENTS else None)
        return self._decoded[name]


def _cut_sequences(graph: GraphProto, ints: _IntConstants):
    """(value, axis, step outputs in time order) for every value cut into single steps."""
    cuts: dict[tuple[str, int], dict[int, str]] = defaultdict(dict)
    order: list[tuple[str, int]] = []
    for node in graph.node:
        for source, axis, index, output in _single_steps(node, ints):
            key = (source, axis)
            if key not in cuts:
                order.append(key)
            cuts[key].setdefault(index, output)
    for key in order:
        pieces = cuts[key]
        if len(pieces) >= _MIN_STEPS and sorted(pieces) == list(range(len(pieces))):
            yield key[0], key[1], [pieces[t] for t in range(len(pieces))]


def _single_steps(node: NodeProto, ints: _IntConstants):
    if not node.input or not node.input[0]:
        return
    source = node.input[0]
    if node.op_type == "Gather" and len(node.input) > 1:
        index = ints.get(node.input[1])
        axis = attribute_value(node, "axis") or 0
        if index is not None and len(index) == 1 and index[0] >= 0 and axis >= 0:
            yield source, int(axis), index[0], node.output[0]
    elif node.op_type == "Slice" and len(node.input) >= 4:
        starts, ends, axes = (ints.get(name) for name in node.input[1:4])
        steps = ints.get(node.input[4]) if len(node.input) > 4 and node.input[4] else [1]
        if (starts and ends and axes and steps and len(starts) == len(ends) == len(axes) == 1
                and steps[0] == 1 and 0 <= starts[0] and ends[0] - starts[0] == 1
                and axes[0] >= 0):
            yield source, axes[0], starts[0], node.output[0]
    elif node.op_type == "Split" and len(node.output) >= _MIN_STEPS:
        axis = attribute_value(node, "axis") or 0
        sizes = (ints.get(node.input[1]) if len(node.input) > 1 and node.input[1]
                 else attribute_value(node, "split"))
        if axis >= 0 and sizes is not None and list(sizes) == [1] * len(node.output):
            for step, output in enumerate(node.output):
                yield source, int(axis), step, output


def _weight_of(name: str, graph: GraphProto, producers: dict[str, int],
               initializers: set[str]) -> str | None:
    while name not in initializers:
        if name not in producers:
            return None
        node = graph.node[producers[name]]
        if node.op_type not in _WEIGHT_PASS:
            return None
        name = node.input[0]
    return name


def _chains(graph: GraphProto, producers: dict[str, int], users: dict[str, list[int]],
            initializers: set[str]) -> list[list[int]]:
    """Per weight multiplied in by ≥ 2 MatMul/Gemm nodes that form a chain — each one's output
    reaching the next one's data input — those nodes in graph order."""
    by_weight: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        if node.op_type not in _PRODUCTS or len(node.input) < 2:
            continue
        for operand in node.input[:2]:
            weight = _weight_of(operand, graph, producers, initializers)
            if weight is not None:
                by_weight[weight].append(index)
                break
    return [nodes for nodes in by_weight.values() if len(nodes) >= _MIN_STEPS - 1 and all(
        _reaches(graph, graph.node[nodes[k]].output, {nodes[k + 1]}, users)
        for k in range(len(nodes) - 1))]


def _reaches(graph: GraphProto, values, targets: set[int], users: dict[str, list[int]]) -> bool:
    """Whether ``values`` feed any node in ``targets``. Nodes are in topological order, so a
    node after the last target cannot lead to one and is not explored."""
    limit = max(targets)
    seen: set[int] = set()
    queue = deque(values)
    while queue:
        for index in users.get(queue.popleft(), ()):
            if index in targets:
                return True
            if index < limit and index not in seen:
                seen.add(index)
                queue.extend(out for out in graph.node[index].output if out)
    return False


def _cell_nodes(graph: GraphProto, chain: list[int], first_step: str, last_step: str,
                users: dict[str, list[int]]) -> set[int]:
    """Every step's copy of the cell: the nodes from the first recurrent product to the last,
    the first step's before it (from its input on), and the last step's after it — as many of
    each op type as one step between two products holds, nearest the last input first."""
    nodes = _between(graph, chain[0], chain[-1], users)
    first = _reach(graph, deque([first_step]), users, last=chain[0] - 1)
    nodes |= {i for i in first if _reaches(graph, graph.node[i].output, {chain[0]}, users)}
    template = Counter(graph.node[i].op_type
                       for i in _between(graph, chain[0], chain[1], users) - {chain[1]})
    after_last = _reach(graph, deque(graph.node[chain[-1]].output), users)
    for index in sorted(_reach(graph, deque([last_step]), users) & after_last):
        op = graph.node[index].op_type
        if template[op] > 0:
            template[op] -= 1
            nodes.add(index)
    return nodes


def _reach(graph: GraphProto, queue: deque, users: dict[str, list[int]],
           last: int | None = None) -> set[int]:
    """Nodes fed by the values in ``queue``, up to node index ``last`` (nodes are in
    topological order, so one after it cannot lead back before it)."""
    seen: set[int] = set()
    while queue:
        for index in users.get(queue.popleft(), ()):
            if (last is None or index <= last) and index not in seen:
                seen.add(index)
                queue.extend(out for out in graph.node[index].output if out)
    return seen


def _between(graph: GraphProto, first: int, last: int, users: dict[str, list[int]]) -> set[int]:
    """Nodes on some path from node ``first`` to node ``last``, both included."""
    after = {first} | _reach(graph, deque(graph.node[first].output), users, last)
    producers = {out: i for i in after for out in graph.node[i].output if out}
    before: set[int] = {last}
    stack = [last]
    while stack:
        for name in graph.node[stack.pop()].input:
            source = producers.get(name)
            if source is not None and source not in before:
                before.add(source)
                stack.append(source)
    return after & before


def _gated(graph: GraphProto, chain: list[int], users: dict[str, list[int]]) -> bool:
    """A gate lies between one step's recurrent product and the next (the middle pair)."""
    middle = max(len(chain) // 2, 1)
    first, second = chain[middle - 1], chain[middle]
    gates = {index for index in range(first + 1, second)
             if graph.node[index].op_type in _GATES}
    return any(_reaches(graph, graph.node[first].output, {gate}, users)
               and _reaches(graph, graph.node[gate].output, {second}, users)
               for gate in gates)


def _walk_back(graph: GraphProto, value: str, axis: int, producers: dict[str, int],
               users: dict[str, list[int]], initializers: set[str],
               ranks: dict[str, int]) -> tuple[str, int]:
    """Follow per-step ops back to the value the steps were computed from.

    Through a Transpose (the axis moves), and through a MatMul by a weight or an Add of a bias
    that act on the last axis only (the time axis stays where it is). Each step back must be the
    only reader of the value it steps to, so the gradient measured there is the recurrence's.
    """
    while value in producers:
        node = graph.node[producers[value]]
        rank = ranks.get(value)
        source = node.input[0] if node.input else ""
        if not source or rank is None or not _read_per_step(source, graph, producers, users,
                                                             initializers):
            break
        if node.op_type == "Transpose":
            perm = attribute_value(node, "perm")
            if perm is None or axis >= len(perm):
                break
            axis = int(perm[axis])
        elif node.op_type in ("MatMul", "Add") and len(node.input) == 2:
            other = _weight_of(node.input[1], graph, producers, initializers)
            if other is None or axis >= rank - 1 or ranks.get(source) != rank:
                break
            allowed = 2 if node.op_type == "MatMul" else 1
            if _initializer_rank(other, graph) not in range(1, allowed + 1):
                break
        elif node.op_type in ("Identity", "Cast"):
            pass
        else:
            break
        value = source
    return value, axis


def _read_per_step(value: str, graph: GraphProto, producers: dict[str, int],
                   users: dict[str, list[int]], initializers: set[str]) -> bool:
    """Whether every reader of ``value`` is one op, or projections by a weight (the input
    projections of a bidirectional recurrence): then the gradient at ``value`` is the one the
    recurrence sends back, not a sum with other paths (a skip around it)."""
    readers = users.get(value, [])
    return len(readers) == 1 or all(
        graph.node[i].op_type in _PRODUCTS and len(graph.node[i].input) >= 2
        and graph.node[i].input[0] == value
        and _weight_of(graph.node[i].input[1], graph, producers, initializers) is not None
        for i in readers)


def _initializer_rank(name: str, graph: GraphProto) -> int | None:
    # A bias of rank 1 broadcasts along the last axis only; a weight of rank 2 multiplies it.
    return next((len(init.dims) for init in graph.initializer if init.name == name), None)
