"""The verdict rules of issue 9, each on the smallest model that shows it, through diagnose().

Models use their libraries' own initializations (unit-gain LayerNorm, torch's default Linear and
LSTM init) and the exporters' defaults where a file is involved, because that is what users have.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from diagnostics import diagnose
from diagnostics.config import DiagnosisConfig, resolve_config
from diagnostics.errors import InvalidConfigError
from tests.onnx_export import export_dynamo, export_legacy
from tests.spec_builders import linear

QUICK = {"samples": 1, "verify_remedies": False}


def relu_mlp(depth: int, gain: float = 1.0, width: int = 64, head: dict | None = None,
             tail: list[dict] | None = None) -> dict:
    std = gain * math.sqrt(2.0 / width)
    layers: list[dict] = []
    for _ in range(depth):
        layers += [linear(width, width, init={"scheme": "normal", "std": std}), {"type": "ReLU"}]
    layers.append(linear(width, 10, **(head or {})))
    return {"inputs": [{"name": "x", "shape": [32, width]}], "layers": layers + (tail or [])}


def fired(report) -> list[str]:
    return [rule.rule for rule in report.verdict.evidence.rules if rule.fired]


class TestProbeLoss:
    def test_default_loss_sees_through_a_unit_gain_layernorm_output(self):
        # mean(y²) of a unit-gain LayerNorm output is 1 whatever the input: with it everything
        # below is rounding noise. The default random projection sees every direction.
        spec = relu_mlp(6, tail=[{"type": "LayerNorm", "normalized_shape": 10, "eps": 1e-12}])
        report = diagnose(spec, config=QUICK)
        assert report.config.loss == "random_projection"
        assert report.verdict.status == "healthy", report.verdict.summary
        assert 0.1 < report.verdict.evidence.backward_signal_ratio.median < 10

    @pytest.mark.parametrize("loss", ["mean_square", "sum"])
    def test_a_degenerate_loss_the_caller_chose_is_inconclusive_never_vanishing(self, loss):
        spec = relu_mlp(6, tail=[{"type": "LayerNorm", "normalized_shape": 10, "eps": 1e-12}])
        report = diagnose(spec, config={**QUICK, "loss": loss})
        assert report.config.loss == loss  # honoured exactly
        assert report.verdict.status == "inconclusive", report.verdict.summary
        assert fired(report)[0] == "rounding_noise"
        evidence = report.verdict.evidence
        assert evidence.rounding_noise_layer == "layers.13"
        assert evidence.rounding_noise_ratio < 1e-5
        # float64 shows what it is: the exact gradient below the LayerNorm is zero.
        assert evidence.rounding_noise_ratio_float64 < evidence.rounding_noise_ratio * 1e-3
        assert "layers.13" in report.verdict.summary
        assert "random_projection" in report.verdict.summary
        assert report.samples.runs[0].status == "inconclusive"

    def test_softmax_output_under_sum_is_rounding_noise(self):
        spec = {"inputs": [{"name": "x", "shape": [16, 32]}],
                "layers": [linear(32, 32), {"type": "ReLU"}, linear(32, 32), {"type": "ReLU"},
                           linear(32, 8), {"type": "Softmax", "dim": -1}]}
        assert diagnose(spec, config={**QUICK, "loss": "sum"}).verdict.status == "inconclusive"
        assert diagnose(spec, config=QUICK).verdict.status == "healthy"

    def test_a_real_loss_of_signal_is_not_called_noise(self):
        # A sigmoid output saturated by a large bias really loses the signal, in any precision.
        spec = {"inputs": [{"name": "x", "shape": [16, 32]}],
                "layers": [linear(32, 32), {"type": "ReLU"}, linear(32, 32), {"type": "ReLU"},
                           linear(32, 8, bias_init={"scheme": "constant", "value": 12.5}),
                           {"type": "Sigmoid"}]}
        report = diagnose(spec, config=QUICK)
        evidence = report.verdict.evidence
        assert evidence.rounding_noise_ratio is not None
        assert evidence.rounding_noise_ratio_float64 == pytest.approx(
            evidence.rounding_noise_ratio, rel=0.01)
        assert "rounding_noise" not in fired(report)


class TestNoGradient:
    def test_a_constant_output_is_vanishing_by_a_named_rule(self):
        spec = {"inputs": [{"name": "x", "shape": [8, 16]}],
                "layers": [linear(16, 16), {"type": "ReLU"}, linear(16, 1),
                           {"type": "Softmax", "dim": -1}]}
        report = diagnose(spec, config=QUICK)
        assert report.verdict.status == "vanishing"
        assert fired(report) == ["no_gradient"]
        assert report.verdict.evidence.gradient_stops_at == "layers.3"
        assert "softmax over one unit" in report.verdict.summary
        assert all(p.grad_norm.max == 0 for layer in report.layers for p in layer.parameters)

    def test_a_dead_layer_is_named_before_the_generic_rule(self):
        spec = {"inputs": [{"name": "x", "shape": [16, 32]}],
                "layers": [linear(32, 32), {"type": "ReLU"},
                           linear(32, 32, bias_init={"scheme": "constant", "value": -50.0}),
                           {"type": "ReLU"}, linear(32, 4)]}
        report = diagnose(spec, config=QUICK)
        assert report.verdict.status == "vanishing"
        assert fired(report)[0] == "dead_layer"
        assert report.verdict.evidence.dead_layers_blocking == ["layers.3"]


class TestReadout:
    def test_zero_initialized_head_is_healthy_and_the_body_is_still_judged(self):
        report = diagnose(relu_mlp(10, head={"init": {"scheme": "constant", "value": 0.0}}),
                          config=QUICK)
        evidence = report.verdict.evidence
        assert report.verdict.status == "healthy", report.verdict.summary
        assert evidence.readout_layers == ["layers.20"]
        assert evidence.readout_scale == 0
        assert "zero-initialized" in report.verdict.summary
        assert 0.1 < evidence.backward_signal_ratio.median < 10
        head = next(layer for layer in report.layers if layer.name == "layers.20")
        assert head.parameters[0].grad_norm.median > 0  # its own gradient is not small
        assert head.parameters[0].weight_norm == 0  # and the model was given back unchanged
        assert any(cause.id == "small_readout" for cause in report.causes)

    def test_scaled_down_head_is_not_vanishing(self):
        report = diagnose(relu_mlp(10, head={"init": {"scheme": "normal", "std": 1e-4}}),
                          config=QUICK)
        assert report.verdict.status == "healthy", report.verdict.summary
        assert report.verdict.evidence.readout_scale < 0.01
        assert any(cause.id == "small_readout" for cause in report.causes)

    def test_the_hidden_profile_still_finds_a_vanishing_body(self):
        report = diagnose(relu_mlp(10, gain=0.3), config=QUICK)
        assert report.verdict.status == "vanishing"
        assert fired(report)[0] == "backward_signal_vanishing"


class LayerScaleBackbone(nn.Module):
    """A ConvNeXt/CaiT-style backbone exported for its features: pre-norm residual blocks
    ``x + γ·mlp(norm(x))`` with LayerScale γ at 1e-6 and no norm after the last block."""

    def __init__(self, dim: int = 32, blocks: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(16, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(blocks))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            for _ in range(blocks))
        self.gammas = nn.ParameterList(nn.Parameter(torch.full((dim,), 1e-6))
                                       for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for norm, mlp, gamma in zip(self.norms, self.mlps, self.gammas, strict=True):
            x = x + gamma * mlp(norm(x))
        return x


class ConvLayerScaleBackbone(nn.Module):
    """PoolFormer's shape: conv blocks ``x + γ·branch(norm(x))`` with γ of shape [C, 1, 1]."""

    def __init__(self, channels: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.norms = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(blocks))
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, 2 * channels, 1), nn.GELU(),
                          nn.Conv2d(2 * channels, channels, 1)) for _ in range(blocks))
        self.gammas = nn.ParameterList(nn.Parameter(torch.full((channels, 1, 1), 1e-5))
                                       for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for norm, branch, gamma in zip(self.norms, self.branches, self.gammas, strict=True):
            x = x + gamma * branch(norm(x))
        return x


class TestLayerScale:
    def test_a_gain_of_shape_c11_is_a_gain_not_a_readout(self):
        torch.manual_seed(0)
        report = diagnose(export_legacy(ConvLayerScaleBackbone().eval(),
                                        (torch.randn(2, 3, 8, 8),)), config=QUICK)
        assert report.verdict.status == "healthy", report.verdict.summary
        assert report.verdict.evidence.readout_layers == []
        assert report.verdict.evidence.closed_gate_layer is None

    @pytest.mark.parametrize("export", [export_legacy, export_dynamo])
    def test_a_backbone_ending_in_a_layerscale_branch_is_healthy(self, export):
        # Inside the last branch the gradient is γ = 1e-6 times the residual stream's; the
        # profile ends on the stream (at the gain), not in the branch (a 1e6 "explosion").
        torch.manual_seed(0)
        report = diagnose(export(LayerScaleBackbone().eval(), (torch.randn(4, 8, 16),)),
                          config=QUICK)
        evidence = report.verdict.evidence
        assert report.verdict.status == "healthy", report.verdict.summary
        assert evidence.readout_layers == []
        shallow = next(layer for layer in report.layers
                       if layer.name == evidence.shallowest_layer)
        assert shallow.op_type == "Mul", shallow.name
        assert 0.1 < evidence.backward_signal_ratio.median < 10


class ClassAttentionNet(nn.Module):
    """CaiT's shape: LayerScale'd patch blocks, then a class-attention block whose γ = 1e-5 is
    the only path from the patches to the head, which reads the class token alone."""

    def __init__(self, dim: int = 32, gamma: float = 1e-5) -> None:
        super().__init__()
        self.stem = nn.Linear(16, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(2))
        self.gammas = nn.ParameterList(nn.Parameter(torch.full((dim,), gamma)) for _ in range(3))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for norm, mlp, gamma in zip(self.norms, self.mlps, self.gammas, strict=False):
            x = x + gamma * mlp(norm(x))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        u = self.norms[2](torch.cat([cls, x], dim=1))
        scores = self.q(u[:, :1]) @ self.k(u).transpose(1, 2) / u.shape[-1] ** 0.5
        cls = cls + self.gammas[2] * self.o(scores.softmax(-1) @ self.v(u))
        return self.head(self.head_norm(cls[:, 0]))


class TestClosedGate:
    def test_class_attention_behind_a_near_zero_layerscale_is_not_vanishing(self):
        torch.manual_seed(0)
        report = diagnose(export_legacy(ClassAttentionNet().eval(), (torch.randn(4, 8, 16),)),
                          config=QUICK)
        evidence = report.verdict.evidence
        assert report.verdict.status == "healthy", report.verdict.summary
        assert evidence.closed_gate_scale == pytest.approx(1e-5, rel=1e-3)
        gate = next(layer for layer in report.layers if layer.name == evidence.closed_gate_layer)
        assert gate.op_type == "Mul"
        assert "gates every layer below it" in report.verdict.summary
        # The profile runs below the gate, over the patch stream.
        assert gate.depth < next(layer.depth for layer in report.layers
                                 if layer.name == evidence.shallowest_layer)

    def test_the_stack_below_the_gate_is_still_judged(self):
        # The same net with its patch stream a plain 8-layer sigmoid chain at 0.1x init.
        class Vanishing(ClassAttentionNet):
            def __init__(self) -> None:
                super().__init__()
                chain = []
                for _ in range(8):
                    layer = nn.Linear(16, 16)
                    nn.init.normal_(layer.weight, std=0.1 / 4)
                    chain += [layer, nn.Sigmoid()]
                self.stem = nn.Sequential(*chain, nn.Linear(16, 32))

        torch.manual_seed(0)
        report = diagnose(export_legacy(Vanishing().eval(), (torch.randn(4, 8, 16),)),
                          config=QUICK)
        assert report.verdict.evidence.closed_gate_layer is not None
        assert report.verdict.status == "vanishing", report.verdict.summary

    def test_a_gain_the_residual_stream_bypasses_is_no_gate(self):
        torch.manual_seed(0)
        report = diagnose(export_legacy(LayerScaleBackbone().eval(), (torch.randn(4, 8, 16),)),
                          config=QUICK)
        assert report.verdict.evidence.closed_gate_layer is None


class SqueezeExcitationResNet(nn.Module):
    """timm's SE-ResNet at its own init: blocks ``relu(x + se(bn2(conv2(relu(bn1(conv1(x)))))))``
    with ``bn2.weight = 0`` (zero_init_last) and the squeeze-excitation gate multiplying bn2's
    output, so every layer inside a residual branch gets exactly no gradient at init."""

    def __init__(self, channels: int = 16, blocks: int = 3, stem: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = stem or nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False),
                                          nn.BatchNorm2d(channels), nn.ReLU())
        self.branches = nn.ModuleList()
        self.gates = nn.ModuleList()
        for _ in range(blocks):
            last = nn.BatchNorm2d(channels)
            nn.init.zeros_(last.weight)
            self.branches.append(nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False), last))
            self.gates.append(nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels // 4, 1), nn.ReLU(),
                nn.Conv2d(channels // 4, channels, 1), nn.Sigmoid()))
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for branch, gate in zip(self.branches, self.gates, strict=True):
            y = branch(x)
            x = F.relu(x + y * gate(y))
        return self.head(x.mean(dim=(2, 3)))


class TestClosedBranch:
    def test_layers_behind_a_zero_init_gain_are_no_endpoint(self):
        # The profile's top used to be the last gate's Conv, whose gradient is exactly zero:
        # no ratio at all ("fewer than two hidden layers"), and healthy without evidence.
        torch.manual_seed(0)
        report = diagnose(export_legacy(SqueezeExcitationResNet().train(),
                                        (torch.randn(8, 3, 8, 8),), do_constant_folding=False),
                          config=QUICK)
        evidence = report.verdict.evidence
        assert report.verdict.status == "healthy", report.verdict.summary
        assert evidence.backward_signal_ratio is not None, report.verdict.summary
        assert 0.1 < evidence.backward_signal_ratio.median < 10
        by_name = {layer.name: layer for layer in report.layers}
        assert by_name[evidence.shallowest_layer].output_grad_norm.median > 0
        closed = [layer for layer in report.layers if layer.output_grad_norm is not None
                  and layer.output_grad_norm.median == 0]
        assert closed, "the branches should get no gradient at init"
        assert not any("vanishing" in layer.flags for layer in closed)

    def test_a_vanishing_stem_below_closed_branches_is_still_vanishing(self):
        chain: list[nn.Module] = []
        for _ in range(8):
            conv = nn.Conv2d(16 if chain else 3, 16, 3, padding=1)
            nn.init.normal_(conv.weight, std=0.1 / math.sqrt(16 * 9))
            chain += [conv, nn.Sigmoid()]
        torch.manual_seed(0)
        model = SqueezeExcitationResNet(stem=nn.Sequential(*chain)).train()
        report = diagnose(export_legacy(model, (torch.randn(8, 3, 8, 8),),
                                        do_constant_folding=False), config=QUICK)
        assert report.verdict.status == "vanishing", report.verdict.summary
        assert "backward_signal_vanishing" in fired(report)


class TokenModel(nn.Module):
    """A ViT-like stem: a class token at timm's std 1e-6 prepended to projected patches (pooled
    by their mean, so every token reaches the head without an attention layer)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.proj = nn.Linear(16, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.proj(x)], dim=1)
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.head(tokens.mean(dim=1))


class TestRelativeUpdate:
    @pytest.mark.parametrize("scale", [1e-6, 0.0])
    def test_a_class_token_is_read_like_a_table_not_judged_by_its_step(self, scale):
        # timm's class tokens start at std 1e-6, transformers' DeiT at exactly 0: one SGD step
        # sets the token (a row used at one position, read through LayerNorm), it does not
        # overwrite a weight that carries signal.
        torch.manual_seed(0)
        model = TokenModel().eval()
        with torch.no_grad():
            model.cls_token.mul_(scale / 1e-6)
        report = diagnose(export_legacy(model, (torch.randn(2, 6, 16),)), config=QUICK)
        evidence = report.verdict.evidence
        assert report.verdict.status == "healthy", report.verdict.summary
        assert evidence.max_relative_step_parameter != "cls_token"
        token = next(p for layer in report.layers for p in layer.parameters
                     if p.name == "cls_token")
        assert token.grad_norm.median > 0

    def test_the_learning_rate_is_what_the_rule_asks_about(self):
        spec = relu_mlp(4)
        calm = diagnose(spec, config={**QUICK, "learning_rate": 1e-2})
        assert calm.verdict.status == "healthy"
        step = calm.verdict.evidence.max_relative_step
        wild = diagnose(spec, config={**QUICK, "learning_rate": 2e-2 / step})
        assert wild.verdict.status == "exploding"
        assert fired(wild) == ["relative_update"]
        assert wild.verdict.evidence.max_relative_step == pytest.approx(2.0, rel=1e-6)
        lower = next(r for r in wild.remedies if r.id == "lower-learning-rate")
        assert lower.params["learning_rate"] < 2e-2 / step


def plain_mlp(activation: str, depth: int, std: float, *, readout_std: float | None = None,
              width: int = 32) -> dict:
    """``depth`` hidden Linear+activation layers at N(0, std²/width), zero biases, a readout."""
    hidden = {"scheme": "normal", "std": std / math.sqrt(width)}
    layers: list[dict] = []
    for _ in range(depth):
        layers += [linear(width, width, init=hidden), {"type": activation}]
    readout = {} if readout_std is None else {
        "init": {"scheme": "normal", "std": readout_std / math.sqrt(width)}}
    layers.append(linear(width, 4, **readout))
    return {"inputs": [{"name": "x", "shape": [32, width]}], "layers": layers}


class TestOptimizer:
    """config.optimizer: SGD is judged on gradient sizes, Adam on what its lr-sized steps do."""

    def test_learning_rate_defaults_to_the_optimizers_usual_rate(self):
        assert DiagnosisConfig().learning_rate == 1e-2
        assert DiagnosisConfig(optimizer="adam").learning_rate == 1e-3
        assert resolve_config({"optimizer": "adam", "learning_rate": 0.05}).learning_rate == 0.05
        assert resolve_config({"optimizer": "sgd"}).learning_rate == 1e-2

    def test_an_unknown_optimizer_is_refused_naming_the_field(self):
        with pytest.raises(InvalidConfigError) as caught:
            resolve_config({"optimizer": "rmsprop"})
        assert caught.value.context["field"] == "optimizer"

    def test_a_small_init_net_stalls_sgd_but_not_adam(self):
        # 8 tanh layers at 0.1× Glorot: every weight gradient ~5e-8, flat over depth (forward
        # and backward shrink alike). SGD's steps are that small; Adam's are lr-sized.
        spec = plain_mlp("Tanh", 8, 0.1 * 5 / 3)
        sgd = diagnose(spec, config=QUICK)
        adam = diagnose(spec, config={**QUICK, "optimizer": "adam"})
        assert sgd.verdict.status == "vanishing"
        assert fired(sgd) == ["backward_signal_vanishing"]
        assert adam.verdict.status == "healthy", adam.verdict.summary
        assert adam.config.learning_rate == 1e-3
        evidence = adam.verdict.evidence
        assert evidence.backward_signal_ratio.median < 1e-5  # tiny, and not judged under Adam
        assert 0.1 < evidence.weight_grad_l1_ratio.median < 10
        assert 1e-10 < evidence.first_weight_grad_rms < 1e-6
        assert [run.status for run in adam.samples.runs] == ["healthy"]
        assert "Adam's steps do not scale with the gradient's size" in adam.verdict.summary

    def test_gradients_far_below_adams_epsilon_stall_adam(self):
        spec = plain_mlp("ReLU", 10, 0.1 * math.sqrt(2))
        report = diagnose(spec, config={**QUICK, "optimizer": "adam"})
        assert report.verdict.status == "vanishing"
        assert fired(report) == ["adam_epsilon"]
        assert report.verdict.evidence.first_weight_grad_rms < 1e-10
        assert report.verdict.summary.startswith("Vanishing (adam_epsilon)")
        assert [run.status for run in report.samples.runs] == ["vanishing"]

    def test_a_profile_that_decays_with_depth_stalls_adam_too(self):
        # Sigmoid's slope is at most 1/4: the weight gradients themselves decay with depth, so
        # Adam's lr-sized steps at the first layer barely change the loss.
        report = diagnose(plain_mlp("Sigmoid", 8, 1.0), config={**QUICK, "optimizer": "adam"})
        evidence = report.verdict.evidence
        assert report.verdict.status == "vanishing"
        assert fired(report) == ["weight_gradient_vanishing"]
        assert evidence.weight_grad_l1_ratio.median < 1e-3
        assert evidence.first_weight_grad_rms > 1e-10  # above the floor: the profile decides
        assert evidence.first_weight_layer == "layers.0"
        assert report.verdict.summary.startswith("Vanishing (weight_gradient_vanishing)")

    def test_sgd_reports_the_adam_rules_without_firing_them(self):
        report = diagnose(plain_mlp("ReLU", 10, 0.1 * math.sqrt(2)), config=QUICK)
        rules = {rule.rule: rule for rule in report.verdict.evidence.rules}
        assert rules["adam_epsilon"].value < rules["adam_epsilon"].threshold
        assert not rules["adam_epsilon"].fired
        assert fired(report) == ["backward_signal_vanishing"]

    def test_an_output_scale_of_tens_is_a_slow_start_not_an_explosion(self):
        # One tanh layer and a readout at 30x Glorot: logits ~50x the inputs, an overconfident
        # softmax. Neither optimizer's first step overwrites a weight, and given the calibrated
        # budget both bring the loss down (docs/trainability.md, forward-scale blind test).
        spec = plain_mlp("Tanh", 1, 30 * 5 / 3, readout_std=30.0)
        sgd = diagnose(spec, config=QUICK)
        adam = diagnose(spec, config={**QUICK, "optimizer": "adam"})
        growth = adam.verdict.evidence.forward_growth.median
        assert 10 < growth < 100
        assert sgd.verdict.status == "healthy", sgd.verdict.summary
        assert adam.verdict.status == "healthy", adam.verdict.summary
        rule = next(r for r in adam.verdict.evidence.rules if r.rule == "forward_scale_exploding")
        assert rule.threshold == 1e3
        assert not rule.fired
        # The report still says what the user will see: a loss that starts far too high.
        cause = next(c for c in adam.causes if c.id == "large_output_scale")
        assert cause.evidence["forward_growth"] == pytest.approx(growth, rel=1e-3)
        assert "slow start" in cause.title
        assert cause.doc == "/guide/causes#large_output_scale"
        assert not any(c.id == "large_output_scale"
                       for c in diagnose(relu_mlp(4), config=QUICK).causes)
        # A user who wants slow starts caught lowers the threshold; the rule names it then.
        strict = diagnose(spec, config={**QUICK, "optimizer": "adam",
                                        "thresholds": {"adam_forward_growth_ratio": 10}})
        assert strict.verdict.status == "exploding"
        assert fired(strict) == ["forward_scale_exploding"]
        assert strict.verdict.summary.startswith("Exploding (forward_scale_exploding)")
        assert "beyond the forward-scale threshold" in next(
            c for c in strict.causes if c.id == "large_output_scale").title

    def test_adams_first_step_is_bounded_by_the_learning_rate_not_the_gradient(self):
        spec = relu_mlp(4)
        calm = diagnose(spec, config=QUICK)
        step = calm.verdict.evidence.max_relative_step
        # A rate that makes SGD's first step overwrite a weight ...
        wild_lr = 2e-2 / step
        assert diagnose(spec, config={**QUICK, "learning_rate": wild_lr}).verdict.status == \
            "exploding"
        # ... moves each element by about lr under Adam: relative to weights of RMS ~0.18, fine
        # as long as lr stays well below that.
        adam = diagnose(spec, config={**QUICK, "optimizer": "adam", "learning_rate": 1e-2})
        evidence = adam.verdict.evidence
        assert adam.verdict.status == "healthy", adam.verdict.summary
        weight = next(p for layer in adam.layers for p in layer.parameters
                      if p.name == evidence.max_relative_step_parameter)
        reference = math.sqrt(math.prod(weight.shape) / weight.shape[1])
        expected = 1e-2 * math.sqrt(math.prod(weight.shape)) / max(weight.weight_norm, reference)
        assert evidence.max_relative_step == pytest.approx(expected, rel=1e-3)


class TestForwardScale:
    def test_weights_three_times_the_fan_in_rule_explode_forward(self):
        report = diagnose(relu_mlp(10, gain=3.0), config=QUICK)
        assert report.verdict.status == "exploding"
        assert "forward_scale_exploding" in fired(report)
        assert report.verdict.evidence.forward_growth.median > 1e3
        assert report.verdict.summary.startswith("Exploding (forward_scale_exploding)")


def _conv_bn(bn: bool = True) -> nn.Module:
    layers: list[nn.Module] = []
    channels = 3
    for _ in range(3):
        layers += [nn.Conv2d(channels, 8, 3, padding=1, bias=not bn)]
        layers += [nn.BatchNorm2d(8)] if bn else []
        layers += [nn.ReLU()]
        channels = 8
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


class TestFoldedBatchNorm:
    ARGS = (torch.randn(2, 3, 8, 8),)

    @pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
    def test_default_exports_fold_batchnorm_and_are_inconclusive(self, exporter):
        torch.manual_seed(0)
        model = _conv_bn()
        data = (export_legacy(model, self.ARGS) if exporter == "legacy"
                else export_dynamo(model, self.ARGS))
        report = diagnose(data, config=QUICK)
        assert report.verdict.status == "inconclusive"
        assert fired(report) == ["folded_batchnorm"]
        assert len(report.verdict.evidence.folded_normalization) == 3
        assert "do_constant_folding=False" in report.verdict.summary
        assert "optimize=False" in report.verdict.summary
        assert any("folded BatchNorm" in note for note in report.notes)

    @pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
    def test_unfolded_exports_are_judged_and_carry_no_folding_note(self, exporter):
        torch.manual_seed(0)
        model = _conv_bn()
        data = (export_legacy(model, self.ARGS, do_constant_folding=False)
                if exporter == "legacy" else export_dynamo(model, self.ARGS, optimize=False))
        report = diagnose(data, config=QUICK)
        assert report.verdict.status == "healthy", report.verdict.summary
        assert report.verdict.evidence.folded_normalization == []
        assert not any("folded" in note for note in report.notes)

    def test_a_net_that_never_had_batchnorm_gets_no_folding_note(self):
        torch.manual_seed(0)
        report = diagnose(export_legacy(_conv_bn(bn=False), self.ARGS), config=QUICK)
        assert report.verdict.evidence.folded_normalization == []
        assert not any("folded" in note for note in report.notes)
        assert report.verdict.status == "healthy", report.verdict.summary

    def test_a_conv_weight_renamed_by_constant_folding_alone_is_not_folded_batchnorm(self):
        # transformers' LFM2 ShortConv: a depthwise conv whose [C, K] weight is viewed as
        # [C, 1, K]; constant folding writes the view as onnx::Conv_N, with no bias beside it.
        class ShortConv(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inp, self.out = nn.Linear(8, 8), nn.Linear(8, 4)
                self.weight = nn.Parameter(torch.randn(8, 3) * 0.3)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                h = self.inp(x).transpose(1, 2)
                h = F.conv1d(h, self.weight.view(8, 1, 3), padding=2, groups=8)[..., :x.shape[1]]
                return self.out(torch.relu(h.transpose(1, 2)))

        torch.manual_seed(0)
        data = export_legacy(ShortConv().eval(), (torch.randn(2, 6, 8),))
        assert b"onnx::Conv_" in data
        report = diagnose(data, config=QUICK)
        assert report.verdict.evidence.folded_normalization == []
        assert report.verdict.status == "healthy", report.verdict.summary


class TestTemporal:
    @staticmethod
    def _recurrent(cell: str, steps: int) -> dict:
        return {"inputs": [{"name": "seq", "shape": [8, steps, 2]}],
                "layers": [{"type": cell, "input_size": 2, "hidden_size": 32,
                            "batch_first": True}, linear(32, 1)]}

    def test_vanilla_rnn_whose_horizon_is_far_below_the_sequence_is_vanishing(self):
        report = diagnose(self._recurrent("RNN", 100), config=QUICK)
        assert report.verdict.status == "vanishing", report.verdict.summary
        assert fired(report) == ["temporal_vanishing"]
        assert report.temporal[0].effective_horizon < 50

    @pytest.mark.parametrize("cell", ["LSTM", "GRU"])
    def test_gated_cells_at_default_init_stay_healthy(self, cell):
        report = diagnose(self._recurrent(cell, 100), config=QUICK)
        assert report.verdict.status == "healthy", report.verdict.summary
        assert "temporal_vanishing" not in fired(report)

    @pytest.mark.parametrize("cell", ["LSTM", "GRU"])
    def test_gated_cells_are_judged_on_their_horizon_when_sgd_trains_on_the_last_step(self, cell):
        # The adding problem's setting: every dependency must cross the recurrence, and SGD
        # moves the forget gates by lr·g with g from the early steps ~1e-11 of g at the last.
        last_step = {**QUICK, "sequence_loss": "last_step"}
        report = diagnose(self._recurrent(cell, 50), config=last_step)
        assert report.verdict.status == "vanishing", report.verdict.summary
        assert fired(report) == ["temporal_vanishing"]
        assert "gated recurrent cell" in report.verdict.summary
        assert "chrono-init" in [remedy.id for remedy in report.remedies]
        # Adam moves every gate by about lr whatever g is: the same cell is not judged on it.
        adam = diagnose(self._recurrent(cell, 50), config={**last_step, "optimizer": "adam"})
        assert adam.verdict.status == "healthy", adam.verdict.summary

    def test_a_default_export_of_a_sequence_classifier_is_judged_with_last_step(self):
        # nn.LSTM at torch's init, Linear on the last step, torch.onnx.export's defaults.
        class Classifier(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = nn.LSTM(2, 32, batch_first=True)
                self.head = nn.Linear(32, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(self.rnn(x)[0][:, -1])

        torch.manual_seed(0)
        data = export_legacy(Classifier().eval(), (torch.randn(4, 100, 2),))
        assert diagnose(data, config=QUICK).verdict.status == "healthy"
        report = diagnose(data, config={**QUICK, "sequence_loss": "last_step"})
        assert report.verdict.status == "vanishing", report.verdict.summary
        assert fired(report) == ["temporal_vanishing"]
        assert report.temporal[0].effective_horizon < 50

    def test_chrono_initialized_gates_reach_the_sequence_start(self):
        report = diagnose(self._recurrent("LSTM", 50),
                          config={**QUICK, "sequence_loss": "last_step", "verify_remedies": True})
        chrono = next(remedy for remedy in report.remedies if remedy.id == "chrono-init")
        assert chrono.verified is not None
        assert chrono.verified.status_after == "healthy"
        assert chrono.verified.evidence_after["effective_horizon"] == 50

    def test_a_short_sequence_the_rnn_spans_is_healthy(self):
        report = diagnose(self._recurrent("RNN", 8), config=QUICK)
        assert report.verdict.status == "healthy", report.verdict.summary


class TestTransformerEndpoints:
    @staticmethod
    def _export(model: nn.Module, ids: torch.Tensor) -> bytes:
        class Hidden(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                return self.model(input_ids=input_ids).last_hidden_state

        return export_legacy(Hidden().eval(), (ids,), input_names=["input_ids"])

    def test_small_embeddings_below_a_layernorm_are_not_an_explosion(self):
        # The embedding output's scale is the table's (std 0.002 here); the LayerNorm after it
        # divides the gradient by it. A lookup is no step of the hidden stack's Jacobian chain.
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        config = transformers.BertConfig(hidden_size=64, num_hidden_layers=4,
                                         num_attention_heads=4, intermediate_size=128,
                                         vocab_size=100, initializer_range=0.002)
        data = self._export(transformers.BertModel(config), torch.randint(0, 100, (2, 12)))
        report = diagnose(data, config=QUICK)
        assert report.verdict.status == "healthy", report.verdict.summary
        assert "Gather" not in (report.verdict.evidence.deepest_layer or "")

    def test_a_normalized_hidden_state_has_no_readout(self):
        # GPT-2 scales every c_proj down by 1/√(2·n_layer): the last one is no "small head".
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_embd=64, n_layer=4, n_head=4, vocab_size=100,
                                         n_positions=32)
        data = self._export(transformers.GPT2Model(config), torch.randint(0, 100, (2, 12)))
        report = diagnose(data, config=QUICK)
        assert report.verdict.status == "healthy", report.verdict.summary
        assert report.verdict.evidence.readout_layers == []
        assert not any(cause.id == "small_readout" for cause in report.causes)

    @staticmethod
    def _marian(head: bool) -> bytes:
        # An encoder-decoder with no LayerNorm on its embeddings: the deepest parametric layers
        # are the first attention's projections, and the LM head adds a [1, V] zero bias.
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        config = transformers.MarianConfig(
            vocab_size=100, decoder_vocab_size=100, d_model=64, encoder_layers=4,
            decoder_layers=4, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=32,
            pad_token_id=1, eos_token_id=2, decoder_start_token_id=0)
        model = (transformers.MarianMTModel if head else transformers.MarianModel)(config)

        class Seq2Seq(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: torch.Tensor, decoder_ids: torch.Tensor) -> torch.Tensor:
                out = self.model(input_ids=input_ids, decoder_input_ids=decoder_ids)
                return out.logits if head else out.last_hidden_state

        ids = torch.randint(3, 100, (2, 12))
        return export_legacy(Seq2Seq().eval(), (ids, ids[:, :8]),
                             input_names=["input_ids", "decoder_ids"])

    def test_attention_queries_and_keys_are_not_profile_endpoints(self):
        # They reach the loss only through the softmax, nearly uniform at init: their gradient
        # (4e-6 of the output's here) measures its flatness, not the stack's Jacobians.
        report = diagnose(self._marian(head=False), config=QUICK)
        evidence = report.verdict.evidence
        assert report.verdict.status == "healthy", report.verdict.summary
        assert "v_proj" in evidence.deepest_layer
        query = next(layer for layer in report.layers if "q_proj/MatMul" in layer.name)
        assert "vanishing" not in query.flags

    def test_a_logits_bias_of_shape_1_v_is_not_the_readout(self):
        report = diagnose(self._marian(head=True), config=QUICK)
        evidence = report.verdict.evidence
        assert report.verdict.status == "healthy", report.verdict.summary
        assert [name.rsplit("/", 2)[-2] for name in evidence.readout_layers] == ["lm_head"]
        assert "zero-initialized" not in report.verdict.summary


class TestBatchStatistics:
    @staticmethod
    def _downsampling_bn(size: int) -> tuple[nn.Module, torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.Flatten(), nn.LazyLinear(4))
        x = torch.randn(2, 3, size, size)
        net(x)  # materialize the lazy head
        return net, x

    def test_batchnorm_over_few_values_per_channel_is_noted(self):
        # Batch 2 of 8x8 images: the second BatchNorm sees a 2x2 map, 8 values per channel.
        net, x = self._downsampling_bn(8)
        report = diagnose(net, inputs=x, config=QUICK)
        note = next(note for note in report.notes if "values per channel" in note)
        assert "only 8 values" in note
        assert "batch 2" in note
        unfolded = diagnose(export_legacy(net.eval(), (x,), do_constant_folding=False),
                            config=QUICK)
        assert any("only 8 values per channel" in note for note in unfolded.notes)

    def test_enough_values_per_channel_need_no_note(self):
        net, x = self._downsampling_bn(32)  # 2 x 8 x 8 = 128 values
        report = diagnose(net, inputs=x, config=QUICK)
        assert not any("values per channel" in note for note in report.notes)
