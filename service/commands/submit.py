"""`graddoctor submit`: send a model to a running service; exit like `graddoctor diagnose`.

A pipeline client: it needs only httpx (never torch), shows progress on stderr while it waits,
prints the report on stdout and exits 0 healthy, 3 vanishing/exploding, 2 bad input, 1 error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from diagnostics import strict_json
from service.exit_codes import ExitCode, for_verdict
from service.schemas import JobStatus

# Job errors the user can fix (the engine's input errors and the service's size/time budgets).
_INPUT_ERRORS = {"invalid_model", "external_data", "unsupported_operator", "invalid_spec",
                 "invalid_inputs", "invalid_config", "resource_limit", "probe_failed",
                 "job_time_limit", "job_memory_limit", "diagnostics_error"}


class SubmitError(Exception):
    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "submit", help="diagnose a model on a running GradDoctor service",
        description="Upload an ONNX model or a JSON spec to a GradDoctor service. With --wait, "
        "wait for the verdict and exit 0 (healthy), 3 (vanishing/exploding), 4 (inconclusive), "
        "2 (bad input) or 1 (error), like `graddoctor diagnose`.")
    parser.add_argument("path", type=Path, help="ONNX model (.onnx) or architecture spec (.json)")
    parser.add_argument("--url", required=True, help="service base URL, e.g. http://host:8000")
    parser.add_argument("--inputs", type=Path, help="sample inputs (.npz), ONNX models only")
    parser.add_argument("--config", type=Path, help="DiagnosisConfig as a JSON file")
    parser.add_argument("--wait", action="store_true", help="wait for the result")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds to wait with --wait (default 1800)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--no-reuse", action="store_true",
                        help="run again even if the service has the result of an identical job")
    parser.add_argument("--api-key", default=os.environ.get("GRADDOCTOR_API_KEY"),
                        help="API key (default: $GRADDOCTOR_API_KEY)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base = args.url.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=90.0) as client:
            job = _post(client, args)
            if args.wait:
                job = _wait(client, job, args.timeout)
    except SubmitError as exc:
        print(f"graddoctor submit: {exc}", file=sys.stderr)
        return exc.code
    except httpx.HTTPError as exc:
        print(f"graddoctor submit: cannot reach {base}: {exc}", file=sys.stderr)
        return ExitCode.INTERNAL
    return _show(job, args, base)


def _post(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    config = _read_json(args.config, "--config") if args.config else None
    params: dict[str, Any] = {"wait": 55} if args.wait else {}
    if args.no_reuse:
        params["reuse"] = "false"
    if args.path.suffix.lower() == ".json":
        if args.inputs:
            raise SubmitError("--inputs works with ONNX models only", ExitCode.BAD_INPUT)
        body = {"spec": _read_json(args.path, "spec"), "config": config}
        return _check(client.post("/v1/diagnoses", json=body, params=params))
    files: list[tuple[str, Any]] = []
    try:
        files.append(("model", (args.path.name, _open(args.path), "application/onnx")))
        for location in external_locations(args.path):
            files.append(("data", (location, _open(args.path.parent / location),
                                   "application/octet-stream")))
        if args.inputs:
            files.append(("inputs", (args.inputs.name, _open(args.inputs),
                                     "application/octet-stream")))
        data = {"config": json.dumps(config)} if config is not None else {}
        return _check(client.post("/v1/diagnoses", files=files, data=data, params=params))
    finally:
        for _, (_, handle, _) in files:
            handle.close()


def external_locations(path: Path) -> list[str]:
    """The files an ONNX model keeps tensors in (``model.onnx.data`` ...), each once, checked
    to be relative names inside the model's folder (the server refuses anything else anyway).
    Reads the protobuf only (onnx, never torch); an archive or unreadable file has none."""
    if path.suffix.lower() != ".onnx":
        return []
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX: the server says what is wrong with it
        return []
    locations: dict[str, None] = {}
    for tensor in _tensors(model.graph, depth=0):
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if tensor.data_location == onnx.TensorProto.EXTERNAL or entries:
            location = entries.get("location", "")
            parts = location.replace("\\", "/").split("/")
            if not location or location.startswith("/") or ".." in parts:
                raise SubmitError(f"tensor {tensor.name!r} keeps its data at {location!r}, "
                                  "which is not a file beside the model", ExitCode.BAD_INPUT)
            if not (path.parent / location).is_file():
                raise SubmitError(f"tensor {tensor.name!r} keeps its data in {location!r}, "
                                  f"not found beside {path}", ExitCode.BAD_INPUT)
            locations[location] = None
    return list(locations)


def _tensors(graph: Any, depth: int) -> Any:
    yield from graph.initializer
    if depth > 8:
        return
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _tensors(sub, depth + 1)


# Each status request is held by the server until the job finishes or this many seconds pass
# (GET ?wait): the verdict arrives as soon as it is written, and progress still shows.
_HOLD_S = 5.0
# A server without GET ?wait answers at once: then requests are spaced this far apart.
_POLL_S = 1.0


def _wait(client: Any, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while job["status"] in (JobStatus.QUEUED, JobStatus.RUNNING):
        state = f"{job['status']}" + (f": {job['progress']}" if job.get("progress") else "")
        if state != last:
            print(f"graddoctor submit: {job['id']} {state}", file=sys.stderr)
            last = state
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SubmitError(f"gave up waiting after {timeout:g} s; the job goes on: "
                              f"{job['links']['self']}", ExitCode.INTERNAL)
        asked = time.monotonic()
        job = _check(client.get(job["links"]["self"],
                                params={"wait": round(min(_HOLD_S, remaining), 3)}))
        spent = time.monotonic() - asked
        if job["status"] in (JobStatus.QUEUED, JobStatus.RUNNING) and spent < _POLL_S:
            time.sleep(_POLL_S - spent)
    return job


def _show(job: dict[str, Any], args: argparse.Namespace, base: str) -> int:
    status = job["status"]
    if status in (JobStatus.QUEUED, JobStatus.RUNNING):
        print(json.dumps(job, indent=2) if args.format == "json"
              else f"{job['id']} {status}: {base}{job['links']['self']}")
        return ExitCode.HEALTHY
    if status != JobStatus.SUCCEEDED:
        error = job.get("error") or {"type": status, "detail": f"the job was {status}"}
        if args.format == "json":
            print(json.dumps({"error": error["type"], "detail": error["detail"], "id": job["id"]}))
        print(f"graddoctor submit: {error['type']}: {error['detail']}", file=sys.stderr)
        return ExitCode.BAD_INPUT if error["type"] in _INPUT_ERRORS else ExitCode.INTERNAL
    report = job["result"] or {}
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(_render_text(report))
        if job.get("reused_from"):
            print(f"(result reused from the identical job {job['reused_from']})")
        print(f"Report: {base}{job['links']['report']}")
    return for_verdict(str((report.get("verdict") or {}).get("status")))


def _render_text(report: dict[str, Any]) -> str:
    """The engine's text rendering (no torch involved), or a short summary if it cannot be
    used (a client older or newer than the server's report schema)."""
    try:
        from diagnostics.render.text import render_text
        from diagnostics.report import Report

        return render_text(Report.model_validate(report), color=sys.stdout.isatty())
    except Exception:
        verdict = report.get("verdict") or {}
        return f"Verdict: {str(verdict.get('status', '?')).upper()} - {verdict.get('summary', '')}"


def _check(response: Any) -> dict[str, Any]:
    if response.status_code < 400:
        body: dict[str, Any] = response.json()
        return body
    try:
        body = response.json()
        message = f"{body.get('error')}: {body.get('detail')}"
    except ValueError:
        message = f"HTTP {response.status_code}"
    code = ExitCode.BAD_INPUT if response.status_code in (400, 413, 415, 422) else ExitCode.INTERNAL
    raise SubmitError(message, code)


def _read_json(path: Path, what: str) -> Any:
    try:
        return strict_json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SubmitError(f"cannot read {what} {path}: {exc.strerror}",
                          ExitCode.BAD_INPUT) from None
    except ValueError as exc:
        raise SubmitError(f"{what} {path} is not valid JSON: {exc}", ExitCode.BAD_INPUT) from None


def _open(path: Path) -> Any:
    try:
        return path.open("rb")
    except OSError as exc:
        raise SubmitError(f"cannot read {path}: {exc.strerror}", ExitCode.BAD_INPUT) from None
