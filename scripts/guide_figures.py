"""Draw the guide's figures from real GradDoctor diagnoses (docs/guide/figures/*.svg).

Every figure is a plot GradDoctor itself renders (diagnostics.render.plot) of a diagnosis of a
small PyTorch module built here with a fixed seed, so the guide shows exactly what a user sees.
Run from the repository root after changing the models, the probe or the plots:

    python scripts/guide_figures.py

and commit the SVGs it writes (each a few tens of kB).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from diagnostics import diagnose
from diagnostics.render.plot import gradient_flow_svg, temporal_svg

OUT = Path(__file__).resolve().parents[1] / "docs" / "guide" / "figures"
CONFIG = {"samples": 3, "seed": 0, "verify_remedies": False}


def mlp(depth: int, width: int, activation: type[nn.Module], std: float | None = None) -> nn.Module:
    """``depth`` Linear layers of ``width`` units, each followed by ``activation``."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        if std is not None:
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)
        layers += [linear, activation()]
    return nn.Sequential(*layers)


class Recurrent(nn.Module):
    """A one-layer recurrent cell over a sequence, with a Linear readout on every step."""

    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.cell = cell(8, 32, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, 8) -> (N, T, 4)."""
        return self.head(self.cell(x)[0])


def with_forget_bias(lstm: nn.LSTM, value: float) -> None:
    """Forget-gate bias ``value`` (gates in torch's order: input, forget, cell, output)."""
    hidden = lstm.hidden_size
    with torch.no_grad():
        lstm.bias_ih_l0[hidden:2 * hidden].fill_(value)
        lstm.bias_hh_l0[hidden:2 * hidden].zero_()


def flow(name: str, module: nn.Module, inputs: torch.Tensor) -> str:
    report = diagnose(module, inputs=inputs, config=CONFIG)
    (OUT / f"{name}.svg").write_text(gradient_flow_svg(report.layers))
    return f"{name}: {report.verdict.status} - {report.verdict.summary}"


def main() -> int:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    x = torch.randn(64, 128)
    lines = [
        flow("sigmoid-mlp", mlp(12, 128, nn.Sigmoid), x),
        flow("relu-mlp-he", mlp(12, 128, nn.ReLU, std=(2 / 128) ** 0.5), x),
        flow("relu-mlp-large", mlp(12, 128, nn.ReLU, std=3 * (2 / 128) ** 0.5), x),
    ]
    sequence = torch.randn(8, 60, 8)
    profiles = []
    for label, cell, forget_bias in (("tanh RNN", nn.RNN, None), ("LSTM", nn.LSTM, None),
                                     ("LSTM, forget bias 1", nn.LSTM, 1.0)):
        torch.manual_seed(0)
        model = Recurrent(cell)
        if forget_bias is not None:
            with_forget_bias(model.cell, forget_bias)
        report = diagnose(model, inputs=sequence, config=CONFIG)
        profile = report.temporal[0]
        profiles.append(profile.model_copy(update={"input": label}))
        lines.append(f"{label}: {profile.status}, horizon {profile.effective_horizon}, "
                     f"first/last {profile.first_to_last_ratio:.3g}")
    (OUT / "temporal-rnn-lstm.svg").write_text(temporal_svg(profiles))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
