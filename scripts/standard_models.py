"""Standard-architecture survey: what the default verdict says about models people actually have.

For every model of ``tests/standard_models.py`` (torchvision, transformers, timm, LSTM/GRU at
their library's own initialization) and every exporter (legacy and dynamo, each with its
DEFAULT settings; dynamo also with ``external_data=False``), export to a file and run
``diagnostics.diagnose(path)`` with the default config (``samples`` 1, no remedy
verification: the verdict is what is surveyed). Prints a Markdown table and writes it into the
generated section of ``docs/standard-models.md``; ``--json`` keeps every row's details (rules,
endpoints of the backward-signal ratio, notes, the graph's BatchNorm/Conv counts) for analysis.

Usage::

    .venv/bin/python scripts/standard_models.py                           # everything
    .venv/bin/python scripts/standard_models.py --models vit,bert_hidden --output -
    .venv/bin/python scripts/standard_models.py --losses default,cross_entropy,sum --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx  # noqa: E402
import torch  # noqa: E402

from diagnostics import diagnose  # noqa: E402
from diagnostics.loading.onnx.rewrites import GENERATED_NAME  # noqa: E402
from tests.standard_models import (  # noqa: E402
    BY_NAME,
    EXPORTERS,
    MODELS,
    UNFOLDED_EXPORTERS,
    export_to,
)

BEGIN, END = "<!-- BEGIN GENERATED: scripts/standard_models.py -->", "<!-- END GENERATED -->"


@dataclass
class Row:
    """One model x exporter x loss; ``status`` is ``error`` when export or diagnosis failed."""

    model: str
    exporter: str
    loss: str
    status: str = "error"
    summary: str = ""
    fired: list[str] = field(default_factory=list)
    ratio: float | None = None
    deepest: str | None = None
    shallowest: str | None = None
    max_gw: float | None = None
    max_gw_parameter: str | None = None
    max_gw_weight_norm: float | None = None
    loss_value: float | None = None
    graph: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    top_grads: list[dict[str, Any]] = field(default_factory=list)
    export_s: float | None = None
    load_s: float | None = None
    probe_s: float | None = None
    total_s: float | None = None
    error: str = ""


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def graph_facts(path: Path) -> dict[str, Any]:
    """Counts that show whether BatchNorm was folded: BN/Conv nodes, generated weight names."""
    model = onnx.load(str(path), load_external_data=False)
    ops = [node.op_type for node in model.graph.node]
    names = [init.name for init in model.graph.initializer]
    generated = [name for name in names if GENERATED_NAME.match(name)]
    return {
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                      None),
        "batchnorm_nodes": ops.count("BatchNormalization"),
        "conv_nodes": ops.count("Conv"),
        "initializers": len(names),
        "generated_names": len(generated),
        "generated_example": generated[0] if generated else None,
        "external_data": any(init.data_location == onnx.TensorProto.EXTERNAL
                             for init in model.graph.initializer),
    }


def _weight_norm(report, parameter: str | None) -> float | None:
    for layer in report.layers:
        for param in layer.parameters:
            if param.name == parameter:
                return param.weight_norm
    return None


def _top_grads(report, count: int = 3) -> list[dict[str, Any]]:
    """The parameters with the largest ‖g‖/‖W‖ (where the relative-update rule looks)."""
    found = []
    for layer in report.layers:
        for param in layer.parameters:
            value = param.grad_to_weight.median
            if value is not None:
                found.append({"parameter": param.name, "layer": layer.name,
                              "grad_to_weight": value, "weight_norm": param.weight_norm,
                              "grad_norm": param.grad_norm.median, "shape": param.shape})
    return sorted(found, key=lambda item: -item["grad_to_weight"])[:count]


def fill_from_report(row: Row, report) -> None:
    """Copy what the survey shows out of a :class:`diagnostics.report.Report`."""
    verdict, evidence = report.verdict, report.verdict.evidence
    row.status, row.summary = str(verdict.status), verdict.summary
    row.rules = [check.model_dump(mode="json") for check in evidence.rules]
    row.fired = [check.rule for check in evidence.rules if check.fired]
    ratio = evidence.backward_signal_ratio
    row.ratio = ratio.median if ratio is not None else None
    row.deepest, row.shallowest = evidence.deepest_layer, evidence.shallowest_layer
    row.max_gw, row.max_gw_parameter = (evidence.max_grad_to_weight,
                                        evidence.max_grad_to_weight_parameter)
    row.max_gw_weight_norm = _weight_norm(report, row.max_gw_parameter)
    row.top_grads = _top_grads(report)
    row.loss_value = report.samples.runs[0].loss if report.samples.runs else None
    row.notes = list(report.notes)
    row.causes = [cause.id for cause in report.causes]
    row.load_s, row.probe_s = report.timings.load_s, report.timings.probe_s
    row.total_s = report.timings.total_s


def survey(names: list[str], exporters: list[str], losses: list[str], cache: Path,  # noqa: C901
           progress, *, reuse: bool = False) -> list[Row]:
    """Export each model with each exporter (once, into ``cache``) and diagnose each file.

    ``reuse``: keep a file already in ``cache`` (from an earlier run) instead of exporting again.
    """
    rows = []
    for name in names:
        entry = BY_NAME[name]
        try:
            built = entry.build()
        except Exception as exc:  # a builder failure is a table row, not a crash
            rows += [Row(name, exporter, loss, error="build: " + _one_line(exc))
                     for exporter in exporters for loss in losses]
            continue
        for exporter in exporters:
            if exporter in UNFOLDED_EXPORTERS and not entry.has_batch_norm:
                continue  # nothing to fold: the same graph as the default export
            path = cache / f"{name}.{exporter}.onnx"
            clock = time.perf_counter()
            try:
                if not (reuse and path.exists()):
                    export_to(built, exporter, path)
                facts, export_s, failure = graph_facts(path), time.perf_counter() - clock, ""
            except Exception as exc:
                facts, export_s, failure = {}, time.perf_counter() - clock, _one_line(exc)
            for loss in losses:
                row = Row(name, exporter, loss, graph=facts, export_s=export_s)
                if failure:
                    row.error = "export: " + failure
                else:
                    config: dict[str, Any] = {"samples": 1, "verify_remedies": False}
                    if loss != "default":
                        config["loss"] = loss
                    try:
                        fill_from_report(row, diagnose(path, config=config))
                    except Exception as exc:
                        row.error = "diagnose: " + _one_line(exc)
                        if os.environ.get("GRADDOCTOR_SURVEY_TRACEBACK"):
                            traceback.print_exc()
                progress(row)
                rows.append(row)
        del built
    return rows


def _num(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.1e}"


def _fold(row: Row) -> str:
    facts = row.graph
    if not facts:
        return "–"
    if not facts.get("conv_nodes"):
        bn = "no Conv"
    elif facts.get("batchnorm_nodes"):
        bn = f"{facts['batchnorm_nodes']} BN kept"
    else:
        bn = "no BN node"
    return f"{bn}; {facts.get('generated_names', 0)} generated names"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _revision() -> str:
    """The GradDoctor commit surveyed (``+`` where the work tree differs from it)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+" if git("status", "--porcelain", "--untracked-files=no") else "")


