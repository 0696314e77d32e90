"""Our onnx2torch converters (``diagnostics/loading/onnx/ops``) against the ONNX standard and torch.

* Every backend node test onnx ships for an op one of our families converts (generated from
  ``onnx.backend.test.case.node``: the 1.23 wheel has no ``data/node`` folders) loads through
  ``load_onnx`` and reproduces the expected outputs (float32: rtol 1e-5, atol 1e-6); where the
  op's output is float and an input differentiable, a backward pass runs with finite gradients,
  and a sample agrees with ``torch.autograd.gradcheck`` in float64.
* ``torch.nn.LSTM/GRU/RNN`` exported with both exporters give the native forward outputs and,
  per ONNX initializer, the native gradient norms (rtol 1e-4).
* Regressions of the stock bugs we replace (Flatten at axis 0 and rank, CumSum direction,
  NonZero layout, LayerNorm shapes, BatchNorm in training mode and with computed statistics,
  against ``onnx.reference``), the opset-range lookup and the registry itself.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.test.case import node as onnx_cases
from onnx.defs import OpSchema, get_all_schemas_with_history, get_schema
from onnx.reference import ReferenceEvaluator
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY
from torch import nn

from diagnostics.errors import UnsupportedOperatorError
from diagnostics.loading.onnx.loader import load_onnx
from diagnostics.loading.onnx.ops.opset_aliases import TYPE_ONLY_VERSIONS
from tests.onnx_export import export_dynamo, export_legacy, loaded_grad_norms, mean_square

# Every converter we register (each op family is one module of the package).
_PREFIX = "diagnostics.loading.onnx.ops."
# Ops whose node tests only the conformance run can judge (docs/conformance.md, held by
# test_conformance.py): exact-output comparison does not apply to them.
JUDGED_BY_CONFORMANCE = {
    "Bernoulli": "random outputs",
    "Dropout": "random outputs in training mode",
    "Hardmax": "piecewise constant: the loader refuses a model with no differentiable output",
    "MeanVarianceNormalization": "onnx's own shape inference rejects its node test",
}
OWN_OPS = frozenset(
    {key.operation_type for key, function in _CONVERTER_REGISTRY.items()
     if function.__module__.startswith(_PREFIX)}
    | set(TYPE_ONLY_VERSIONS)
) - set(JUDGED_BY_CONFORMANCE)
_DTYPES = {"bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16,
           "int32": torch.int32, "int64": torch.int64, "float16": torch.float16,
           "float32": torch.float32, "float64": torch.float64}
_TOLERANCE = {"float32": (1e-5, 1e-6), "float64": (1e-5, 1e-6), "float16": (1e-3, 1e-3)}
# Expected outputs computed by onnx's test generator in float64 from float32 inputs, where
# float32 arithmetic in a long chain (recurrences, cubic weights) lands within 2e-5.
_LOOSE = {"LSTM", "GRU", "RNN", "Resize", "ReduceLogSumExp", "LayerNormalization"}
# Cases whose expected outputs are decimal literals rounded to 4 digits in the case definition:
# compared at the tolerance onnx's backend runner gives every node test (rtol 1e-3, atol 1e-7).
ROUNDED_EXPECTATIONS = frozenset({
    "test_averagepool_2d_ceil_last_window_starts_on_pad", "test_roialign_aligned_false",
    "test_roialign_aligned_true", "test_gridsample_bicubic",
})
# Cases a stock converter we only register at newer opsets refuses, by design of that converter.
REFUSED = {"test_roialign_mode_max": "RoiAlign",
           # Scan-8 (a batch axis and sequence_lens) predates what exporters write; the converter
           # starts at Scan-9.
           "test_scan_sum": "Scan"}
# Inputs the schema calls differentiable that the converter treats as constants: torchvision's
# roi_align (behind the stock RoiAlign) gives no gradient for the boxes, as in torch detection.
CONSTANT_SLOTS = {("RoiAlign", 1)}
# Sampled for gradcheck (float64, finite differences): one or two cases per family.
GRADCHECK_CASES = (
    "test_reduce_mean_keepdims_random", "test_reduce_l2_do_not_keepdims_random",
    "test_reduce_log_sum_exp_keepdims_random", "test_reduce_prod_default_axes_keepdims_random",
    "test_gelu_tanh_1", "test_gelu_default_1", "test_swish", "test_shrink_soft",
    "test_reshape_reordered_all_dims", "test_flatten_axis0", "test_split_variable_parts_1d_opset18",
    "test_resize_upsample_scales_linear", "test_resize_downsample_scales_cubic_antialias",
    "test_resize_upsample_sizes_nearest", "test_averagepool_2d_dilations",
    "test_averagepool_2d_ceil", "test_reflect_pad", "test_wrap_pad", "test_edge_pad",
    "test_layer_normalization_3d_axis1_epsilon", "test_cumsum_2d_axis_0",
    "test_cumsum_1d_reverse_exclusive", "test_scatternd_add", "test_tril",
    "test_cast_FLOAT_to_DOUBLE",
    "test_gru_with_initial_bias", "test_lstm_with_peepholes", "test_simple_rnn_batchwise",
    "test_rotary_embedding_with_interleaved_rotary_dim",
)


# --- the standard's node tests ------------------------------------------------------------------


def _case_modules() -> list[str]:
    names = {op.lower(): op for op in OWN_OPS}
    stems = {info.name: info.name.replace("_", "") for info in pkgutil.iter_modules(
        onnx_cases.__path__)}
    return [name for name, stem in stems.items()
            if stem in names or stem.removesuffix("op") in names]  # "loop" is no "lo" + "op"


def _node_cases() -> dict[str, object]:
    """Backend test cases whose single node is one of our ops, by test name.

    Imports only the case modules of our ops (each module generates its cases when imported),
    and reloads a module whose cases an earlier ``collect_testcases(op)`` filtered out.
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for name in _case_modules():
            full = f"{onnx_cases.__name__}.{name}"
            module = importlib.import_module(full)
            stem = name.replace("_", "")
            if not any(case.model.graph.node[0].op_type.lower() == stem
                       for case in onnx_cases._NodeTestCases if case.model.graph.node):
                onnx_cases._TargetOpType = None
                importlib.reload(module)
    return {case.name: case for case in onnx_cases._NodeTestCases
            if "_expanded" not in case.name and len(case.model.graph.node) == 1
            and case.model.graph.node[0].op_type in OWN_OPS}


