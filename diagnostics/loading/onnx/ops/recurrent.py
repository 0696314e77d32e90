"""LSTM, GRU and RNN (opsets 7, 14 and 22), which onnx2torch 1.5.15 cannot convert at all.

The cells compute the standard's equations step by step with plain torch ops, the same math as
``torch.nn.LSTM/GRU/RNN`` (with ONNX's gate order: LSTM ``i, o, f, c``, GRU ``z, r, h``).
W, R, B, the initial states and the peepholes are ``forward`` inputs, never copies baked into the
module, so the loader binds each to the trainable parameter named after its initializer and the
gradient lands on the tensor the file names.

Supported: ``layout`` 0 and 1 (the module's ``layout`` attribute tells the temporal profiler
which axis of ``X`` is time), directions forward/reverse/bidirectional, ``sequence_lens``
(steps past a sequence's length keep its state and output zeros), optional initial states,
LSTM peepholes and ``input_forget``, ``clip``, GRU ``linear_before_reset`` and every activation
the standard lists, with ``activation_alpha/beta`` consumed in order by the activations that
take them.
"""

from __future__ import annotations

import torch
from onnx import GraphProto
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from diagnostics.errors import ModelLoadError
from diagnostics.loading.onnx.ops._common import mapping
from diagnostics.loading.onnx.ops._recurrent_cells import (
    DEFAULT_ACTIVATIONS,
    GATES,
    Activation,
    step,
)
from diagnostics.loading.onnx.ops.registry import converter


