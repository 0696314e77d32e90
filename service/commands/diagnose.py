"""`graddoctor diagnose MODEL`: run a diagnosis locally and print the report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from diagnostics import strict_json
from service.commands._console import emit, fail, progress_display, quiet_third_party
from service.exit_codes import ExitCode, for_verdict


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagnose", help="diagnose an ONNX model or architecture spec locally",
        description="Run sample forward+backward passes and report per-layer gradient "
                    "statistics, a verdict and remedies. Exit status: 0 healthy, 3 vanishing or "
                    "exploding, 4 inconclusive, 2 bad input, 1 internal error.")
    parser.add_argument("model", help="an .onnx file or a .json architecture spec")
    add_config_arguments(parser)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--output", metavar="FILE", help="write the report here, not stdout")
    parser.add_argument("--fix", metavar="REMEDY_ID",
                        help="write the model repaired by this remedy (see --fix-output)")
    parser.add_argument("--fix-output", metavar="FILE", help="where --fix writes the ONNX model")
    parser.set_defaults(run=run)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that set up a diagnosis (shared with `graddoctor compare`)."""
    parser.add_argument("--inputs", metavar="NPZ", help="sample inputs (.npz, name -> array)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder holding the model's external data files (model.onnx.data); "
                        "default: the model file's folder")
    parser.add_argument("--max-parameters", type=int, metavar="N",
                        help="largest model accepted, in trainable elements (default: what this "
                        "machine's available memory holds, 10 bytes each)")
    parser.add_argument("--max-model-bytes", type=int, metavar="N",
                        help="largest .onnx/.json file accepted (default: an eighth of the "
                        "available memory, at most 2 GiB)")
    parser.add_argument("--loss",
                        choices=["random_projection", "mean_square", "cross_entropy", "sum"])
    parser.add_argument("--optimizer", choices=["sgd", "adam"],
                        help="the optimizer you train with; the rules predict what it does "
                        "(default sgd)")
    parser.add_argument("--learning-rate", type=float, metavar="LR",
                        help="learning rate the rules ask about (default 1e-2 for sgd, 1e-3 "
                        "for adam)")
    parser.add_argument("--sequence-loss", choices=["every_step", "last_step"],
                        help="what your training loss reads of a recurrent model's output "
                        "sequence (default every_step)")
    parser.add_argument("--samples", type=int, metavar="N", help="independent seeded batches")
    parser.add_argument("--batch-size", type=int, metavar="N", help="size of dynamic batch axes")
    parser.add_argument("--seed", type=int, metavar="N")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--config", metavar="FILE", help="JSON file with any config field")
    parser.add_argument("--verbose", action="store_true",
                        help="let third-party warnings (converters, tracers) through to stderr")


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config dict: --config file first, then the explicit flags on top."""
    config: dict[str, Any] = {}
    if args.config:
        try:
            loaded = strict_json.loads(Path(args.config).read_text())
        except OSError as exc:
            raise UsageError(f"cannot read config file {args.config}: {exc.strerror}") from None
        except ValueError as exc:  # not JSON, or JSON we refuse (NaN, duplicated keys)
            raise UsageError(f"config file {args.config} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"config file {args.config} must hold a JSON object")
        config.update(loaded)
    flags = {"loss": args.loss, "optimizer": args.optimizer,
             "learning_rate": args.learning_rate, "sequence_loss": args.sequence_loss,
             "samples": args.samples,
             "batch_size": args.batch_size, "seed": args.seed, "device": args.device}
    config.update({key: value for key, value in flags.items() if value is not None})
    return config


class UsageError(Exception):
    pass


# Peak memory of a diagnosis is about 2.5x the weights (weights, gradients, the rest): 10 bytes
# per float32 parameter. Measured on GPT-2 large, see the README ("How large a model fits").
_BYTES_PER_PARAMETER = 10
_PROTOBUF_LIMIT = 2 * 1024**3


def available_memory() -> int | None:
    """Bytes of memory this machine can give a new process now (MemAvailable), if known."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def machine_limits(args: argparse.Namespace) -> Any:
    """The engine budgets for a run on the user's own machine: the library defaults, raised
    to what the available memory holds, and the --max-* flags on top."""
    from dataclasses import replace

    from diagnostics import Limits

    limits = Limits()
    memory = available_memory()
    if memory:
        limits = replace(
            limits,
            max_parameters=max(limits.max_parameters, memory // _BYTES_PER_PARAMETER),
            max_model_bytes=max(limits.max_model_bytes, min(_PROTOBUF_LIMIT, memory // 8)))
    for flag, field in (("max_parameters", "max_parameters"),
                        ("max_model_bytes", "max_model_bytes")):
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                raise UsageError(f"--{flag.replace('_', '-')} must be positive")
            limits = replace(limits, **{field: value})
    return limits


def run(args: argparse.Namespace) -> int:
    from diagnostics.errors import DiagnosticsError

    if (args.fix is None) != (args.fix_output is None):
        return fail("--fix and --fix-output go together", ExitCode.BAD_INPUT)
    try:
        config = build_config(args)
        if not Path(args.model).is_file():
            return fail(f"model file {args.model} does not exist", ExitCode.BAD_INPUT)
        if args.data_dir is not None and not Path(args.data_dir).is_dir():
            return fail(f"data folder {args.data_dir} does not exist", ExitCode.BAD_INPUT)
        limits = machine_limits(args)
        with quiet_third_party(args.verbose), progress_display() as say:
            from diagnostics import diagnose  # torch and the converters: their import warns too

            report = diagnose(args.model, inputs=args.inputs, config=config, progress=say,
                              limits=limits, data_dir=args.data_dir)
            if args.fix:
                from diagnostics.remedies.repair import write_repaired_model

                write_repaired_model(report, args.fix, args.fix_output)
    except UsageError as exc:
        return fail(str(exc), ExitCode.BAD_INPUT)
    except DiagnosticsError as exc:
        return fail(exc.detail, ExitCode.BAD_INPUT)
    except Exception as exc:  # the CLI's promise: one line, never a traceback
        if os.environ.get("GRADDOCTOR_DEBUG"):
            raise
        return fail(f"internal error: {type(exc).__name__}: {exc}", ExitCode.INTERNAL)
    text = _render(report, args.format, color=args.output is None and sys.stdout.isatty())
    failed = emit(text, args.output)
    return failed if failed is not None else for_verdict(report.verdict.status)


def _render(report: Any, fmt: str, *, color: bool) -> str:
    if fmt == "json":
        return report.model_dump_json(indent=2)
    from diagnostics.render.text import render_text

    return render_text(report, color=color)
