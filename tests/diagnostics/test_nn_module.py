"""``diagnose(nn.Module, inputs=...)``: the same report as exporting the module to ONNX.

The reference is the exported file diagnosed the usual way (legacy exporter, no constant
folding, so initializers keep their ``state_dict`` names): verdict, width-corrected signal ratio,
every parameter's gradient norm (rtol 1e-4, like the loader parity tests), causes and remedies
must agree. Then what only a live module has: the caller's module is untouched, keyword inputs,
repaired modules.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics import diagnose
from diagnostics.config import DiagnosisConfig
from diagnostics.errors import InvalidInputsError, ModelLoadError
from diagnostics.probe import compute_loss
from diagnostics.remedies.repair import RemedyNotRepairableError
from diagnostics.report import Report, Status
from tests.model_zoo import BY_NAME, ZooModel, export
from tests.model_zoo import FAMILIES as ZOO
from tests.onnx_export import export_legacy

RTOL = 1e-4
CONFIG = {"samples": 1, "seed": 0, "verify_remedies": False}


class TinyEncoder(nn.Module):
    """Input projection, a 2-layer post-LN ``nn.TransformerEncoder`` (GELU), a Linear head."""

    def __init__(self, features: int = 8, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32, dropout=0.0,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, features) -> (N, T, 4)."""
        return self.head(self.encoder(self.embed(x)))


def _encoder() -> ZooModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = TinyEncoder().eval()
        args = (torch.randn(2, 6, 8),)
    return ZooModel(module, args, ("x",), None, lambda name, _exporter: name)


def _zoo(name: str) -> ZooModel:
    return _encoder() if name == "encoder" else BY_NAME[name].build()


def _step_norms(model: ZooModel) -> list[float]:
    """‖∂L/∂x_t‖ per step of a batch-first sequence, loss on the last step's output."""
    x = model.args[0].clone().requires_grad_(True)
    compute_loss([model.module(x)[:, -1]], DiagnosisConfig().loss, CONFIG["seed"]).backward()
    return x.grad.double().norm(dim=(0, 2)).tolist()


def _grad_norms(report: Report) -> dict[str, float]:
    return {param.name: param.grad_norm.median for layer in report.layers
            for param in layer.parameters}


# CI runs the three the issue names; the rest of the model zoo runs with the slow tests.
FAMILIES = ["resnet18", "encoder", "lstm"] + [
    pytest.param(family.name, marks=pytest.mark.slow) for family in ZOO
    if family.name not in ("resnet18", "lstm")]


@pytest.mark.parametrize("family", FAMILIES)
def test_same_report_as_the_exported_file(family: str) -> None:
    model = _zoo(family)
    live = diagnose(model.module, inputs=model.args, config=CONFIG)
    exported = diagnose(export(model, "legacy"), config=CONFIG,
                        inputs={name: tensor.numpy() for name, tensor in
                                zip(model.input_names, model.args, strict=True)})

    assert live.source.kind == "module"
    assert live.verdict.status == exported.verdict.status
    ours, theirs = live.verdict.evidence, exported.verdict.evidence
    if family not in ("lstm", "bilstm", "gru", "rnn", "tied_mlp"):
        # Recurrent: the exported cell reorders its gates with Slice nodes on the weights, which
        # become the file's deepest "layers"; the module has one recurrent layer. Tied MLP: its
        # decoder is F.linear in forward, a node in the file but no module. Their parameters
        # (and profiles through time) are compared instead.
        assert ours.backward_signal_ratio.median == pytest.approx(
            theirs.backward_signal_ratio.median, rel=RTOL)
    mine, file = _grad_norms(live), _grad_norms(exported)
    assert set(mine) == {name for name, _ in model.module.named_parameters()}
    assert set(mine) == set(file), "parameters are named by their state_dict names"
    for name, norm in file.items():
        assert mine[name] == pytest.approx(norm, rel=RTOL, abs=1e-6 * max(file.values())), name
    assert [c.id for c in live.causes] == [c.id for c in exported.causes]
    assert {r.id for r in live.remedies} == {r.id for r in exported.remedies}
    if family in ("lstm", "gru", "rnn"):
        # The profile through time against plain autograd (the exported file's profile is no
        # reference: its recurrent node is time-major while the model's output is batch-first).
        (profile,) = live.temporal
        assert profile.input == "rnn"
        np.testing.assert_allclose(profile.grad_norms, _step_norms(model), rtol=RTOL)


