"""`graddoctor` command line: one subcommand per module in service/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from service.exit_codes import ExitCode

# Each module exposes add_parser(subparsers) and run(args) -> int. Imported lazily so that
# `graddoctor submit` never pays for importing torch.
COMMANDS = ("diagnose", "compare", "serve", "worker", "submit")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors: one line, exit status 2
        self.exit(ExitCode.BAD_INPUT, f"graddoctor: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graddoctor", description="Gradient diagnostics for neural networks.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"service.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"service.commands.{name}":
                continue  # command not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("graddoctor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
