"""Model families users upload, through both exporters: convert, backward, native gradients, names.

Every family of :mod:`tests.model_zoo` is exported with the legacy TorchScript exporter (opset 17,
no constant folding) and with ``dynamo=True`` (opset 18, no optimizer). Each file must load, run
backward, and give every initializer the gradient norm of the native parameter it came from
under the same inputs and loss (mean of squares of the float outputs) - the native module is the
independent reference. Reported names must be the file's: parameters by initializer name, layers
by node name. ``diagnose`` must run on each family's legacy export with inputs that make sense.

Families a missing converter still blocks are strict xfails listing every missing op: the test
turns red when the list changes, so whoever lands a converter updates :data:`BLOCKED`.

Exports take seconds each, so each is made once per session; families marked slow run in the
full suite only (``-m 'not slow'`` keeps a representative subset: a residual CNN, a ViT, a UNet,
an LSTM, tied weights, BERT).
"""

from __future__ import annotations

import functools

import onnx
import pytest
import torch

from diagnostics import diagnose
from diagnostics.config import NormStats, resolve_config
from diagnostics.errors import InvalidInputsError, UnsupportedOperatorError
from diagnostics.inputs import make_batches
from diagnostics.limits import DEFAULT_LIMITS
from diagnostics.loading.onnx.loader import load_onnx
from diagnostics.model import LoadedModel
from diagnostics.probe import probe_mode
from diagnostics.report import Status
from tests.model_zoo import (
    BY_NAME,
    EXPORTERS,
    FAMILIES,
    TOKENS,
    ZooModel,
    check_gradients,
    export,
    has_batch_norm,
    missing_converters,
)

RTOL = 1e-4
# Times the largest gradient norm: what float32 rounding leaves of exact zeros (see
# check_gradients).
ATOL = 1e-6

# (family, exporter) -> the ops without a converter, as "Op-since_version" in node order.
# Empty since the converters of issue 4 landed; keep the table for the next exporter release.
BLOCKED: dict[tuple[str, str], tuple[str, ...]] = {}

# Families whose dynamic axes nothing in the graph bounds: diagnose must ask for them by name.
ASKED_AXES: dict[str, tuple[str, int]] = {
    "audio_cnn": ("input", 2),
    "lstm": ("input", 1),
    "bilstm": ("input", 1),
    "gru": ("input", 1),
    "rnn": ("input", 1),
}


def _marks(family: str, exporter: str, *, slow: bool) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.slow] if slow else []
    blocked = BLOCKED.get((family, exporter))
    if blocked:
        marks.append(pytest.mark.xfail(raises=UnsupportedOperatorError, strict=True,
                                       reason=f"{', '.join(blocked)} missing"))
    return marks


CASES = [
    pytest.param(family.name, exporter, id=f"{family.name}-{exporter}",
                 marks=_marks(family.name, exporter, slow=family.slow))
    for family in FAMILIES for exporter in EXPORTERS
]
LEGACY_CASES = [
    pytest.param(family.name, id=family.name,
                 marks=_marks(family.name, "legacy", slow=family.slow))
    for family in FAMILIES
]


@functools.cache
def _zoo(family: str) -> ZooModel:
    return BY_NAME[family].build()


@functools.cache
def _exported(family: str, exporter: str) -> bytes:
    return export(_zoo(family), exporter)


@functools.cache
def _loaded(family: str, exporter: str) -> LoadedModel:
    """Load after checking the missing-converter list against :data:`BLOCKED`.

    Raises:
        UnsupportedOperatorError: still blocked (the xfail).
    """
    data = _exported(family, exporter)
    missing = missing_converters(data)
    expected = BLOCKED.get((family, exporter), ())
    assert missing == expected, (
        f"missing converters are now {missing or 'none'}, BLOCKED says {expected or 'none'}: "
        f"update BLOCKED[{(family, exporter)!r}]")
    return load_onnx(data, name=f"{family}-{exporter}.onnx")


def _file_names(data: bytes) -> tuple[set[str], set[str]]:
    """(initializer names, node names) as stored in the file.

    Initializer names include the outputs of ``Identity(initializer)`` nodes: the legacy
    exporter stores equal-valued weights once and names the others' copies after their own
    ``state_dict`` entry, which is the name the loader reports.
    """
    graph = onnx.load_from_string(data).graph
    initializers = {init.name for init in graph.initializer}
    copies = {node.output[0] for node in graph.node
              if node.op_type == "Identity" and node.input[0] in initializers}
    return initializers | copies, {node.name for node in graph.node}


def _compare_gradients(family: str, exporter: str, mode: str) -> None:
    check = check_gradients(_zoo(family), _loaded(family, exporter), exporter, rtol=RTOL,
                            atol=ATOL)
    assert check.ok, f"{mode}: {check.describe()}"


def _tuple(outputs: torch.Tensor | tuple | list) -> tuple:
    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)


@pytest.mark.parametrize(("family", "exporter"), CASES)
def test_gradients_match_native(family: str, exporter: str) -> None:
    zoo, loaded = _zoo(family), _loaded(family, exporter)
    with torch.no_grad():
        torch.testing.assert_close(_tuple(loaded.module(*zoo.args)), _tuple(zoo.module(*zoo.args)),
                                   rtol=RTOL, atol=1e-5)
    _compare_gradients(family, exporter, "eval")
    if has_batch_norm(zoo.module):
        # The probe's default: BatchNorm on batch statistics, dropout off, on both sides.
        with probe_mode(zoo.module, NormStats.BATCH), probe_mode(loaded.module, NormStats.BATCH):
            _compare_gradients(family, exporter, "batch statistics")


