"""ONNX conformance: every backend node test of the installed onnx, run through our loader.

onnx ships its node tests as Python definitions (``onnx.backend.test.case.node``; 1.23's wheel no
longer carries the generated ``data/node`` folders), so the cases are generated here from them:
each is a one-node model with inputs and expected outputs. The function-expanded variants
(``*_expanded``) are left out: they test other ops' decompositions, not the op itself.

Each case runs in a worker process (at most ``--jobs``, default 2) with a per-case timeout, so a
crash or a runaway allocation costs that case only; see ``conformance_case.py`` for the checks and
the statuses. Writes a JSON file (case -> op, opset, status, message) and a Markdown table.

Usage::

    .venv/bin/python scripts/conformance.py                 # all cases, writes docs/conformance.*
    .venv/bin/python scripts/conformance.py --only 'test_(conv|gemm)' --json /tmp/c.json --md ''
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import metadata
from multiprocessing.connection import Connection, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conformance_case import (  # after the sys.path line: it imports diagnostics
    Outcome,
    Status,
    differentiable_inputs,
    evaluate,
    float_elements,
    node_of,
    opset_of,
)

ROOT = Path(__file__).resolve().parent.parent
# Gradcheck runs on each op's first case (by name) whose differentiable inputs and outputs are
# this small: finite differences cost two forward passes per input element, the analytical
# Jacobian one backward pass per output element.
GRADCHECK_MAX_INPUTS = 256
GRADCHECK_MAX_OUTPUTS = 1024
# Seconds one case may take; the slowest passing case takes about a second.
CASE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Case:
    """One node test as the runner schedules it."""

    index: int
    name: str
    op: str
    domain: str
    opset: int
    gradcheck: bool


def collect() -> list:
    """The installed onnx's node test cases, without ``*_expanded`` variants, sorted by name."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        # Some case definitions overflow casts or divide by zero on purpose.
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return sorted((c for c in cases if "_expanded" not in c.name), key=lambda c: c.name)


def plan(cases: list) -> list[Case]:
    """Name, op and opset of each case, and which ones gradcheck samples (first small per op)."""
    sampled: set[str] = set()
    planned = []
    for index, case in enumerate(cases):
        node = node_of(case.model)
        positions = differentiable_inputs(case.model)
        inputs, outputs = (list(values) for values in case.data_sets[0])
        small = (bool(positions)
                 and float_elements(inputs, positions) <= GRADCHECK_MAX_INPUTS
                 and float_elements(outputs, range(len(outputs))) <= GRADCHECK_MAX_OUTPUTS)
        gradcheck = small and node.op_type not in sampled
        if gradcheck:
            sampled.add(node.op_type)
        planned.append(Case(index, case.name, node.op_type, node.domain or "ai.onnx",
                            opset_of(case.model), gradcheck))
    return planned


def _worker(connection: Connection, cases: list) -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker: --jobs is the number of cores used
    warnings.simplefilter("ignore")
    # torch.fx prints a traceback to stderr for every module that raises; the outcome already
    # carries the exception, and a thousand tracebacks would bury the summary.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    while True:
        job = connection.recv()
        if job is None:
            return
        index, gradcheck = job
        case = cases[index]
        inputs, expected = case.data_sets[0]
        try:
            outcome = evaluate(case.model, list(inputs), list(expected), gradcheck=gradcheck)
        except Exception as exc:  # a bug in the checks themselves: report it with the case
            outcome = Outcome(Status.ERROR, f"runner: {type(exc).__name__}: {exc}")
        connection.send((index, outcome))


class _Pool:
    """Worker processes fed one case at a time; a hung or crashed worker is replaced."""

    def __init__(self, cases: list, jobs: int, timeout: float) -> None:
        self._context = multiprocessing.get_context("fork")  # workers inherit the cases
        self._cases, self._jobs, self._timeout = cases, jobs, timeout

    def _start(self):
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker, args=(child, self._cases), daemon=True)
        process.start()
        child.close()
        return process, parent

    def run(self, planned: list[Case], progress) -> dict[int, Outcome]:
        queue = list(reversed(planned))
        busy: dict[Connection, tuple] = {}
        idle = [self._start() for _ in range(min(self._jobs, len(planned)))]
        results: dict[int, Outcome] = {}
        try:
            while queue or busy:
                while idle and queue:
                    process, connection = idle.pop()
                    case = queue.pop()
                    connection.send((case.index, case.gradcheck))
                    busy[connection] = (process, case, time.monotonic())
                ready = wait(list(busy), timeout=1.0)
                for connection in list(busy):
                    process, case, started = busy[connection]
                    outcome = self._collect(connection, process, started, connection in ready)
                    if outcome is None:
                        continue
                    del busy[connection]
                    results[case.index] = outcome
                    progress(case, outcome)
                    if process.is_alive():
                        idle.append((process, connection))
                    else:
                        connection.close()
                        idle.append(self._start())
        finally:
            for process, connection in [*idle, *((p, c) for c, (p, _, _) in busy.items())]:
                connection.close()
                process.kill()
        return results

    def _collect(self, connection: Connection, process, started: float,
                 ready: bool) -> Outcome | None:
        if ready:
            try:
                return connection.recv()[1]
            except (EOFError, OSError):
                process.join(5)
                return Outcome(Status.ERROR, f"worker died (exit code {process.exitcode}): "
                                             "crashed or killed for memory")
        if time.monotonic() - started > self._timeout:
            process.kill()
            process.join(5)
            return Outcome(Status.ERROR, f"timeout: no result after {self._timeout:.0f} s")
        return None