def _to_numpy(value) -> np.ndarray:
    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


def _runnable(case) -> bool:
    graph = case.model.graph
    if any(v.type.WhichOneof("value") != "tensor_type" for v in [*graph.input, *graph.output]):
        return False  # sequences as graph inputs/outputs: the loader refuses them
    inputs, outputs = case.data_sets[0]
    return all(_to_numpy(v).dtype.name in _DTYPES for v in [*inputs, *outputs])


CASES = _node_cases()
RUNNABLE = sorted(name for name, case in CASES.items() if _runnable(case))


def _load(case):
    inputs, expected = case.data_sets[0]
    loaded = load_onnx(case.model.SerializeToString(), name=case.name)
    tensors = [torch.from_numpy(np.array(_to_numpy(v))) for v in inputs]
    return loaded, tensors, [_to_numpy(v) for v in expected]


def _outputs(result) -> list[torch.Tensor]:
    return list(result) if isinstance(result, tuple) else [result]


def _differentiable(case, tensors: list[torch.Tensor], *, any_dtype: bool = False) -> list[int]:
    """Positions of inputs the op's schema does not call non-differentiable.

    Float inputs only, unless ``any_dtype``: then integer inputs whose type constraint also
    allows double (Trilu on int64 test data) count too, for gradcheck in float64.
    """
    node = case.model.graph.node[0]
    version = next(e.version for e in case.model.opset_import if e.domain in ("", "ai.onnx"))
    schema = get_schema(node.op_type, version)
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    present = [slot for slot, name in enumerate(node.input) if name]
    positions = []
    for position, slot in enumerate(present):
        formal = schema.inputs[min(slot, len(schema.inputs) - 1)]
        dtype = tensors[position].dtype
        usable = dtype in (torch.float32, torch.float64) or (
            any_dtype and not dtype.is_floating_point and dtype != torch.bool
            and "tensor(double)" in allowed.get(formal.type_str, {formal.type_str}))
        if (formal.differentiation_category != OpSchema.DifferentiationCategory.NonDifferentiable
                and usable and tensors[position].numel()
                and (node.op_type, slot) not in CONSTANT_SLOTS):
            positions.append(position)
    return positions