def render(rows: list[Row]) -> str:
    """The generated section: one table of every row, then each non-healthy row's summary."""
    versions = ", ".join(f"{package} {metadata.version(package)}" for package in
                         ("torch", "torchvision", "transformers", "timm", "onnx", "onnxscript"))
    lines = [
        f"Generated by `scripts/standard_models.py` on GradDoctor {_revision()} ({versions}); "
        "samples 1, "
        "verify_remedies off, otherwise the default config unless the loss column says so.",
        "",
        "| model | exporter | loss | status | fired rules | signal ratio (deepest / shallowest) "
        "| max ‖g‖/‖W‖ (parameter, ‖W‖) | graph | load s | probe s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        status = row.status if not row.error else f"**{row.error.split(':')[0]} error**"
        ratio = (f"{_num(row.ratio)} ({row.deepest} / {row.shallowest})"
                 if row.ratio is not None else "–")
        gw = (f"{_num(row.max_gw)} ({row.max_gw_parameter}, {_num(row.max_gw_weight_norm)})"
              if row.max_gw is not None else "–")
        lines.append("| " + " | ".join(_cell(cell) for cell in (
            row.model, row.exporter, row.loss, status, ", ".join(row.fired) or "–", ratio, gw,
            _fold(row), _num(row.load_s), _num(row.probe_s))) + " |")
    lines += ["", "### Summaries and errors", ""]
    for row in rows:
        if row.error:
            lines.append(f"- **{row.model} / {row.exporter} / {row.loss}**: {_cell(row.error)}")
        elif row.status != "healthy":
            lines.append(f"- **{row.model} / {row.exporter} / {row.loss}** ({row.status}): "
                         f"{_cell(row.summary)}")
    titles = "\n".join(f"- `{model.name}`: {model.title}" for model in MODELS)
    return "\n".join(lines) + "\n\n### Models\n\n" + titles + "\n"


def write_page(path: Path, section: str) -> None:
    """Replace the generated section of ``path`` (or create the page around it)."""
    text = path.read_text(encoding="utf-8") if path.exists() else (
        "# Standard architectures\n\n" + BEGIN + "\n" + END + "\n")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(head + BEGIN + "\n" + section + END + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(model.name for model in MODELS))
    parser.add_argument("--exporters", default=",".join(EXPORTERS + UNFOLDED_EXPORTERS),
                        help="the unfolded ones are run for BatchNorm models only")
    parser.add_argument("--losses", default="default",
                        help="comma-separated: default (config unset) and/or loss names")
    parser.add_argument("--output", default=str(ROOT / "docs" / "standard-models.md"),
                        help="page whose generated section is replaced; '-' prints only")
    parser.add_argument("--json", help="also write every row's details here")
    parser.add_argument("--cache", help="directory for the exported files (default: temporary)")
    parser.add_argument("--reuse", action="store_true",
                        help="diagnose files already in --cache instead of exporting again")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    names = [name for name in args.models.split(",") if name]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {sorted(BY_NAME)}")

    def progress(row: Row) -> None:
        what = row.error or f"{row.status} [{', '.join(row.fired)}] ratio {_num(row.ratio)}"
        print(f"{row.model:22} {row.exporter:16} {row.loss:13} {what}", file=sys.stderr,
              flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(args.cache or scratch)
        cache.mkdir(parents=True, exist_ok=True)
        rows = survey(names, args.exporters.split(","), args.losses.split(","), cache, progress,
                      reuse=args.reuse)
    section = render(rows)
    print(section)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(row) for row in rows], indent=1),
                                   encoding="utf-8")
    if args.output != "-":
        write_page(Path(args.output), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
