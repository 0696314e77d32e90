"""The probe against plain autograd, and its promise to leave the model as it found it."""

import pytest
import torch
from torch import nn

from diagnostics import diagnose
from diagnostics.config import DiagnosisConfig, Loss
from diagnostics.errors import ProbeError
from diagnostics.inputs import SampleBatch
from diagnostics.probe import compute_loss, probe_mode, run_sample
from diagnostics.report import Status
from tests.sequential import wrap


def _model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    return wrap(net, (5, 6))


def test_gradients_match_plain_autograd():
    model = _model()
    x = torch.randn(5, 6)
    config = DiagnosisConfig()
    with probe_mode(model.module, config.norm_stats):
        observed = run_sample(model, SampleBatch(0, (x,)), config)

    reference = _model().module
    reference.eval()
    reference[1].train()
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out, key=name: outputs.__setitem__(key, out))
             for name, m in reference.named_children()]
    y = reference(x)
    for out in outputs.values():
        out.retain_grad()
    compute_loss(y, config.loss, 0).backward()
    for hook in hooks:
        hook.remove()

    for index, layer in enumerate(model.layers):
        expected = outputs[layer.module_path].grad.double().norm().item()
        measured = observed.layers[index].output_grad_norm
        assert measured == pytest.approx(expected, rel=1e-5), layer.name
    for name, param in reference.named_parameters():
        assert observed.parameters[name].norm == pytest.approx(param.grad.double().norm().item(),
                                                               rel=1e-5), name


def test_probe_restores_modes_hooks_grads_and_running_stats():
    model = _model()
    model.module.train()
    bn = model.module[1]
    before = bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)
    config = DiagnosisConfig()
    with probe_mode(model.module, config.norm_stats):
        run_sample(model, SampleBatch(0, (torch.randn(5, 6),)), config)
    assert all(m.training for m in model.module.modules())
    assert torch.equal(bn.running_mean, before[0])
    assert torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.module.modules())
    params = list(model.module.parameters())
    assert all(p.grad is None for p in params)
    assert not any(p._post_accumulate_grad_hooks for p in params)


def test_probe_restores_state_when_the_forward_pass_raises():
    model = _model()
    model.module.train()
    config = DiagnosisConfig()
    from diagnostics.errors import ProbeError

    with pytest.raises(ProbeError, match="forward pass failed"), \
            probe_mode(model.module, config.norm_stats):
        run_sample(model, SampleBatch(0, (torch.randn(5, 7),)), config)
    assert all(m.training for m in model.module.modules())
    assert all(not m._forward_hooks for m in model.module.modules())


def test_huge_outputs_do_not_fake_a_nonfinite_loss():
    y = torch.full((4, 4), 1e25)  # y² overflows float32, not float64
    loss = compute_loss(y, DiagnosisConfig().loss, 0)
    assert torch.isfinite(loss)


def test_a_last_step_loss_reads_only_the_last_output_step():
    # sequence_loss 'last_step': the probe's gradients are those of the user's loss on out[:, -1].
    from diagnostics.loading.nn_module import load_module
    from diagnostics.temporal import find_target, last_step_view

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(3, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0])  # [batch, steps, 2]

    torch.manual_seed(0)
    net, x = Tagger(), torch.randn(4, 6, 3)
    model, _ = load_module(net, x)
    config = DiagnosisConfig()
    target = find_target(model)
    assert target is not None
    with probe_mode(model.module, config.norm_stats), \
            last_step_view(model.module, target) as loss_reads:
        last_step = run_sample(model, SampleBatch(0, (x,)), config, loss_reads)
    with probe_mode(model.module, config.norm_stats):
        every_step = run_sample(model, SampleBatch(0, (x,)), config)

    compute_loss(net(x)[:, -1], config.loss, 0).backward()
    for name, param in net.named_parameters():
        expected = param.grad.double().norm().item()
        assert last_step.parameters[name].norm == pytest.approx(expected, rel=1e-5), name
    head = "head.weight"
    assert every_step.parameters[head].norm != pytest.approx(last_step.parameters[head].norm,
                                                             rel=1e-2)


def test_an_empty_output_is_left_out_of_the_loss() -> None:
    # A detector keeps no boxes at random weights: its boxes output is [0, 4]. Averaging it
    # would give 0/0, a NaN loss, and an "exploding" verdict for a model that is fine.
    outputs = (torch.zeros(0, 4), torch.ones(3, 2))
    for loss in Loss:
        value = compute_loss(outputs, loss, 0)
        assert torch.isfinite(value)
        assert float(value) == float(compute_loss(outputs[1], loss, 0))


def test_a_model_whose_every_output_is_empty_is_refused_with_the_reason() -> None:
    with pytest.raises(ProbeError, match="every floating-point output is empty"):
        compute_loss((torch.zeros(0, 4), torch.zeros(0)), DiagnosisConfig().loss, 0)


def test_a_model_with_an_empty_output_is_judged_on_the_others() -> None:
    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            scores = self.head(self.body(x))
            return scores[scores[:, 0] > 1e9], scores  # no "detection" passes the threshold

    torch.manual_seed(0)
    report = diagnose(Detector(), inputs=torch.randn(8, 4), config={"verify_remedies": False})
    assert report.verdict.status is Status.HEALTHY, report.verdict.summary


def test_a_batchnorm_seeing_one_value_per_channel_uses_its_running_statistics() -> None:
    # SSDlite's extra layers exported at batch 1 reach a 1x1 map: batch statistics of one value
    # are undefined (torch refuses them); that call runs on the running statistics instead.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8, 2))
    report = diagnose(net, inputs=torch.randn(1, 3, 8, 8), config={"verify_remedies": False})
    assert report.verdict.status is not Status.EXPLODING
    assert report.samples.runs[0].loss is not None
    running = net[5].running_mean.clone()
    with probe_mode(net, DiagnosisConfig().norm_stats):
        net(torch.randn(1, 3, 8, 8))
        assert net[1].training  # the 8x8 map still normalizes over its batch
    assert torch.equal(net[5].running_mean, running)