@pytest.mark.parametrize("name", RUNNABLE)
def test_backend_case_matches_expected_outputs(name: str) -> None:
    case = CASES[name]
    if name in REFUSED:
        with pytest.raises(UnsupportedOperatorError, match=REFUSED[name]):
            _load(case)
        return
    loaded, tensors, expected = _load(case)
    with torch.no_grad():
        actual = _outputs(loaded.module(*tensors))
    assert len(actual) == len(expected)
    op = case.model.graph.node[0].op_type
    for got, want in zip(actual, expected, strict=True):
        assert tuple(got.shape) == want.shape
        assert str(got.dtype).removeprefix("torch.") == want.dtype.name
        if want.dtype.kind == "f":
            rtol, atol = (2e-5, 2e-6) if op in _LOOSE else _TOLERANCE[want.dtype.name]
            if name in ROUNDED_EXPECTATIONS:
                rtol, atol = case.rtol, case.atol
            np.testing.assert_allclose(got.numpy(), want, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(got.numpy(), want)
    positions = _differentiable(case, tensors)
    if positions and any(out.is_floating_point() for out in actual):
        _check_backward(loaded.module, tensors, positions)


def _check_backward(module: nn.Module, tensors: list[torch.Tensor], positions: list[int]) -> None:
    problem = _backward(module, tensors, positions, jitter=0.0)
    if problem == "non-finite":
        # At a singular point (Acosh at 1) an infinite derivative is right; anywhere else not.
        problem = _backward(module, tensors, positions, jitter=1e-3)
    assert not problem, problem


def _backward(module: nn.Module, tensors: list[torch.Tensor], positions: list[int],
              jitter: float) -> str:
    leaves = []
    for i, tensor in enumerate(tensors):
        leaf = tensor.clone()
        if i in positions:
            noise = torch.rand(leaf.shape, generator=torch.Generator().manual_seed(i))
            leaf = (leaf + jitter * (2 * noise - 1) * (leaf.abs() + 1)).requires_grad_(True)
        leaves.append(leaf)
    outputs = [o for o in _outputs(module(*leaves)) if o.is_floating_point() and o.requires_grad]
    if not outputs:
        return "no float output depends on a differentiable input"
    sum(torch.where(torch.isfinite(o), o, 0).sum() for o in outputs).backward()
    finite = all(torch.isfinite(o).all() for o in outputs) and all(
        torch.isfinite(leaves[p]).all() for p in positions)
    for position in positions:
        grad = leaves[position].grad
        if grad is None or grad.shape != leaves[position].shape:
            return f"no gradient of the right shape for input {position}"
        if finite and not torch.isfinite(grad).all():
            return "non-finite"
    return ""


@pytest.mark.parametrize("name", GRADCHECK_CASES)
def test_backward_agrees_with_gradcheck(name: str) -> None:
    case = CASES[name]
    loaded, tensors, _ = _load(case)
    module = loaded.module.double()
    positions = _differentiable(case, tensors, any_dtype=True)
    assert positions
    base = [t.double() if t.dtype == torch.float32 or i in positions else t
            for i, t in enumerate(tensors)]
    # finite differences are NaN at NaN/inf inputs (Cast's special-value cases)
    base = [torch.nan_to_num(t, nan=0.5, posinf=2.0, neginf=-2.0) if i in positions else t
            for i, t in enumerate(base)]

    def function(*leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        full = list(base)
        for position, leaf in zip(positions, leaves, strict=True):
            full[position] = leaf
        return tuple(o for o in _outputs(module(*full)) if o.is_floating_point())

    leaves = tuple(base[p].detach().clone().requires_grad_(True) for p in positions)
    assert sum(leaf.numel() for leaf in leaves) <= 400, "keep gradcheck samples small"
    assert torch.autograd.gradcheck(function, leaves, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_the_exporters_ops_all_have_backend_cases() -> None:
    covered = {CASES[name].model.graph.node[0].op_type for name in RUNNABLE}
    exporter_ops = {"ReduceMean", "ReduceMax", "ReduceL2", "Reshape", "Flatten", "Split",
                    "Resize", "Gelu", "Cast", "CastLike", "Shape", "Pad", "AveragePool",
                    "IsNaN", "IsInf", "GreaterOrEqual", "LessOrEqual", "Identity", "Squeeze",
                    "Unsqueeze", "Transpose", "ConstantOfShape", "LayerNormalization", "Trilu",
                    "ScatterND", "CumSum", "NonZero", "LSTM", "GRU", "RNN", "Mish"}
    assert exporter_ops <= covered, exporter_ops - covered


def test_cast_to_a_type_torch_lacks_is_refused_by_name() -> None:
    case = CASES["test_cast_FLOAT_to_FLOAT8E4M3FN"]
    with pytest.raises(UnsupportedOperatorError, match="FLOAT8E4M3FN"):
        load_onnx(case.model.SerializeToString())


# --- recurrent layers against torch.nn ------------------------------------------------------


class _Recurrent(nn.Module):
    """A torch recurrent layer returning its output sequence and final hidden state."""

    def __init__(self, cell: type[nn.Module], **kwargs: object) -> None:
        super().__init__()
        self.rnn = cell(input_size=5, hidden_size=6, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output, state = self.rnn(x)
        return output, state[0] if isinstance(state, tuple) else state


RECURRENT = {
    "lstm-legacy-2layers-batch_first": (nn.LSTM, "legacy", {"num_layers": 2, "batch_first": True}),
    "lstm-legacy-bidirectional": (nn.LSTM, "legacy", {"bidirectional": True}),
    "lstm-dynamo-2layers": (nn.LSTM, "dynamo", {"num_layers": 2, "batch_first": True}),
    "gru-legacy-2layers-bidirectional": (nn.GRU, "legacy",
                                         {"num_layers": 2, "bidirectional": True}),
    "gru-dynamo": (nn.GRU, "dynamo", {"num_layers": 2}),
    "rnn-legacy-2layers": (nn.RNN, "legacy", {"num_layers": 2, "batch_first": True}),
    "rnn-legacy-relu-bidirectional": (nn.RNN, "legacy",
                                      {"nonlinearity": "relu", "bidirectional": True}),
}


def _expected_norms(graph: onnx.GraphProto, native: nn.Module,
                    names: list[str]) -> dict[str, float]:
    """Native gradient norm for each ONNX parameter name.

    An initializer named like a torch parameter is that parameter; a folded W/R/B input of the
    k-th recurrent node is layer k's weight_ih / weight_hh / (bias_ih, bias_hh) over its
    directions, gate blocks reordered (which keeps the norm).
    """
    grads = {name: p.grad.double() for name, p in native.named_parameters()}
    expected: dict[str, float] = {}
    for name in names:
        if name in grads:
            expected[name] = float(grads[name].norm())
    layers = [n for n in graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    suffixes = ("", "_reverse")
    for layer, node in enumerate(layers):
        parts = {1: ("weight_ih",), 2: ("weight_hh",), 3: ("bias_ih", "bias_hh")}
        for index, stems in parts.items():
            if index < len(node.input) and node.input[index] in names \
                    and node.input[index] not in expected:
                total = sum(float(grads[f"rnn.{stem}_l{layer}{sfx}"].norm()) ** 2
                            for stem in stems for sfx in suffixes
                            if f"rnn.{stem}_l{layer}{sfx}" in grads)
                expected[node.input[index]] = math.sqrt(total)
    return expected


@pytest.mark.parametrize("key", sorted(RECURRENT))
def test_recurrent_export_matches_native_outputs_and_gradients(key: str) -> None:
    cell, exporter, kwargs = RECURRENT[key]
    torch.manual_seed(0)
    native = _Recurrent(cell, **kwargs).eval()
    x = torch.randn(3, 4, 5)
    data = (export_legacy(native, (x,), opset=14) if exporter == "legacy"
            else export_dynamo(native, (x,)))
    loaded = load_onnx(data)
    with torch.no_grad():
        for ours, theirs in zip(loaded.module(x), native(x), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    native.zero_grad()
    mean_square(native(x)).backward()
    ours = loaded_grad_norms(loaded, (x,))
    expected = _expected_norms(onnx.load_from_string(data).graph, native, list(ours))
    assert set(expected) == set(ours), "every ONNX weight maps to native parameters"
    for name, norm in ours.items():
        assert norm == pytest.approx(expected[name], rel=1e-4), name
    recurrent = [m for m in loaded.module.modules() if type(m).__name__ == "OnnxRecurrent"]
    assert recurrent
    assert all(m.layout in (0, 1) for m in recurrent)


def test_recurrent_layout_attribute_follows_the_node() -> None:
    case = CASES["test_lstm_batchwise"]
    loaded, _, _ = _load(case)
    (module,) = [m for m in loaded.module.modules() if type(m).__name__ == "OnnxRecurrent"]
    assert module.layout == 1  # what diagnostics.temporal reads to find the time axis


# --- stock bugs, opset lookup and the registry ----------------------------------------------


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto], *, opset: int,
           initializers: list[TensorProto] = ()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString()


def _float(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.mark.parametrize("axis", [0, 3, -3])
def test_flatten_at_axis_zero_and_rank(axis: int) -> None:
    rows = {0: 1, 3: 24, -3: 1}[axis]
    data = _model([helper.make_node("Flatten", ["x"], ["y"], axis=axis)],
                  [_float("x", [2, 3, 4])], [_float("y", [rows, 24 // rows])], opset=13)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(load_onnx(data).module(x), x.reshape(rows, 24 // rows))


def test_layer_norm_with_dynamic_shapes_and_initializer_weights() -> None:
    scale = numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "ln.weight")
    bias = numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32), "ln.bias")
    node = helper.make_node("LayerNormalization", ["x", "ln.weight", "ln.bias"], ["y"],
                            axis=-1, epsilon=1e-5)
    data = _model([node], [_float("x", ["batch", "seq", "hidden"])],
                  [_float("y", ["batch", "seq", "hidden"])],
                  opset=17, initializers=[scale, bias])
    loaded = load_onnx(data)
    native = nn.LayerNorm(8)
    with torch.no_grad():
        native.weight.copy_(torch.tensor(numpy_helper.to_array(scale)))
        native.bias.copy_(torch.tensor(numpy_helper.to_array(bias)))
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(loaded.module(x), native(x))
    mean_square(native(x)).backward()
    ours = loaded_grad_norms(loaded, (x,))
    assert ours == pytest.approx({"ln.weight": float(native.weight.grad.norm()),
                                  "ln.bias": float(native.bias.grad.norm())}, rel=1e-5)


_BN_SHAPES = {"x": [4, 3, 2, 5], "scale": [3], "bias": [3], "mean": [3], "var": [3]}


def _batch_norm(opset: int, outputs: list[str], **attributes: object) -> onnx.ModelProto:
    """One BatchNormalization node; its statistics are graph inputs, not initializers."""
    node = helper.make_node("BatchNormalization", list(_BN_SHAPES), outputs, epsilon=1e-2,
                            momentum=0.8, **attributes)
    values = [_float(name, [4, 3, 2, 5] if name == "y" else [3]) for name in outputs]
    graph = helper.make_graph([node], "g", [_float(n, s) for n, s in _BN_SHAPES.items()], values)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _batch_norm_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(shape).astype(np.float32)
             for name, shape in _BN_SHAPES.items()}
    feeds["var"] = np.abs(feeds["var"]) + 0.5
    return feeds


@pytest.mark.parametrize(("opset", "outputs"), [
    pytest.param(14, ["y", "running_mean", "running_var"], id="14-running"),
    pytest.param(15, ["y", "running_mean", "running_var"], id="15-running"),
    pytest.param(9, ["y", "running_mean", "running_var", "saved_mean", "saved_var"],
                 id="9-saved"),
])
def test_batch_norm_training_mode_matches_the_reference(opset: int, outputs: list[str]) -> None:
    # Y from the input's own statistics; the given mean and var enter only the running outputs.
    feeds = _batch_norm_feeds()
    reference = ReferenceEvaluator(_batch_norm(15, outputs[:3], training_mode=1))
    expected = reference.run(None, feeds)
    # Opset 9 has no training_mode (listing more outputs than Y is training) and onnx's opset-9
    # reference op does not follow that, so the opset-15 reference stands in; saved_mean and
    # saved_var are the batch's mean and (population) variance.
    expected += [feeds["x"].mean(axis=(0, 2, 3)), feeds["x"].var(axis=(0, 2, 3))]
    attributes = {} if opset == 9 else {"training_mode": 1}
    loaded = load_onnx(_batch_norm(opset, outputs, **attributes).SerializeToString())
    with torch.no_grad():
        got = _outputs(loaded.module(*(torch.from_numpy(v) for v in feeds.values())))
    assert len(got) == len(outputs)
    for actual, want in zip(got, expected, strict=False):
        np.testing.assert_allclose(actual.numpy(), want, rtol=1e-5, atol=1e-5)


def test_batch_norm_with_computed_statistics_matches_the_reference_and_gradcheck() -> None:
    # Inference mode with mean and var that are not initializers (the dynamo exporter computes
    # them from a standardized weight): normalized with those tensors, differentiable in all.
    feeds = _batch_norm_feeds()
    model = _batch_norm(15, ["y"], training_mode=0)
    expected = ReferenceEvaluator(model).run(None, feeds)[0]
    module = load_onnx(model.SerializeToString()).module
    tensors = [torch.from_numpy(v) for v in feeds.values()]
    with torch.no_grad():
        np.testing.assert_allclose(module(*tensors).numpy(), expected, rtol=1e-5, atol=1e-5)
    leaves = tuple(t.double()[:2, :, :1, :2].contiguous().requires_grad_(True)
                   if t.dim() == 4 else t.double().requires_grad_(True) for t in tensors)
    assert torch.autograd.gradcheck(module.double(), leaves, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_batch_norm_with_stored_statistics_stays_torch_batch_norm() -> None:
    # The ordinary export: running statistics as initializers, inference mode. The probe
    # switches torch BatchNorm modules to batch statistics, so it must stay one.
    feeds = _batch_norm_feeds()
    node = helper.make_node("BatchNormalization", list(_BN_SHAPES), ["y"])
    initializers = [numpy_helper.from_array(feeds[name], name) for name in list(_BN_SHAPES)[1:]]
    data = _model([node], [_float("x", _BN_SHAPES["x"])], [_float("y", _BN_SHAPES["x"])],
                  opset=15, initializers=initializers)
    module = load_onnx(data).module
    assert any(isinstance(sub, nn.BatchNorm2d) for sub in module.modules())


def test_constant_inputs_are_baked_not_reported_as_weights() -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    data = _model([node], [_float("x", [1, 2, 3, 3])], [_float("y", [1, 2, 6, 6])], opset=19,
                  initializers=[scales])
    loaded = load_onnx(data)
    assert loaded.parameters == {}
    assert not any("scales" in note for note in loaded.notes)
    x = torch.randn(1, 2, 3, 3)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")
    torch.testing.assert_close(loaded.module(x), expected)


def test_an_op_is_found_at_its_schema_version_for_a_later_opset() -> None:
    """onnx2torch looks Constant up at 19 for a model at opset 20 (Constant's since_version)."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, -1])
    nodes = [helper.make_node("Constant", [], ["s"], value=shape),
             helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Identity", ["r"], ["y"])]
    data = _model(nodes, [_float("x", [3, 4])], [_float("y", [3, 4])], opset=20)
    assert get_schema("Constant", 20).since_version == 19
    x = torch.randn(3, 4)
    torch.testing.assert_close(load_onnx(data).module(x), x)


def _own_registrations() -> list[tuple[str, int, Callable]]:
    return [(key.operation_type, key.version, function)
            for key, function in _CONVERTER_REGISTRY.items()
            if function.__module__.startswith(_PREFIX)]


def test_every_registered_version_is_a_schema_version() -> None:
    since = {(s.name, s.since_version) for s in get_all_schemas_with_history() if s.domain == ""}
    stray = [(op, v) for op, v, _ in _own_registrations() if (op, v) not in since]
    stray += [(op, v) for op, (_, versions) in TYPE_ONLY_VERSIONS.items() for v in versions
              if (op, v) not in since]
    assert not stray, "registered at a version no schema starts at (never looked up)"


def _signature(op: str, version: int) -> tuple:
    schema = get_schema(op, version)
    attributes = sorted((a.name, a.type, a.required) for a in schema.attributes.values())
    return (tuple(attributes), tuple((i.name, i.option) for i in schema.inputs),
            tuple((o.name, o.option) for o in schema.outputs))


@pytest.mark.parametrize("op", sorted(TYPE_ONLY_VERSIONS))
def test_type_only_aliases_share_the_stock_signature(op: str) -> None:
    stock, versions = TYPE_ONLY_VERSIONS[op]
    for version in versions:
        assert _signature(op, version) == _signature(op, stock), f"{op}-{version}"


# Stock converters replaced on purpose (module docstrings say why).
REPLACED = {("CumSum", 14): "cumulative", ("NonZero", 13): "indexing", ("Flatten", 13): "shape",
            ("Reshape", 14): "shape", ("Shape", 15): "shape", ("Split", 13): "shape",
            ("LayerNormalization", 17): "normalization", ("IsInf", 10): "arithmetic",
            ("ScatterND", 16): "indexing", ("Resize", 13): "resize", ("Pad", 13): "pad",
            ("AveragePool", 11): "pooling", ("Cast", 13): "casts",
            ("DepthToSpace", 13): "shape", ("Gemm", 13): "linalg",
            ("BatchNormalization", 9): "normalization",
            ("BatchNormalization", 14): "normalization",
            ("BatchNormalization", 15): "normalization"}


def test_replaced_stock_converters_are_ours() -> None:
    for (op, version), module in REPLACED.items():
        key = next(k for k in _CONVERTER_REGISTRY if k.operation_type == op
                   and k.version == version and k.domain == "")
        assert _CONVERTER_REGISTRY[key].__module__ == _PREFIX + module, (op, version)


@pytest.mark.parametrize("attributes", [{}, {"transB": 1}, {"alpha": 2.0, "beta": 0.5},
                                        {"transB": 1, "alpha": 0.5}, {"bias": False}])
def test_gemm_from_initializers_matches_the_reference_without_drawing_random_numbers(
        attributes: dict) -> None:
    # The converter builds nn.Linear with skip_init: the stock one ran torch's random init and
    # overwrote it (seconds on large models). Same values, and the global RNG is left untouched.
    attributes = dict(attributes)
    with_bias = attributes.pop("bias", True)
    rng = np.random.default_rng(0)
    b = rng.standard_normal((5, 4) if attributes.get("transB") else (4, 5)).astype(np.float32)
    c = rng.standard_normal(5).astype(np.float32)
    inputs = ["x", "B", "C"] if with_bias else ["x", "B"]
    node = helper.make_node("Gemm", inputs, ["y"], name="gemm", **attributes)
    initializers = [numpy_helper.from_array(b, "B")] + (
        [numpy_helper.from_array(c, "C")] if with_bias else [])
    data = _model([node], [_float("x", [3, 4])], [_float("y", [3, 5])], opset=13,
                  initializers=initializers)
    state = torch.get_rng_state()
    loaded = load_onnx(data)
    assert torch.equal(torch.get_rng_state(), state)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    weight = b.T if attributes.get("transB") else b
    expected = attributes.get("alpha", 1.0) * x @ weight
    if with_bias:
        expected = expected + attributes.get("beta", 1.0) * c
    with torch.no_grad():
        got = loaded.module(torch.from_numpy(x))
    np.testing.assert_allclose(_outputs(got)[0].numpy(), expected, rtol=1e-5, atol=1e-5)


def _counting_loop(trip: int) -> onnx.ModelProto:
    # y_final = x + trip (the body adds 1 to the carried value; no scan outputs)
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [2])],
        [one])
    trip_count = numpy_helper.from_array(np.array(trip, dtype=np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("Loop", ["trip", "cond", "x"], ["y"], name="loop", body=body)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              [trip_count, cond])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_loop_runs_its_trip_count_and_refuses_a_runaway_count() -> None:
    from diagnostics.loading.onnx.ops.loop import MAX_ITERATIONS

    x = torch.tensor([0.5, -1.0])
    loaded = load_onnx(_counting_loop(7).SerializeToString())
    torch.testing.assert_close(loaded.module(x), x + 7)
    runaway = load_onnx(_counting_loop(2**62).SerializeToString())
    with pytest.raises(RuntimeError, match=f"past {MAX_ITERATIONS} iterations"):
        runaway.module(x)


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_with_a_kernel_far_wider_than_its_input_is_one_cheap_window(
        count_include_pad: int) -> None:
    # transformers' EfficientNet pools its 2x2 map with a 2560-wide kernel and ceil_mode; padding
    # the input out to the kernel allocated 2·C·2560² floats (134 GB at C = 2560).
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2560, 2560],
                            strides=[2560, 2560], ceil_mode=1, pads=[0, 1, 0, 1],
                            count_include_pad=count_include_pad)
    # One window over the whole 2x3 map; its explicit pads (one column each side) count only
    # with count_include_pad, the ceil-mode extension never (onnx's reference evaluator
    # returns NaN for such a window, so the mean is written out).
    x = np.random.default_rng(0).normal(size=(2, 2560, 2, 3)).astype(np.float32)
    data = _model([node], [_float("x", [2, 2560, 2, 3])], [_float("y", [2, 2560, 1, 1])],
                  opset=19)
    with torch.no_grad():
        got = load_onnx(data).module(torch.from_numpy(x))
    expected = x.sum(axis=(2, 3), keepdims=True) / (2 * (5 if count_include_pad else 3))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_col2im_with_constant_shapes_is_torch_fold() -> None:
    # What dynamo writes for F.fold (timm VOLO): image and block shapes as initializers.
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"], strides=[2, 2],
                            pads=[1, 1, 1, 1], dilations=[1, 1])
    columns = np.random.default_rng(0).normal(size=(2, 3 * 9, 16)).astype(np.float32)
    data = _model([node], [_float("x", [2, 27, 16])], [_float("y", [2, 3, 7, 7])], opset=18,
                  initializers=[_int64_tensor("image", [7, 7]), _int64_tensor("block", [3, 3])])
    module = load_onnx(data).module
    x = torch.from_numpy(columns).requires_grad_(True)
    reference = torch.from_numpy(columns).requires_grad_(True)
    expected = F.fold(reference, (7, 7), (3, 3), padding=1, stride=2)
    got = module(x)
    torch.testing.assert_close(got, expected)
    weights = torch.randn(got.shape)
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)


def _int64_tensor(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def test_scatter_nd_into_an_empty_slice() -> None:
    # torchvision Swin3D's shifted-window mask (dynamo export, small clip) scatters [4, 14, 0]
    # updates into a [21, 14, 0] tensor: nothing to write, and nothing to fail on.
    node = helper.make_node("ScatterND", ["data", "indices", "updates"], ["y"])
    data = _model([node], [_float("data", [21, 14, 0]),
                           helper.make_tensor_value_info("indices", TensorProto.INT64, [4, 1]),
                           _float("updates", [4, 14, 0])], [_float("y", [21, 14, 0])], opset=18)
    out = load_onnx(data).module(torch.zeros(21, 14, 0), torch.tensor([[14], [15], [16], [17]]),
                                 torch.zeros(4, 14, 0))
    assert out.shape == (21, 14, 0)


def _scan_rnn(w: np.ndarray, u: np.ndarray, *, reverse: int = 0) -> bytes:
    # What jax2onnx writes for jax.lax.scan over a tanh cell: the state carried, the sequence
    # read one step per iteration along axis 1, the weights read from the outer graph by name.
    body = onnx.parser.parse_graph("""
        step (float[2, 4] h, float[2, 3] x_t) => (float[2, 4] h_next, float[2, 4] out) {
            a = MatMul(x_t, W)
            b = MatMul(h, U)
            c = Add(a, b)
            h_next = Tanh(c)
            out = Identity(h_next)
        }
    """)
    node = helper.make_node("Scan", ["h0", "x"], ["h_last", "states"], name="scan", body=body,
                            num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1],
                            scan_input_directions=[reverse])
    return _model([node], [_float("h0", [2, 4]), _float("x", [2, 5, 3])],
                  [_float("h_last", [2, 4]), _float("states", [2, 5, 4])], opset=17,
                  initializers=[numpy_helper.from_array(w, "W"),
                                numpy_helper.from_array(u, "U")])


@pytest.mark.parametrize("reverse", [0, 1])
def test_scan_is_the_unrolled_recurrence_with_native_gradients(reverse: int) -> None:
    from diagnostics.temporal import find_target

    rng = np.random.default_rng(0)
    w, u = (rng.normal(scale=0.5, size=shape).astype(np.float32) for shape in ((3, 4), (4, 4)))
    loaded = load_onnx(_scan_rnn(w, u, reverse=reverse))
    h0, x = torch.zeros(2, 4), torch.from_numpy(rng.normal(size=(2, 5, 3)).astype(np.float32))
    h_last, states = loaded.module(h0, x)
    weights = [torch.from_numpy(v).requires_grad_(True) for v in (w, u)]
    h, expected = h0, []
    for t in (reversed(range(5)) if reverse else range(5)):
        h = torch.tanh(x[:, t] @ weights[0] + h @ weights[1])
        expected.append(h)
    torch.testing.assert_close(h_last, h)
    torch.testing.assert_close(states, torch.stack(expected, 1))
    (h_last.sum() + states.pow(2).mean()).backward()
    (h.sum() + torch.stack(expected, 1).pow(2).mean()).backward()
    for name, native in zip(("W", "U"), weights, strict=True):
        torch.testing.assert_close(loaded.parameters[name].grad, native.grad)
    target = find_target(loaded)  # the scanned sequence is a recurrent layer's input
    assert target is not None
    assert (target.argument, target.time_axis) == (1, 1)
