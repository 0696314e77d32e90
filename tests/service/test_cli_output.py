"""What `graddoctor diagnose` prints besides the report: no third-party warnings unless
--verbose, and progress messages that carry counts and an ETA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from service.commands._console import EtaEstimator
from tests.onnx_export import export_legacy

GRADDOCTOR = [sys.executable, "-m", "service.cli"]
ONNX2TORCH_WARNING = "non-tuple sequence for multidimensional indexing"


class _SlicedLinear(nn.Module):
    """Exports to Slice, whose onnx2torch converter indexes with a list (torch warns)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)[:, 2:6]


def test_third_party_warnings_reach_stderr_only_with_verbose(tmp_path: Path):
    torch.manual_seed(0)
    model = tmp_path / "sliced.onnx"
    model.write_bytes(export_legacy(_SlicedLinear().eval(), (torch.randn(4, 8),),
                                    input_names=["x"]))
    runs = {}
    for flags in ((), ("--verbose",)):
        runs[flags] = subprocess.run(
            [*GRADDOCTOR, "diagnose", str(model), "--samples", "1", *flags],
            capture_output=True, text=True, timeout=300, check=False)
        assert runs[flags].returncode == 0, runs[flags].stderr
        assert "Verdict: HEALTHY" in runs[flags].stdout
    assert runs[()].stderr == ""
    assert ONNX2TORCH_WARNING in runs[("--verbose",)].stderr
    assert "UserWarning" in runs[("--verbose",)].stderr


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_is_estimated_from_the_pace_of_the_units_done():
    clock = _Clock()
    eta = EtaEstimator(clock)
    assert eta("loading the model") == "loading the model"
    assert eta("probing sample 1/3") == "probing sample 1/3"  # no pace known yet
    clock.now += 4.0
    assert eta("probing sample 2/3") == "probing sample 2/3 · ETA 8 s"  # 2 left at 4 s each
    clock.now += 6.0
    assert eta("probing sample 3/3") == "probing sample 3/3 · ETA 5 s"  # (10 s / 2) × 1 left
    # a new stage restarts the clock
    assert eta("verifying remedy 1/4 (reinitialize)") == "verifying remedy 1/4 (reinitialize)"
    clock.now += 50.0
    assert eta("verifying remedy 2/4 (replace-activation)") == \
        "verifying remedy 2/4 (replace-activation) · ETA 2 min 30 s"
