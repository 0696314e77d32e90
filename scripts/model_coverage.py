"""Model coverage table: which model families convert, run backward and match native gradients.

For every family of ``tests/model_zoo.py`` and both PyTorch exporters, export (random weights,
nothing downloaded), load with GradDoctor's ONNX loader, run forward + backward, and compare
each initializer's gradient norm with the native module's (rtol 1e-4, float32); recurrent
families also get their temporal profile from ``diagnose``. A second table does the same for
the committed files of other exporters (``tests/fixtures/exporters``: Keras/tf2onnx, jax2onnx,
skl2onnx, optimum) against their independent references (``tests/exporter_fixtures.py``).
Writes the Markdown to ``docs/model-coverage.md`` (the README embeds it) and prints it.

Usage::

    .venv/bin/python scripts/model_coverage.py                    # all families, both exporters
    .venv/bin/python scripts/model_coverage.py --families bert,gpt2 --output -   # print only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub, whatever the zoo does

from diagnostics import diagnose  # noqa: E402
from diagnostics.config import NormStats  # noqa: E402
from diagnostics.errors import DiagnosticsError  # noqa: E402
from diagnostics.loading.onnx.loader import load_onnx  # noqa: E402
from diagnostics.probe import probe_mode  # noqa: E402
from tests.exporter_fixtures import (  # noqa: E402
    FILES,
    expected_grad_norms,
    model_bytes,
    reference_output,
    sample_args,
)
from tests.model_zoo import (  # noqa: E402
    DYNAMO_OPSET,
    EXPORTERS,
    FAMILIES,
    LEGACY_OPSET,
    check_gradients,
    export,
    has_batch_norm,
    missing_converters,
)
from tests.onnx_export import loaded_grad_norms  # noqa: E402

YES, NO, SKIP = "✅", "❌", "–"


@dataclass
class Row:
    """One family × exporter result; ``None`` marks a stage not reached."""

    family: str
    exporter: str
    converts: bool | None = None
    backward: bool | None = None
    gradients: bool | None = None
    detail: str = ""
    seconds: float = 0.0
    temporal: str = SKIP


RECURRENT_FAMILIES = {"lstm", "bilstm", "gru", "rnn"}
FILE_RTOL = 1e-3  # float32 recurrences against another framework's float32 autodiff


def _temporal(data: bytes, config: dict) -> str:
    """Steps of the temporal profile ``diagnose`` reports, or why there is none."""
    try:
        report = diagnose(data, config={"samples": 1, "verify_remedies": False, **config})
    except Exception as exc:
        return f"{NO} ({_one_line(exc, 60)})"
    if not report.temporal:
        return NO
    profile = report.temporal[0]
    return f"{YES} {len(profile.grad_norms)} steps, horizon {profile.effective_horizon}"


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, DiagnosticsError):
        text = exc.detail
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def measure(family, exporter: str) -> Row:
    """Export, load, backward and compare one family with one exporter; never raises."""
    row = Row(family.title, exporter)
    started = time.perf_counter()
    try:
        model = family.build()
        with contextlib.redirect_stderr(io.StringIO()):
            data = export(model, exporter)
    except Exception as exc:  # an exporter failure is a result for the table
        row.detail = f"export fails ({_one_line(exc)})"
        row.seconds = time.perf_counter() - started
        return row
    missing = missing_converters(data)
    try:
        loaded = load_onnx(data, name=f"{family.name}-{exporter}.onnx")
        row.converts = True
    except Exception as exc:
        row.converts = False
        blocked = f"blocked by {', '.join(missing)}" if missing else "conversion fails"
        row.detail = f"{blocked} ({_one_line(exc)})"
    if row.converts:
        try:
            loaded_grad_norms(loaded, model.args)
            row.backward = True
        except Exception as exc:
            row.backward = False
            row.detail = f"forward/backward fails ({_one_line(exc)})"
    if row.backward:
        check = check_gradients(model, loaded, exporter)
        row.gradients, row.detail = check.ok, check.describe()
        if check.ok and has_batch_norm(model.module):
            with probe_mode(model.module, NormStats.BATCH), \
                    probe_mode(loaded.module, NormStats.BATCH):
                check = check_gradients(model, loaded, exporter)
            row.gradients = check.ok
            row.detail = (f"{check.describe()} (eval and batch statistics)" if check.ok
                          else f"batch statistics: {check.describe()}")
    if row.converts and family.name in RECURRENT_FAMILIES:
        shapes = {name: list(arg.shape) for name, arg in zip(model.input_names, model.args,
                                                             strict=True)}
        row.temporal = _temporal(data, {"input_shapes": shapes})
    row.seconds = time.perf_counter() - started
    return row


def measure_file(name: str) -> Row:
    """Load one committed file of another exporter and compare with its reference."""
    exporter, title = FILES[name]
    row = Row(title, exporter)
    started = time.perf_counter()
    data = model_bytes(name)
    try:
        loaded = load_onnx(data, name=f"{name}.onnx")
        row.converts = True
    except Exception as exc:
        row.converts = False
        row.detail = f"conversion fails ({_one_line(exc)})"
    if row.converts:
        try:
            args = sample_args(name, loaded)
            got = loaded_grad_norms(loaded, args)
            row.backward = True
        except Exception as exc:
            row.backward = False
            row.detail = f"forward/backward fails ({_one_line(exc)})"
    if row.backward:
        with torch.no_grad():
            output = loaded.module(*args)
        output = output if isinstance(output, torch.Tensor) else output[0]
        forward = float(np.abs(output.numpy() - reference_output(name)).max())
        want = expected_grad_norms(name)
        worst = max(abs(got.get(key, math.inf) - value) / max(value, 1e-30)
                    for key, value in want.items())
        row.gradients = set(want) <= set(got) and worst <= FILE_RTOL
        extra = sorted(set(got) - set(want))
        row.detail = (f"{len(want)} of {len(got)} weights compared, worst relative deviation "
                      f"{worst:.1e}; forward max |Δ| {forward:.1e}"
                      + (f"; {len(extra)} constant-valued weights (LayerNorm ones, zero biases) "
                         f"have no unique native match and are not compared" if extra else ""))
        notes = [note.split(":")[0].split(";")[0] for note in loaded.notes
                 if "left out" in note or "value_info" in note or "tied weights" in note]
        if notes:
            row.detail += "; " + "; ".join(note.rstrip(".") for note in notes)
    if row.converts and any(layer.op_type in {"LSTM", "GRU", "RNN", "Loop"}
                            for layer in loaded.layers):
        row.temporal = _temporal(data, {})
    row.seconds = time.perf_counter() - started
    return row


def _cell(value: bool | None) -> str:
    return SKIP if value is None else (YES if value else NO)


def render(rows: list[Row], file_rows: list[Row] | None = None) -> str:
    """The Markdown page: how the table was made, the table, and a summary."""
    versions = ", ".join(f"{package} {metadata.version(package)}" for package in
                         ("torch", "torchvision", "transformers", "onnx", "onnx2torch"))
    lines = [
        "# Model coverage",
        "",
        "Generated by `scripts/model_coverage.py`; do not edit by hand. Each family is built with "
        "random weights (no downloads), exported with both PyTorch exporters, loaded by "
        "GradDoctor, run forward and backward under the probe's loss (mean of squares of the "
        "float outputs), and every initializer's gradient norm is compared with the native "
        "module's `param.grad` norm (rtol 1e-4, float32; a tied weight is stored once and "
        "gets the total gradient), in eval mode and, for BatchNorm nets, with batch statistics "
        "as the probe runs them. The same checks run in "
        "`tests/diagnostics/test_model_families.py`.",
        "",
        f"Exporters: **legacy** = `torch.onnx.export(dynamo=False, opset_version={LEGACY_OPSET},"
        f" do_constant_folding=False)`; **dynamo** = `torch.onnx.export(dynamo=True, "
        f"opset_version={DYNAMO_OPSET}, optimize=False)`. Without those flags exporters fold "
        "BatchNorm into the preceding Conv and rename transformed weights; GradDoctor still "
        "loads such files and says so in the report's notes.",
        "",
        f"Versions: {versions}.",
        "",
        "| Model family | Exporter | Converts | Backward runs | Gradients match | "
        "Temporal profile | Details |",
        "|---|---|:-:|:-:|:-:|:-:|---|",
    ]
    lines += [_line(row) for row in rows]
    passed = sum(1 for row in rows if row.gradients)
    lines += ["", f"{passed} of {len(rows)} family × exporter pairs convert and match native "
              "gradients.", ""]
    if file_rows:
        lines += [
            "## Other exporters",
            "",
            "Files made by `tests/fixtures/exporters/make_fixtures.py` (Keras, JAX, "
            "scikit-learn) and `make_optimum_fixtures.py` (optimum) in venvs of their own, "
            "committed with their references: the framework's own forward output and gradients "
            "(TensorFlow's GradientTape, `jax.grad`, PyTorch for optimum's ALBERT) or, for "
            "scikit-learn, its MLP formula from the fitted weights in float64. Each "
            "initializer's gradient norm is compared with the weight(s) it stores (rtol "
            f"{FILE_RTOL:g}); `tests/diagnostics/test_exporters.py` runs the same checks.",
            "",
            "| Model | Exporter | Converts | Backward runs | Gradients match | "
            "Temporal profile | Details |",
            "|---|---|:-:|:-:|:-:|:-:|---|",
            *[_line(row) for row in file_rows],
            "",
            f"{sum(1 for row in file_rows if row.gradients)} of {len(file_rows)} files convert "
            "and match their reference gradients.",
            "",
        ]
    return "\n".join(lines)


def _line(row: Row) -> str:
    detail = row.detail.replace("|", "\\|")
    return (f"| {row.family} | {row.exporter} | {_cell(row.converts)} | {_cell(row.backward)} | "
            f"{_cell(row.gradients)} | {row.temporal} | {detail} |")


def main(argv: list[str] | None = None) -> int:
    """Run the table; exit status 0 even when rows fail (the table is the result)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", help="comma-separated family names (default: all)")
    parser.add_argument("--exporters", default=",".join(EXPORTERS),
                        help="comma-separated: legacy,dynamo")
    parser.add_argument("--output", default=str(ROOT / "docs" / "model-coverage.md"),
                        help="Markdown file to write, or - to print only")
    parser.add_argument("--no-files", action="store_true",
                        help="skip the other exporters' committed files")
    args = parser.parse_args(argv)
    # onnx2torch's Slice indexes with a list (deprecated, still correct): noise in the log.
    warnings.filterwarnings("ignore", category=UserWarning, module="onnx2torch")
    wanted = set(args.families.split(",")) if args.families else None
    families = [family for family in FAMILIES if wanted is None or family.name in wanted]
    if wanted and len(families) != len(wanted):
        known = ", ".join(family.name for family in FAMILIES)
        parser.error(f"unknown family in {args.families!r}; known: {known}")
    rows = []
    for family in families:
        for exporter in args.exporters.split(","):
            try:
                rows.append(measure(family, exporter))
            except Exception:  # a bug in this script: show it, keep the other rows
                traceback.print_exc()
                rows.append(Row(family.title, exporter, detail="coverage script error"))
            print(f"{family.name:>20} {exporter:<7} {rows[-1].seconds:6.1f}s "
                  f"{_cell(rows[-1].gradients)} {rows[-1].detail}", file=sys.stderr)
    file_rows = []
    if not args.no_files:
        for name in FILES:
            file_rows.append(measure_file(name))
            print(f"{name:>28} {file_rows[-1].seconds:6.1f}s {_cell(file_rows[-1].gradients)} "
                  f"{file_rows[-1].detail}", file=sys.stderr)
    page = render(rows, file_rows)
    if args.output != "-":
        Path(args.output).write_text(page, encoding="utf-8")
    print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