class OnnxRecurrent(nn.Module, OnnxToTorchModule):
    """One ONNX LSTM, GRU or RNN node over a whole sequence, all directions."""

    def __init__(self, cell: str, *, directions: tuple[bool, ...], layout: int,
                 activations: tuple[tuple[Activation, ...], ...], clip: float | None,
                 linear_before_reset: bool, input_forget: bool, outputs: int) -> None:
        """Configure the node.

        Args:
            cell: ``"LSTM"``, ``"GRU"`` or ``"RNN"``.
            directions: Per direction, whether it runs backwards in time.
            layout: 0 for ``[seq, batch, ...]`` tensors, 1 for ``[batch, seq, ...]``.
            activations: Per direction, the cell's activation functions in ONNX order.
            clip: Bound on the activations' inputs, or None.
            linear_before_reset: GRU: apply R before the reset gate.
            input_forget: LSTM: couple the forget gate to the input gate.
            outputs: How many of Y, Y_h, Y_c the node lists.
        """
        super().__init__()
        self.cell, self.directions, self.layout = cell, directions, layout
        self.activations, self.clip = activations, clip
        self.linear_before_reset, self.input_forget = linear_before_reset, input_forget
        self.outputs = outputs

    def forward(self, X: torch.Tensor, W: torch.Tensor, R: torch.Tensor,  # noqa: N803
                B: torch.Tensor | None = None,  # noqa: N803
                sequence_lens: torch.Tensor | None = None,
                initial_h: torch.Tensor | None = None, initial_c: torch.Tensor | None = None,
                P: torch.Tensor | None = None,  # noqa: N803
                ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the sequence; returns Y ``[seq, dirs, batch, hidden]`` (layout 0), Y_h, Y_c.

        With ``layout=1`` ``X`` is ``[batch, seq, input]``, the states ``[batch, dirs, hidden]``
        and Y ``[batch, seq, dirs, hidden]``.
        """
        if self.layout == 1:
            X = X.transpose(0, 1)  # noqa: N806
            initial_h = None if initial_h is None else initial_h.transpose(0, 1)
            initial_c = None if initial_c is None else initial_c.transpose(0, 1)
        steps, batch = X.shape[0], X.shape[1]
        hidden = R.shape[-1]
        gates = GATES[self.cell] * hidden
        mask = None
        if sequence_lens is not None:
            positions = torch.arange(steps, device=X.device).unsqueeze(1)
            mask = (positions < sequence_lens.to(X.device).unsqueeze(0)).unsqueeze(-1)
        ys, hs, cs = [], [], []
        for d, backwards in enumerate(self.directions):
            h = X.new_zeros(batch, hidden) if initial_h is None else initial_h[d]
            c = X.new_zeros(batch, hidden) if initial_c is None else initial_c[d]
            w_bias = r_bias = None
            if B is not None:
                w_bias, r_bias = B[d, :gates], B[d, gates:]
            projected = torch.matmul(X, W[d].transpose(0, 1))  # every step's input at once
            if w_bias is not None:
                projected = projected + w_bias
            outputs: list[torch.Tensor] = [X.new_zeros(0)] * steps
            order = range(steps - 1, -1, -1) if backwards else range(steps)
            for t in order:
                new_h, new_c = step(self, d, projected[t], h, c, R[d], r_bias,
                                    None if P is None else P[d])
                if mask is None:
                    h, c = new_h, new_c
                    outputs[t] = new_h
                else:
                    valid = mask[t]
                    h, c = torch.where(valid, new_h, h), torch.where(valid, new_c, c)
                    outputs[t] = torch.where(valid, new_h, torch.zeros_like(new_h))
            ys.append(torch.stack(outputs))
            hs.append(h)
            cs.append(c)
        return self._pack(torch.stack(ys, 1), torch.stack(hs), torch.stack(cs))

    def _pack(self, y: torch.Tensor, y_h: torch.Tensor,
              y_c: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.layout == 1:
            y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
        results = (y, y_h, y_c)[: self.outputs]
        return results[0] if self.outputs == 1 else results


def _activations(node: OnnxNode, directions: int) -> tuple[tuple[Activation, ...], ...]:
    attributes = node.attributes
    defaults = DEFAULT_ACTIVATIONS[node.operation_type]
    names = [str(name) for name in attributes.get("activations", [])] or \
        list(defaults) * directions
    if len(names) == len(defaults):  # one set given for a bidirectional node: both use it
        names = names * directions
    if len(names) != len(defaults) * directions:
        raise NotImplementedError(f"{node.operation_type} with {len(names)} activations")
    alphas = list(attributes.get("activation_alpha", []))
    betas = list(attributes.get("activation_beta", []))
    built = [Activation.from_onnx(name, alphas, betas) for name in names]
    per = len(defaults)
    return tuple(tuple(built[i * per:(i + 1) * per]) for i in range(directions))


@converter("LSTM", [7, 14, 22])
@converter("GRU", [7, 14, 22])
@converter("RNN", [7, 14, 22])
def convert_recurrent(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """An ONNX recurrent node as one :class:`OnnxRecurrent` module."""
    del graph
    attributes = node.attributes
    direction = str(attributes.get("direction", "forward"))
    directions = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}
    if direction not in directions:
        raise NotImplementedError(f"{node.operation_type} direction={direction!r}")
    clip = attributes.get("clip")
    module = OnnxRecurrent(
        node.operation_type,
        directions=directions[direction],
        layout=int(attributes.get("layout", 0)),
        activations=_activations(node, len(directions[direction])),
        clip=None if clip is None else float(clip),
        linear_before_reset=bool(attributes.get("linear_before_reset", 0)),
        input_forget=bool(attributes.get("input_forget", 0)),
        outputs=len(node.output_values),
    )
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node))


_STATES = ((5, "initial_h"), (6, "initial_c"))


def check_state_widths(graph: GraphProto, inferred: GraphProto) -> None:
    """Each recurrent node's initial states are as wide as its ``hidden_size``.

    PyTorch's default exporter writes an ``nn.LSTM(proj_size=p)`` as a plain LSTM node of
    hidden size p with an initial cell state of the full width (ONNX's LSTM has no projection):
    the checker accepts the file, and the forward pass would fail deep inside the probe.

    Raises:
        ModelLoadError: naming the node, its hidden size and the state's width.
    """
    widths = {init.name: init.dims[-1] for init in graph.initializer if init.dims}
    for value in (*inferred.value_info, *inferred.input):
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else ()
        if dims and dims[-1].HasField("dim_value"):
            widths.setdefault(value.name, dims[-1].dim_value)
    for index, node in enumerate(graph.node):
        if node.op_type not in ("LSTM", "GRU", "RNN") or node.domain not in ("", "ai.onnx"):
            continue
        hidden = next((a.i for a in node.attribute if a.name == "hidden_size"), None)
        for position, label in _STATES:
            name = node.input[position] if len(node.input) > position else ""
            width = widths.get(name) if name else None
            if hidden and width is not None and width != hidden:
                node_name = node.name or f"{node.op_type}_{index}"
                raise ModelLoadError(
                    f"{node.op_type} node {node_name!r} has hidden_size {hidden} but its "
                    f"{label} is {width} wide: the file is inconsistent (PyTorch's exporter "
                    "writes this for an LSTM with proj_size, which ONNX's LSTM cannot "
                    "express); export the model without proj_size",
                    node=node_name)

