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
    reports = []
    for cell in (nn.RNN, nn.LSTM):
        torch.manual_seed(0)
        report = diagnose(Recurrent(cell), inputs=sequence, config=CONFIG)
        reports.append(report)
        lines.append(f"{cell.__name__}: {report.temporal[0].status}, horizon "
                     f"{report.temporal[0].effective_horizon}")
    profiles = [r.temporal[0].model_copy(update={"input": f"{name} cell"})
                for name, r in zip(("tanh RNN", "LSTM"), reports, strict=True)]
    (OUT / "temporal-rnn-lstm.svg").write_text(temporal_svg(profiles))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
