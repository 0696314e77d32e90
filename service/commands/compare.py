"""`graddoctor compare BEFORE AFTER`: did a change make the gradients worse? (a CI gate)

Each side is a JSON report (`graddoctor diagnose --format json`) or a model (ONNX or spec),
which is diagnosed here with the same config flags as `diagnose`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from service.commands._console import emit, fail, progress_display, quiet_third_party
from service.commands.diagnose import (
    UsageError,
    add_config_arguments,
    build_config,
    machine_limits,
)
from service.exit_codes import ExitCode


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare two reports or models: did the gradients get worse?",
        description="Compare the per-layer backward signal and parameter gradients of two "
                    "diagnoses, matched by layer and parameter name. Exit status: 0 not worse, "
                    "5 worse beyond --factor (a layer's signal relative to the shallowest layer "
                    "moved away from 1 by more than the factor, or the verdict went from healthy "
                    "to anything else), 2 bad input, 1 internal error.")
    parser.add_argument("before", help="baseline: a JSON report, an .onnx file or a .json spec")
    parser.add_argument("after", help="changed model: a JSON report, an .onnx file or a spec")
    parser.add_argument("--factor", type=float, default=10.0, metavar="X",
                        help="regression factor (default 10)")
    parser.add_argument("--top", type=int, default=20, metavar="N",
                        help="text output: layers listed, largest moves first (0 = all)")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--output", metavar="FILE", help="write the comparison here, not stdout")
    add_config_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from diagnostics.compare import compare_reports
    from diagnostics.errors import DiagnosticsError

    if not args.factor > 1 or args.factor == float("inf"):
        return fail(f"--factor must be a finite number > 1, got {args.factor}",
                     ExitCode.BAD_INPUT)
    try:
        config = build_config(args)
        with quiet_third_party(args.verbose), progress_display() as say:
            before = _report(args.before, args, config, say, "before")
            after = _report(args.after, args, config, say, "after")
        comparison = compare_reports(before, after, args.factor)
    except UsageError as exc:
        return fail(str(exc), ExitCode.BAD_INPUT)
    except DiagnosticsError as exc:
        return fail(exc.detail, ExitCode.BAD_INPUT)
    except Exception as exc:  # one line, never a traceback
        if os.environ.get("GRADDOCTOR_DEBUG"):
            raise
        return fail(f"internal error: {type(exc).__name__}: {exc}", ExitCode.INTERNAL)
    if args.format == "json":
        text = comparison.model_dump_json(indent=2) + "\n"
    else:
        from diagnostics.render.comparison import render_comparison_text

        text = render_comparison_text(comparison, top=args.top)
    failed = emit(text, args.output)
    if failed is not None:
        return failed
    return ExitCode.REGRESSED if comparison.worse else ExitCode.HEALTHY


def _report(path: str, args: argparse.Namespace, config: dict[str, Any], say: Any,
            side: str) -> Any:
    """A report read from JSON, or made by diagnosing the model at ``path``."""
    from pydantic import ValidationError

    from diagnostics import Report, diagnose

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{side}: file {path} does not exist")
    document = _json_document(file)
    if isinstance(document, dict) and "verdict" in document and "layers" in document:
        try:
            return Report.model_validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise UsageError(f"{side}: {path} is not a GradDoctor report: {where}: "
                             f"{first['msg']}") from None
    return diagnose(path, inputs=args.inputs, config=config, limits=machine_limits(args),
                    data_dir=args.data_dir, progress=lambda message: say(f"{side}: {message}"))


def _json_document(file: Path) -> Any:
    """The parsed JSON when the file is JSON text (a report or a spec), else None (ONNX)."""
    try:
        with file.open("rb") as stream:
            head = stream.read(4096).lstrip()[:1]
        if head != b"{":
            return None
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # diagnose() reads it again and names the problem
