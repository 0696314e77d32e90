"""Recurrences the exporter unrolled into one cell copy per step get a temporal profile.

PyTorch's default exporter (dynamo) writes ``nn.RNN`` as 50 copies of its cell, and both
exporters write a Python loop over ``nn.RNNCell``/``LSTMCell``/``GRUCell`` that way. Before
``loading/onnx/unrolled.py`` those files had no temporal profile, and a vanilla RNN whose memory
is far shorter than its sequence was judged healthy from the default export while its legacy
export (an ``RNN`` node) was judged vanishing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diagnostics import diagnose
from diagnostics.config import DiagnosisConfig
from diagnostics.inputs import SampleBatch
from diagnostics.loading.onnx.loader import load_onnx
from diagnostics.probe import compute_loss, probe_mode
from diagnostics.render.text import render_text
from diagnostics.report import Flag, Status
from diagnostics.temporal import find_target, step_norms
from tests.onnx_export import export_dynamo, export_legacy


class Tagger(nn.Module):
    """``nn.RNN``/``LSTM``/``GRU`` over a [batch, steps, 2] sequence, a readout per step."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        self.rnn = getattr(nn, cell)(2, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


class CellLoop(nn.Module):
    """A Python loop over a cell, as users write custom recurrences; optionally a projection
    and LayerNorm first, so that the sequence the steps are cut from is computed in the graph."""

    def __init__(self, cell: str, *, normalized_input: bool = False) -> None:
        super().__init__()
        self.kind = cell
        self.cell = getattr(nn, cell)(2, 16)
        self.prepare = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)) if normalized_input \
            else nn.Identity()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        h = torch.zeros(x.shape[0], 16)
        c = torch.zeros(x.shape[0], 16)
        outputs = []
        for t in range(x.shape[1]):
            if self.kind == "LSTMCell":
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
            outputs.append(self.head(h))
        return torch.stack(outputs, 1)


class PerStep(nn.Module):
    """The same Linear applied to each step separately: shared weights, no recurrence."""

    def __init__(self) -> None:
        super().__init__()
        self.step = nn.Linear(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.tanh(self.step(x[:, t])) for t in range(x.shape[1])], 1)


def _exports(module: nn.Module, x: torch.Tensor) -> dict[str, bytes]:
    torch.manual_seed(0)
    module.eval()
    return {"dynamo": export_dynamo(module, (x,)), "legacy": export_legacy(module, (x,))}


@pytest.fixture(scope="module")
def vanilla_rnn() -> dict[str, bytes]:
    torch.manual_seed(0)
    return _exports(Tagger("RNN"), torch.randn(4, 50, 2))


def test_the_default_export_of_a_vanilla_rnn_is_judged_like_its_legacy_export(vanilla_rnn):
    # dynamo unrolls nn.RNN into 50 Tanh steps; legacy keeps one RNN node. Same module, same
    # measured tensor (the input sequence), so the same verdict and the same profile.
    unrolled = load_onnx(vanilla_rnn["dynamo"]).unrolled_recurrence
    assert unrolled is not None
    assert (unrolled.module_path, unrolled.time_axis, unrolled.steps, unrolled.gated) == \
        ("", 1, 50, False)
    reports = {name: diagnose(data, config={"verify_remedies": False})
               for name, data in vanilla_rnn.items()}
    for report in reports.values():
        assert report.verdict.status is Status.VANISHING
        assert Flag.TEMPORAL_VANISHING in report.verdict.flags
        assert report.verdict.summary.startswith("Vanishing (temporal_vanishing)")
    dynamo, legacy = (reports[name].temporal[0] for name in ("dynamo", "legacy"))
    assert dynamo.effective_horizon == legacy.effective_horizon
    assert dynamo.grad_norms == pytest.approx(legacy.grad_norms, rel=1e-4)
    # The 50 step copies are time, not depth: no "deep tanh stack" causes or remedies.
    causes = {cause.id for cause in reports["dynamo"].causes}
    remedies = {remedy.id for remedy in reports["dynamo"].remedies}
    assert "recurrent_memory" in causes
    assert causes.isdisjoint({"saturating_activations", "plain_depth"})
    assert "gated-cells" in remedies
    assert remedies.isdisjoint({"replace-activation", "add-normalization", "add-residual",
                                "data-dependent-init"})


def test_a_bidirectional_rnn_is_measured_on_its_input_in_both_exports():
    # dynamo projects the input once per direction: the sequence is read before both.
    torch.manual_seed(0)

    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 16, batch_first=True, bidirectional=True)
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0])

    exports = _exports(Both(), torch.randn(4, 40, 3))
    unrolled = load_onnx(exports["dynamo"]).unrolled_recurrence
    assert unrolled is not None
    assert (unrolled.module_path, unrolled.time_axis) == ("", 1)
    config = {"verify_remedies": False, "samples": 1, "sequence_loss": "last_step"}
    reports = {name: diagnose(exports[name], config=config) for name in ("dynamo", "legacy")}
    dynamo, legacy = (reports[name].temporal[0] for name in ("dynamo", "legacy"))
    assert dynamo.grad_norms == pytest.approx(legacy.grad_norms, rel=1e-4)
    # Both directions' step copies are the cell's, and the first step's state (a constant the
    # exporter folded) is no parameter to underflow: the same causes as the RNN node's.
    causes = {name: {cause.id for cause in report.causes} for name, report in reports.items()}
    assert causes["dynamo"] == causes["legacy"]