@pytest.mark.parametrize(("family", "exporter"), CASES)
def test_names_are_the_files(family: str, exporter: str) -> None:
    loaded = _loaded(family, exporter)
    initializers, nodes = _file_names(_exported(family, exporter))
    assert set(loaded.parameters) <= initializers
    assert {layer.name for layer in loaded.layers} <= nodes
    assert loaded.layers, "something is watched"
    zoo = _zoo(family)
    native = {zoo.onnx_name(name, exporter)
              for name, _ in zoo.module.named_parameters(remove_duplicate=False)}
    assert set(loaded.parameters) <= native, "every parameter maps back to a native one"


def _config(family: str) -> dict:
    config: dict = {"samples": 1, "verify_remedies": False}
    if family in ASKED_AXES:
        zoo = _zoo(family)
        config["input_shapes"] = {name: list(arg.shape)
                                  for name, arg in zip(zoo.input_names, zoo.args, strict=True)}
    return config


@pytest.mark.parametrize("family", LEGACY_CASES)
def test_diagnose_reports(family: str) -> None:
    _loaded(family, "legacy")  # checks BLOCKED first
    data = _exported(family, "legacy")
    config = _config(family)
    if family in ASKED_AXES:
        name, axis = ASKED_AXES[family]
        with pytest.raises(InvalidInputsError) as caught:
            diagnose(data, config={"samples": 1, "verify_remedies": False})
        assert caught.value.context == {"input": name, "axis": axis}
        assert f"{name!r} axis {axis}" in caught.value.detail
    report = diagnose(data, config=config)
    assert report.layers
    assert len(report.samples.runs) == 1
    if BY_NAME[family].token_inputs:  # the sequence axis is bounded by the position table
        assert set(map(tuple, report.samples.input_shapes.values())) == {(8, 64)}
    if BY_NAME[family].healthy:
        assert report.verdict.status is Status.HEALTHY, report.verdict
    if family in RECURRENT:
        (profile,) = report.temporal
        assert len(profile.grad_norms) == 12


# Families whose recurrent layers both exporters wrap in weight preparation (the gates
# reordered by Slice/Concat of the weights, Unsqueeze for the direction axis).
RECURRENT = {"lstm": "LSTM", "bilstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


# dynamo unrolls nn.RNN into per-step MatMul/Add/Tanh: no recurrent node is left to find; the
# unrolled recurrence is found instead (test_unrolled_rnn_is_profiled_like_its_recurrent_node).
UNROLLED = {("rnn", "dynamo")}


@pytest.mark.parametrize(("family", "exporter"), sorted(UNROLLED))
def test_unrolled_rnn_is_profiled_like_its_recurrent_node(family: str, exporter: str) -> None:
    unrolled = _loaded(family, exporter).unrolled_recurrence
    assert unrolled is not None
    assert (unrolled.steps, unrolled.gated) == (12, False)
    config = _config(family)
    (profile,) = diagnose(_exported(family, exporter), config=config).temporal
    (reference,) = diagnose(_exported(family, "legacy"), config=config).temporal
    assert profile.grad_norms == pytest.approx(reference.grad_norms, rel=1e-4)


@pytest.mark.parametrize(("family", "exporter"), [
    case for case in CASES if case.values[0] in RECURRENT and tuple(case.values) not in UNROLLED])
def test_recurrent_nodes_own_their_native_weights(family: str, exporter: str) -> None:
    loaded = _loaded(family, exporter)
    cells = [layer for layer in loaded.layers if layer.op_type == RECURRENT[family]]
    assert len(cells) == 2, "one node per stacked layer"
    native = {name for name, _ in _zoo(family).module.named_parameters() if name.startswith("rnn.")}
    assert {name for cell in cells for name in cell.parameters} == native
    assert all(name.endswith(("_l0", "_l0_reverse")) for name in cells[0].parameters)
    preparation = {"Slice", "Concat", "Unsqueeze", "Squeeze", "Split", "Gather"}
    assert not [layer.name for layer in loaded.layers if layer.op_type in preparation]


@pytest.mark.parametrize(("family", "exporter"), [
    case for case in CASES if BY_NAME[case.values[0]].token_inputs])
def test_token_inputs_make_sense(family: str, exporter: str) -> None:
    loaded = _loaded(family, exporter)
    specs = {spec.name: spec for spec in loaded.inputs}
    (batch,) = make_batches(loaded, resolve_config(_config(family)), DEFAULT_LIMITS)
    tensors = dict(zip(specs, batch.tensors, strict=True))
    for name in BY_NAME[family].token_inputs:
        ids = tensors[name]
        assert specs[name].vocab == TOKENS["vocab"], "from the embedding table it indexes"
        assert ids.dtype == torch.int64
        assert int(ids.min()) >= 0
        assert int(ids.max()) < TOKENS["vocab"]
        assert int(ids.max()) >= TOKENS["vocab"] // 2, "ids spread over the table"
    assert specs["attention_mask"].vocab is None
    assert bool((tensors["attention_mask"] == 1).all())
    if "token_type_ids" in specs:
        assert specs["token_type_ids"].vocab == 2  # BERT's segment table has two rows
        assert set(tensors["token_type_ids"].unique().tolist()) <= {0, 1}
    # "sequence" indexes the 64-row position table: bounded, and shared by every input
    assert all(spec.max_sizes == ((1, 64),) for spec in specs.values())
    assert {tensor.shape for tensor in batch.tensors} == {(8, 64)}