def test_verified_remedies_match_the_exported_file() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(*[layer for _ in range(8)
                          for layer in (nn.Linear(32, 32), nn.Sigmoid())]).eval()
    x = torch.randn(16, 32)
    live = diagnose(net, inputs=x, config={"samples": 1})
    exported = diagnose(export_legacy(net, (x,), do_constant_folding=False, input_names=["x"]),
                        inputs={"x": x.numpy()}, config={"samples": 1})

    def verified(report: Report) -> list[tuple]:
        return [(r.id, r.rank, r.verified.status_after if r.verified else None,
                 r.verified.evidence_after.get("backward_signal_ratio") if r.verified else None)
                for r in report.remedies]

    assert live.verdict.status is Status.VANISHING
    assert sum(1 for r in live.remedies if r.verified) >= 3
    ours, theirs = verified(live), verified(exported)
    assert [row[:3] for row in ours] == [row[:3] for row in theirs]
    for mine, file in zip(ours, theirs, strict=True):
        assert mine[3] == (None if file[3] is None else pytest.approx(file[3], rel=RTOL)), mine[0]


def test_the_callers_module_is_untouched() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.ReLU(inplace=True),
                           nn.Dropout(0.5), nn.Linear(6, 2)).train()
    module[0].weight.requires_grad_(False)
    module[4].weight.grad = torch.ones_like(module[4].weight)
    before = copy.deepcopy(module.state_dict())
    hooks = len(module[0]._forward_hooks)

    diagnose(module, inputs=torch.randn(8, 6), config=CONFIG)

    assert module.training
    assert all(sub.training for sub in module.modules())
    assert module[0].weight.requires_grad is False
    assert module[2].inplace is True
    assert torch.equal(module[4].weight.grad, torch.ones_like(module[4].weight))
    assert len(module[0]._forward_hooks) == hooks
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed (BatchNorm statistics?)"


class KeywordNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor, scale: torch.Tensor, *, double: bool = False):
        out = self.proj(self.table(ids)) * scale
        return {"out": out * 2 if double else out}


def test_keyword_inputs_with_constants() -> None:
    ids = torch.randint(0, 10, (4, 5))
    report = diagnose(KeywordNet(), config=CONFIG,
                      inputs={"ids": ids, "scale": torch.ones(1), "double": True})
    assert report.samples.input_shapes == {"ids": [4, 5], "scale": [1]}
    assert [layer.name for layer in report.layers] == ["table", "proj"]
    assert report.layers[0].depth > report.layers[1].depth


def test_positional_inputs_take_the_forward_signature_names() -> None:
    report = diagnose(KeywordNet(), config=CONFIG,
                      inputs=(torch.randint(0, 10, (4, 5)), torch.ones(1)))
    assert list(report.samples.input_shapes) == ["ids", "scale"]


def test_inputs_are_required_and_named_when_wrong() -> None:
    with pytest.raises(InvalidInputsError, match="needs its inputs"):
        diagnose(nn.Linear(2, 2))
    with pytest.raises(InvalidInputsError, match="positional input 1 is a str"):
        diagnose(nn.Linear(2, 2), inputs=(torch.ones(1, 2), "x"))
    with pytest.raises(InvalidInputsError, match="forward pass failed"):
        diagnose(nn.Linear(2, 2), inputs=torch.ones(1, 3))
    with pytest.raises(ModelLoadError, match="TorchScript"):
        diagnose(torch.jit.script(nn.Linear(2, 2)), inputs=torch.ones(1, 2))


@pytest.mark.parametrize("inputs", [torch.ones(4, 8), (torch.ones(4, 8),), [torch.ones(4, 8)]],
                         ids=["tensor", "tuple", "list"])
def test_module_arguments_given_to_a_spec_are_bad_inputs(inputs: object) -> None:
    """A spec or ONNX model takes arrays by input name; tensors used to fail with a TypeError."""
    spec = {"inputs": [{"name": "x", "shape": [4, 8]}],
            "layers": [{"type": "Linear", "in_features": 8, "out_features": 2}]}
    with pytest.raises(InvalidInputsError) as caught:
        diagnose(spec, inputs=inputs, config=CONFIG)
    assert f"inputs of type {type(inputs).__name__} are an nn.Module's" in caught.value.detail
    assert "an .npz (path or bytes) or a mapping name -> array" in caught.value.detail


def test_repaired_module_is_a_fresh_module_that_is_healthy() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(*[layer for _ in range(10)
                             for layer in (nn.Linear(32, 32), nn.Sigmoid())]).eval()
    original = copy.deepcopy(module.state_dict())
    inputs = torch.randn(16, 32)
    report = diagnose(module, inputs=inputs, config={"samples": 1})
    assert report.verdict.status is Status.VANISHING
    remedy = next(r for r in report.remedies if r.id == "reinitialize")
    assert remedy.repairable
    assert remedy.verified.status_after is Status.HEALTHY

    fixed = report.repaired_module("reinitialize")

    assert type(fixed) is nn.Sequential
    assert fixed is not module
    assert not fixed.training
    assert all(torch.equal(v, original[k]) for k, v in module.state_dict().items())
    again = diagnose(fixed, inputs=inputs, config={"samples": 1, "verify_remedies": False})
    assert again.verdict.status is Status.HEALTHY
    with pytest.raises(RemedyNotRepairableError, match="repaired_module"):
        report.repaired_model("reinitialize")
    with pytest.raises(RemedyNotRepairableError, match="architecture"):
        report.repaired_module("replace-activation")