@pytest.mark.parametrize(("cell", "gated"), [("RNNCell", False), ("LSTMCell", True),
                                        ("GRUCell", True)])
def test_cell_loops_are_recurrences_with_their_gating(cell, gated):
    torch.manual_seed(0)
    for exporter, data in _exports(CellLoop(cell), torch.randn(4, 20, 2)).items():
        model = load_onnx(data)
        unrolled = model.unrolled_recurrence
        assert unrolled is not None, exporter
        assert (unrolled.time_axis, unrolled.steps, unrolled.gated) == (1, 20, gated), exporter
        target = find_target(model)
        assert target is not None
        assert target.ungated is not gated


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell"])
def test_gated_cell_loops_at_default_init_stay_healthy(cell):
    # A loss at every step (the default) gives gated cells local signal: they train.
    torch.manual_seed(0)
    for exporter, data in _exports(CellLoop(cell), torch.randn(4, 20, 2)).items():
        report = diagnose(data, config={"verify_remedies": False})
        assert report.verdict.status is Status.HEALTHY, (exporter, report.verdict.summary)
        assert report.temporal, exporter


def test_a_sequence_computed_in_the_graph_is_measured_where_the_steps_are_cut():
    # The steps are cut from LayerNorm(Linear(x)), which the walk back cannot see through: the
    # profile is read on that node's output, and equals ‖∂L/∂s_t‖ computed natively.
    torch.manual_seed(0)
    net, x = CellLoop("RNNCell", normalized_input=True), torch.randn(4, 12, 2)
    data = _exports(net, x)["legacy"]
    model = load_onnx(data)
    target = find_target(model)
    assert target is not None
    assert target.on_output
    assert target.time_axis == 1
    config = DiagnosisConfig()
    with probe_mode(model.module, config.norm_stats):
        measured = step_norms(model, SampleBatch(0, (x,)), config, target)

    captured: list[torch.Tensor] = []
    handle = net.prepare.register_forward_hook(
        lambda _m, _a, out: (out.retain_grad(), captured.append(out)) and None)
    compute_loss(net(x)[:, -1], config.loss, 0).backward()
    handle.remove()
    expected = captured[0].grad.double().norm(dim=(0, 2))
    assert measured == pytest.approx(expected.tolist(), rel=1e-4)


class UnbindLoop(nn.Module):
    """``for x_t in x.unbind(1)``: the legacy exporter cuts the steps with one Split."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(2, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], 8)
        for step in x.unbind(1):
            h = self.cell(step, h)
        return self.head(h)


def test_steps_cut_by_unbind_are_found():
    torch.manual_seed(0)
    for exporter, data in _exports(UnbindLoop(), torch.randn(4, 12, 2)).items():
        unrolled = load_onnx(data).unrolled_recurrence
        assert unrolled is not None, exporter
        assert (unrolled.time_axis, unrolled.steps, unrolled.gated) == (1, 12, True), exporter


def test_a_weight_shared_by_independent_steps_is_no_recurrence():
    torch.manual_seed(0)
    for exporter, data in _exports(PerStep(), torch.randn(4, 10, 2)).items():
        model = load_onnx(data)
        assert model.unrolled_recurrence is None, exporter
        assert find_target(model) is None, exporter


def test_a_cell_called_once_per_step_by_a_live_module_is_profiled_per_call():
    # The Python library: no export, the cell is a submodule called T times. Each call's input
    # is one step; the profile is ‖∂L/∂x_t‖ with the loss on the last step, as for nn.RNN.
    torch.manual_seed(0)
    net, x = CellLoop("RNNCell"), torch.randn(4, 50, 2)
    report = diagnose(net, inputs=x, config={"verify_remedies": False, "samples": 1})
    assert report.temporal
    assert report.temporal[0].input == "cell"
    assert report.verdict.status is Status.VANISHING
    assert report.verdict.summary.startswith("Vanishing (temporal_vanishing)")

    leaf = x.clone().requires_grad_(True)
    compute_loss(net(leaf)[:, -1], DiagnosisConfig().loss, 0).backward()
    expected = leaf.grad.double().norm(dim=(0, 2))
    assert report.temporal[0].grad_norms == pytest.approx(expected.tolist(), rel=1e-4)
    assert report.temporal[0].axis == -1
    assert "cell (one call per step): vanishing" in render_text(report)


def test_a_gated_cell_called_once_per_step_stays_healthy():
    torch.manual_seed(0)
    report = diagnose(CellLoop("LSTMCell"), inputs=torch.randn(4, 50, 2),
                      config={"verify_remedies": False})
    assert report.temporal
    assert report.verdict.status is Status.HEALTHY, report.verdict.summary