def run(cases: list, planned: list[Case], jobs: int, timeout: float,
        verbose: bool) -> dict[str, dict]:
    """Run ``planned`` cases; returns case name -> JSON record."""
    done = Counter()

    def progress(case: Case, outcome: Outcome) -> None:
        done[outcome.status] += 1
        if verbose and outcome.status != Status.PASS:
            print(f"{outcome.status:<11} {case.name}: {outcome.message[:160]}", flush=True)

    outcomes = _Pool(cases, jobs, timeout).run(planned, progress)
    records = {}
    for case in planned:
        outcome = outcomes[case.index]
        record = {"op": case.op, "domain": case.domain, "opset": case.opset,
                  "status": str(outcome.status), "message": outcome.message}
        if outcome.gradcheck is not None:
            record["gradcheck"] = outcome.gradcheck
        records[case.name] = record
    return records


def _versions() -> dict[str, str]:
    import onnx
    import torch

    return {"onnx": onnx.__version__, "onnx2torch": metadata.version("onnx2torch"),
            "torch": torch.__version__}


def summary(records: dict[str, dict]) -> dict:
    """Counts per status and the pass rate over all cases."""
    counts = Counter(record["status"] for record in records.values())
    total = len(records)
    return {"cases": total, **{status: counts.get(status, 0) for status in Status},
            "pass_rate": round(counts.get("pass", 0) / total, 4) if total else 0.0}


def markdown(records: dict[str, dict], meta: dict) -> str:
    """The docs table: summary, per-op counts, and every wrong, backward and error case."""
    totals = summary(records)
    lines = [
        "# ONNX conformance",
        "",
        f"Generated by `scripts/conformance.py` on {meta['date']} with onnx {meta['onnx']}, "
        f"onnx2torch {meta['onnx2torch']}, torch {meta['torch']} ({meta['seconds']:.0f} s, "
        f"{meta['jobs']} processes). Every backend node test defined by the installed onnx "
        "(`onnx.backend.test.case.node`, function-expanded variants excluded) is loaded with "
        "`load_onnx`, run forward and compared with its expected outputs (floats: |Δ| ≤ "
        "max(1e-5 + 1e-4·|x|, onnx's own 1e-7 + 1e-3·|x|); ints and bools exact; dtype and "
        "shape must match). Where the op's schema calls a float input differentiable, a "
        "backward pass must run with finite gradients, and each op's first small case is "
        "checked with `torch.autograd.gradcheck` in float64.",
        "",
        "Statuses: **pass**; **wrong**: runs but the outputs differ (silent — the dangerous "
        "class); **unsupported**: refused with an error naming the op (no converter, or an "
        "attribute, input kind or dtype the converter does not handle); **error**: conversion "
        "or forward pass crashed; **backward**: forward matches but backward fails or "
        "disagrees with gradcheck.",
        "",
        "| cases | pass | wrong | unsupported | error | backward | pass rate |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {totals['cases']} | {totals['pass']} | {totals['wrong']} | {totals['unsupported']} "
        f"| {totals['error']} | {totals['backward']} | {100 * totals['pass_rate']:.1f}% |",
        "",
        "## Per op",
        "",
        "| op | opsets | cases | pass | wrong | unsupported | error | backward |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    per_op: dict[str, list[dict]] = defaultdict(list)
    for record in records.values():
        per_op[_op_label(record)].append(record)
    for op in sorted(per_op, key=str.lower):
        rows = per_op[op]
        counts = Counter(row["status"] for row in rows)
        opsets = ", ".join(str(v) for v in sorted({row["opset"] for row in rows}))
        cells = " | ".join(str(counts.get(s, 0) or "") for s in
                           ("pass", "wrong", "unsupported", "error", "backward"))
        lines.append(f"| {op} | {opsets} | {len(rows)} | {cells} |")
    for status in ("wrong", "backward", "error"):
        failed = [(name, r) for name, r in records.items() if r["status"] == status]
        if failed:
            lines += ["", f"## {status.capitalize()} cases", "", "| case | op | message |",
                      "|---|---|---|"]
            lines += [f"| {name} | {_op_label(r)} | {_cell(r['message'])} |"
                      for name, r in failed]
    return "\n".join(lines) + "\n"


def _op_label(record: dict) -> str:
    return record["op"] if record["domain"] == "ai.onnx" else f"{record['domain']}:{record['op']}"


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    """Command line: run the suite, write the JSON and Markdown files, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (cores used)")
    parser.add_argument("--timeout", type=float, default=CASE_TIMEOUT_S, help="seconds per case")
    parser.add_argument("--only", default="", help="regex on case names")
    parser.add_argument("--json", default=str(ROOT / "docs/conformance.json"),
                        help="results file ('' for none)")
    parser.add_argument("--md", default=str(ROOT / "docs/conformance.md"),
                        help="Markdown table ('' for none)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print non-passing cases")
    args = parser.parse_args(argv)

    started = time.monotonic()
    cases = collect()
    planned = [case for case in plan(cases) if re.search(args.only, case.name)]
    records = run(cases, planned, max(1, args.jobs), args.timeout, args.verbose)
    meta = {"date": datetime.date.today().isoformat(), **_versions(),
            "seconds": time.monotonic() - started, "jobs": args.jobs}
    if args.json:
        document = {"meta": {**meta, "seconds": round(meta["seconds"], 1)},
                    "summary": summary(records), "cases": records}
        Path(args.json).write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(records, meta))
    totals = summary(records)
    print(" ".join(f"{key}={value}" for key, value in totals.items()),
          f"seconds={meta['seconds']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
