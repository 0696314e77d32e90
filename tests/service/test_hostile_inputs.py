"""Hostile input, as one table: every row is refused with a clear 4xx JSON error or ends as a
failed job whose error names the problem, and the service keeps serving.

Rows run against real ``graddoctor serve`` processes over HTTP: ``main`` is the shared session
server (default limits, see conftest), ``tight`` a dedicated one with a short read timeout, a
6 s job time limit, a 2 MiB upload limit and small engine budgets set through the
``GRADDOCTOR_MAX_*`` settings. After every row both servers answer ``/healthz`` and no response
was a 5xx or echoed the secret; after the table a canary job submitted before it has succeeded,
fresh small jobs still succeed, the secret file outside the data directory was never read, and
no file was written where a client-supplied name pointed.

To grow the suite, add a row to ``CASES``: an id, a ``send`` (what to post) and an expectation
(``Refused``, ``Fails`` or ``Succeeds``). Rows that wait for a job time limit are marked slow.
"""

from __future__ import annotations

import inspect
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from diagnostics.limits import Limits
from service.settings import Settings
from tests.service import hostile
from tests.service.conftest import (
    ROOT,
    WORKER_READY,
    ServiceProcess,
    StartService,
    dump,
    onnx_mlp,
    wait_for_status,
)
from tests.spec_builders import spec_mlp

pytestmark = pytest.mark.service

SMALL = {"samples": 1, "verify_remedies": False}
TIGHT = {  # the dedicated server's settings (GRADDOCTOR_<KEY>)
    "workers": 1, "read_timeout_s": 2, "job_time_limit_s": 6, "max_upload_bytes": 2 * 2**20,
    "max_nodes": 50, "max_nesting": 2, "max_parameters": 20_000_000,
    "max_tensor_elements": 16_000_000, "max_input_elements": 2_000_000,
}
# A normal spec job that runs a few seconds: in flight while the first rows run.
CANARY = (spec_mlp(depth=6, width=128, batch=128, name="canary"),
          {"samples": 4, "verify_remedies": False})
# 1-2 s per sample here, 64 samples: far past the tight server's 6 s.
TIME_BOMB = (spec_mlp(depth=8, width=1024, batch=1024, name="time-bomb"),
             {"samples": 64, "verify_remedies": False})
MARKER = f"graddoctor-marker-{secrets.token_hex(4)}"


# --- The environment every row sees -----------------------------------------------------------

@dataclass
class Secret:
    """A file outside every data directory that no request may read, and ways to point at it."""

    path: Path
    token: str
    link: Path
    atime_measurable: bool
    stat: os.stat_result = field(init=False)

    def __post_init__(self) -> None:
        self.stat = self.path.stat()


@dataclass
class Env:
    main: ServiceProcess
    tight: ServiceProcess
    secret: Secret
    canary_id: str
    log_offsets: dict[str, int]
    texts: list[str] = field(default_factory=list)  # every response body, for the final checks


Send = Callable[[Env, httpx.Client], Any]  # -> httpx.Response or hostile.RawReply


def _age_atime(path: Path) -> None:
    # relatime updates atime on a read only when atime <= mtime: make it older, so any read shows.
    info = path.stat()
    os.utime(path, ns=(info.st_mtime_ns - 3600 * 10**9, info.st_mtime_ns))


def _make_secret(folder: Path) -> Secret:
    token = f"TOP-SECRET-{secrets.token_hex(16)}"
    path = folder / "secret.bin"
    path.write_bytes(token.encode() * 64)
    link = folder / "innocent-weights.bin"
    link.symlink_to(path)
    probe = folder / "probe.bin"
    probe.write_bytes(b"x")
    _age_atime(probe)
    before = probe.stat().st_atime_ns
    probe.read_bytes()
    _age_atime(path)
    return Secret(path, token, link, atime_measurable=probe.stat().st_atime_ns != before)


@pytest.fixture(scope="module")
def tight_process(start_service: StartService) -> ServiceProcess:
    """Started first and waited for last, so it warms up while the shared server does."""
    return start_service(["serve", "--workers", "1"], name="serve-tight", **TIGHT)


@pytest.fixture(scope="module")
def env(tight_process: ServiceProcess, server: ServiceProcess,
        tmp_path_factory: pytest.TempPathFactory) -> Env:
    tight_process.wait_ready().wait_log(WORKER_READY)
    secret = _make_secret(tmp_path_factory.mktemp("outside-the-data-dir"))
    with server.client() as client:
        canary = client.post("/v1/diagnoses", json={"spec": CANARY[0], "config": CANARY[1]},
                             params={"reuse": "false"})
        assert canary.status_code == 202, canary.text
    offsets = {"main": len(server.log()), "tight": len(tight_process.log())}
    return Env(server, tight_process, secret, canary.json()["id"], offsets)


# --- Expectations -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Refused:
    """An HTTP error: this status, this ``error`` type, a detail naming these words."""

    status: int
    error: str
    mentions: tuple[str, ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fails:
    """Accepted, then a failed job: this error type, detail and context."""

    error: str
    mentions: tuple[str, ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Succeeds:
    """Accepted and diagnosed; ``check`` looks at the job."""

    check: Callable[[dict[str, Any]], None] = lambda job: None


Expect = Refused | Fails | Succeeds


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    expect: Expect
    server: str = "main"
    slow: bool = False


# --- How rows send ----------------------------------------------------------------------------

Payload = bytes | Callable[[Env], bytes] | Callable[[], bytes]


def _resolve(payload: Payload | None, env: Env) -> bytes | None:
    # Big payloads are built when their row runs, not when the table is collected.
    if not callable(payload):
        return payload
    wants_env = any(parameter.default is inspect.Parameter.empty
                    for parameter in inspect.signature(payload).parameters.values())
    return payload(env) if wants_env else payload()


def upload(model: Payload, inputs: Payload | None = None, config: Any = SMALL,
           filename: str = "model.onnx", wait: Any = 60) -> Send:
    """Multipart: an ONNX file, optional .npz inputs and a config."""
    def send(env: Env, client: httpx.Client) -> httpx.Response:
        files = {"model": (filename, _resolve(model, env), "application/octet-stream")}
        if inputs is not None:
            files["inputs"] = ("inputs.npz", _resolve(inputs, env), "application/octet-stream")
        data = {"config": json.dumps(config)} if config is not None else {}
        return client.post("/v1/diagnoses", files=files, data=data, params={"wait": wait})
    return send


def upload_data(model: bytes, data: Sequence[tuple[str, bytes]], config: Any = SMALL) -> Send:
    """Multipart: an ONNX model and its external data files as 'data' parts named by location."""
    def send(env: Env, client: httpx.Client) -> httpx.Response:
        files = [("model", ("model.onnx", model, "application/octet-stream"))]
        files += [("data", (name, payload, "application/octet-stream"))
                  for name, payload in data]
        return client.post("/v1/diagnoses", files=files, data={"config": json.dumps(config)},
                           params={"wait": 60, "reuse": "false"})
    return send


def post_spec(spec: Any, config: Any = SMALL) -> Send:
    def send(env: Env, client: httpx.Client) -> httpx.Response:
        return client.post("/v1/diagnoses", json={"spec": spec, "config": config},
                           params={"wait": 60, "reuse": "false"})
    return send


def post_raw(content: Payload, content_type: str = "application/json",
             params: Mapping[str, Any] | None = None) -> Send:
    def send(env: Env, client: httpx.Client) -> httpx.Response:
        return client.post("/v1/diagnoses", content=_resolve(content, env),
                           params=dict(params or {}), headers={"content-type": content_type})
    return send


def get(path: str) -> Send:
    def send(env: Env, client: httpx.Client) -> httpx.Response:
        return client.get(path)
    return send


def _parts(*parts: tuple[str, str | None, bytes], boundary: str = "hostile") -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"'
                                                     if filename is not None else "")
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
                 + data + b"\r\n")
    return body + f"--{boundary}--\r\n".encode()


def post_parts(*parts: tuple[str, str | None, bytes]) -> Send:
    """A hand-written multipart body, for what httpx will not produce (odd or repeated parts)."""
    return post_raw(_parts(*parts), "multipart/form-data; boundary=hostile",
                    params={"wait": 60})


def stream_over_limit(env: Env, client: httpx.Client) -> hostile.RawReply:
    # 1 GiB without a Content-Length: the server must stop at its 2 MiB limit on its own.
    preamble = (b'--b\r\nContent-Disposition: form-data; name="model"; filename="big.onnx"\r\n'
                b"\r\n")
    reply = hostile.stream_forever(str(client.base_url), content_type="multipart/form-data; "
                                   "boundary=b", preamble=preamble, total=2**30)
    assert reply.sent < 64 * 2**20, f"the server read {reply.sent:,} bytes before refusing"
    return reply


def declared_too_long(env: Env, client: httpx.Client) -> hostile.RawReply:
    return hostile.declared_too_long(str(client.base_url), 2**40)


def slow_client(env: Env, client: httpx.Client) -> hostile.RawReply:
    # While one client stalls mid-upload, another's job runs on the only worker.
    with ThreadPoolExecutor(1) as pool:
        stalled = pool.submit(hostile.stall_after_headers, str(client.base_url), declared=1000,
                              first=b'{"spec": ', timeout=30)
        time.sleep(0.2)
        job = client.post("/v1/diagnoses", json={"spec": spec_mlp(width=6), "config": SMALL},
                          params={"wait": 30, "reuse": "false"}).json()
        assert job["status"] == "succeeded", dump(job)
        reply = stalled.result()
    assert reply.elapsed_s < TIGHT["read_timeout_s"] + 10, reply
    return reply


# --- Checks on outcomes -----------------------------------------------------------------------

def nonfinite_inputs_said(job: dict[str, Any]) -> None:
    verdict = job["result"]["verdict"]
    assert "nonfinite_input" in verdict["flags"], verdict
    assert "NaN/Inf" in verdict["summary"], verdict["summary"]


def display_name(expected: str) -> Callable[[dict[str, Any]], None]:
    def check(job: dict[str, Any]) -> None:
        assert job["filename"] == expected, job["filename"]
    return check


def _x_with_nonfinite() -> bytes:
    x = hostile.sample_x()
    x[0, 0], x[1, 1] = np.nan, np.inf
    return hostile.npz(x=x)


def _memory_limit_mentions() -> tuple[str, ...]:
    return ("memory limit", "GRADDOCTOR_JOB_MEMORY_LIMIT_MB")


LIMIT = "limit"
EXTERNAL = ("external file",)
EXT_MODEL, EXT_DATA = hostile.external_mlp()
_LIAR_OFFSET, _ = hostile.external_mlp(offset_shift=len(EXT_DATA))
_LIAR_LENGTH, _ = hostile.external_mlp(length_extra=4)
_TRAVERSAL, _ = hostile.external_mlp(location="../mlp.onnx.data")
_MANY_MEMBERS = {f"m/{index}.bin": b"x" for index in range(1001)}
TIGHT_CTX = {name: {LIMIT: name, "limit_value": TIGHT[name]} for name in
             ("max_nodes", "max_nesting", "max_parameters", "max_tensor_elements",
              "max_input_elements")}
MLP = onnx_mlp()
LINEAR_4 = {"type": "Linear", "in_features": 4, "out_features": 4}
X4 = [{"name": "x", "shape": [2, 4]}]


CASES: list[Case] = [
    # Not ONNX, or not quite.
    Case("onnx-not-onnx", upload(b"this is not an ONNX model\n" * 20),
         Fails("invalid_model", ("not an ONNX model",))),
    Case("onnx-truncated", upload(hostile.truncated_onnx),
         Fails("invalid_model", ("truncated",))),
    Case("onnx-protobuf-without-graph", upload(hostile.protobuf_without_graph),
         Fails("invalid_model", ("no graph",))),
    Case("onnx-wrong-magic-png", upload(hostile.png_file), Fails("invalid_model")),
    Case("onnx-wrong-magic-zip-checkpoint", upload(hostile.zip_checkpoint),
         Fails("invalid_model")),
    Case("onnx-empty-file", upload(b""), Refused(422, "validation_error", ("empty",))),
    Case("onnx-protobuf-nested-5000-deep", upload(hostile.protobuf_nesting_bomb),
         Fails("invalid_model", ("protobuf decoding failed",))),
    # External data: refused before any path is followed.
    Case("external-absolute-path", upload(lambda env: hostile.external_data(str(env.secret.path))),
         Fails("external_data", (*EXTERNAL, "absolute"), {"tensor": "w0"})),
    Case("external-dotdot-traversal",
         upload(lambda env: hostile.external_data("../" * 16 + str(env.secret.path)[1:])),
         Fails("external_data", (*EXTERNAL, "'..'"), {"tensor": "w0"})),
    Case("external-symlink", upload(lambda env: hostile.external_data(str(env.secret.link))),
         Fails("external_data", (*EXTERNAL, "absolute"))),
    Case("external-dotdot-with-data-uploaded",
         upload_data(_TRAVERSAL, [("mlp.onnx.data", EXT_DATA)]),
         Fails("external_data", ("'..'", "w0"), {"location": "../mlp.onnx.data"})),
    Case("external-data-file-missing", upload_data(EXT_MODEL, []),
         Fails("external_data", ("no such file", "mlp.onnx.data"), {"tensor": "w0"})),
    Case("external-offset-beyond-file", upload_data(_LIAR_OFFSET, [("mlp.onnx.data", EXT_DATA)]),
         Fails("external_data", ("beyond the end",), {"tensor": "w0"})),
    Case("external-length-lies", upload_data(_LIAR_LENGTH, [("mlp.onnx.data", EXT_DATA)]),
         Fails("external_data", ("length",), {"tensor": "w0"})),
    Case("external-data-part-dotdot-name",
         upload_data(EXT_MODEL, [("../mlp.onnx.data", EXT_DATA)]),
         Refused(422, "invalid_archive", ("'..'",), {"name": "../mlp.onnx.data"})),
    Case("external-data-part-absolute-name",
         upload_data(EXT_MODEL, [(f"/tmp/{MARKER}.data", EXT_DATA)]),
         Refused(422, "invalid_archive", ("absolute",))),
    Case("external-data-part-name-clash",
         upload_data(EXT_MODEL, [("mlp.onnx.data", EXT_DATA), ("mlp.onnx.data/x", b"1")]),
         Refused(422, "invalid_archive", ("needs a folder",))),
    Case("external-data-part-twice",
         upload_data(EXT_MODEL, [("mlp.onnx.data", EXT_DATA), ("./mlp.onnx.data", EXT_DATA)]),
         Refused(422, "invalid_archive", ("given twice",))),
    Case("external-data-parts", upload_data(EXT_MODEL, [("mlp.onnx.data", EXT_DATA)]),
         Succeeds()),
    Case("archive-zip", upload(hostile.zip_archive({"m/model.onnx": EXT_MODEL,
                                                    "m/mlp.onnx.data": EXT_DATA}),
                               filename="model.zip"), Succeeds(display_name("model.onnx"))),
    Case("archive-tar-gz", upload(hostile.tar_archive({"model.onnx": EXT_MODEL,
                                                       "mlp.onnx.data": EXT_DATA}, gz=True),
                                  filename="model.tar.gz"), Succeeds()),
    Case("archive-dotdot-member", upload(hostile.tar_archive(
        {"model.onnx": EXT_MODEL, f"../../{MARKER}.data": EXT_DATA}), filename="m.tar"),
         Refused(422, "invalid_archive", ("'..'", MARKER))),
    Case("archive-absolute-member", upload(hostile.zip_archive(
        {"model.onnx": EXT_MODEL, f"/tmp/{MARKER}.data": EXT_DATA}), filename="m.zip"),
         Refused(422, "invalid_archive", ("absolute",))),
    Case("archive-zip-symlink-member", upload(lambda env: hostile.zip_archive(
        {"model.onnx": EXT_MODEL}, symlinks={"mlp.onnx.data": str(env.secret.path)}),
        filename="m.zip"), Refused(422, "invalid_archive", ("symbolic link", "mlp.onnx.data"))),
    Case("archive-tar-symlink-member", upload(lambda env: hostile.tar_archive(
        {"model.onnx": EXT_MODEL}, symlinks={"mlp.onnx.data": str(env.secret.path)}),
        filename="m.tar"), Refused(422, "invalid_archive", ("symbolic link", "mlp.onnx.data"))),
    Case("archive-two-onnx", upload(hostile.zip_archive(
        {"a.onnx": EXT_MODEL, "b.onnx": EXT_MODEL, "mlp.onnx.data": EXT_DATA}),
        filename="m.zip"), Refused(422, "invalid_archive", ("exactly one .onnx", "'b.onnx'"))),
    Case("archive-no-onnx", upload(hostile.zip_archive({"mlp.onnx.data": EXT_DATA}),
                                   filename="m.zip"),
         Refused(422, "invalid_archive", ("exactly one .onnx", "none"))),
    Case("archive-1001-members", upload(hostile.zip_archive(
        {"model.onnx": EXT_MODEL, **_MANY_MEMBERS}, compress=False), filename="m.zip"),
         Refused(422, "invalid_archive", ("more than 1000 members",))),
    Case("archive-zip-bomb", upload(hostile.zip_bomb, filename="m.zip"),
         Refused(413, "payload_too_large", ("2,097,152",)), server="tight"),
    Case("archive-not-an-archive", upload(EXT_MODEL, filename="m.zip"),
         Refused(422, "invalid_archive", ("not a readable zip or tar",))),
    Case("external-https-url",
         upload(hostile.external_data("https://attacker.example/weights.bin")),
         Fails("external_data", (*EXTERNAL, "attacker.example"))),
    Case("external-file-url", upload(lambda env: hostile.external_data(
        f"file://{env.secret.path}")), Fails("external_data", EXTERNAL)),
    Case("external-relative-name-in-server-cwd", upload(hostile.external_data("pyproject.toml")),
         Fails("external_data", (*EXTERNAL, "pyproject.toml"))),
    # Model bombs: refused up front by the budgets, or stopped by a job limit.
    Case("bomb-initializer-dims-2^31", upload(hostile.huge_initializer),
         Fails("resource_limit", ("'bomb'",), {LIMIT: "max_tensor_elements"})),
    Case("bomb-constant-of-shape-2^60", upload(hostile.constant_of_shape_bomb),
         Fails("resource_limit", ("'y'",), {LIMIT: "max_tensor_elements"})),
    Case("bomb-expand-2^60", upload(hostile.expand_bomb),
         Fails("resource_limit", ("'y'",), {LIMIT: "max_tensor_elements"})),
    Case("bomb-tile-2^40", upload(hostile.tile_bomb),
         Fails("resource_limit", ("'y'",), {LIMIT: "max_tensor_elements"})),
    Case("bomb-resize-x100000", upload(hostile.resize_bomb),
         Fails("resource_limit", ("'y'",), {LIMIT: "max_tensor_elements"})),
    Case("bomb-25000-node-chain", upload(partial(hostile.node_chain, 25_000)),
         Fails("resource_limit", ("25000 nodes",), {LIMIT: "max_nodes"})),
    Case("bomb-nested-if-20", upload(partial(hostile.nested_subgraphs, "If", 20)),
         Fails("resource_limit", ("nested",), {LIMIT: "max_nesting"})),
    Case("bomb-nested-loop-20", upload(partial(hostile.nested_subgraphs, "Loop", 20)),
         Fails("resource_limit", ("nested",), {LIMIT: "max_nesting"})),
    Case("bomb-nested-scan-20", upload(partial(hostile.nested_subgraphs, "Scan", 20)),
         Fails("resource_limit", ("nested",), {LIMIT: "max_nesting"})),
    Case("bomb-recursive-local-function", upload(hostile.recursive_function),
         Fails("unsupported_operator", ("Again", "local"), {"node": "enter"})),
    Case("bomb-expand-to-runtime-size",
         upload(hostile.runtime_expand_bomb,
                hostile.npz(x=np.ones(1, np.float32), size=np.array([1e12], np.float32))),
         Fails("job_memory_limit", _memory_limit_mentions(), {LIMIT: "job_memory_limit_mb"})),
    Case("bomb-compute-past-time-limit", post_spec(*TIME_BOMB),
         Fails("job_time_limit", ("6 s", "GRADDOCTOR_JOB_TIME_LIMIT_S"),
               {LIMIT: "job_time_limit_s", "limit_value": 6.0}), server="tight", slow=True),
    # Operators.
    Case("op-custom-domain", upload(hostile.custom_domain_op),
         Fails("unsupported_operator", ("Teleport", "com.evil", "3", "beam_me_up"),
               {"op_type": "Teleport", "domain": "com.evil", "opset": 3, "node": "beam_me_up"})),
    Case("op-without-converter", upload(hostile.unsupported_standard_op),
         Fails("unsupported_operator", ("ImageDecoder", "ai.onnx", "20", "decode"),
               {"op_type": "ImageDecoder", "opset": 20, "node": "decode"})),
    Case("op-opset-99", upload(hostile.opset_99),
         Fails("unsupported_operator", ("opset 99", "future_relu"),
               {"op_type": "Relu", "opset": 99, "node": "future_relu"})),
    # Sample inputs.
    Case("inputs-pickled-objects",
         upload(MLP, hostile.npz(x=np.array([{"a": 1}, None], dtype=object))),
         Fails("invalid_inputs", ("pickled", "never loaded"))),
    Case("inputs-wrong-name", upload(MLP, hostile.npz(y=hostile.sample_x())),
         Fails("invalid_inputs", ("'y'", "not a model input"))),
    Case("inputs-wrong-dtype", upload(MLP, hostile.npz(x=np.ones((4, 8), np.int64))),
         Fails("invalid_inputs", ("int64", "float"))),
    Case("inputs-wrong-shape", upload(MLP, hostile.npz(x=hostile.sample_x(width=5))),
         Fails("invalid_inputs", ("axis 1",), {"input": "x", "axis": 1})),
    Case("inputs-nan-and-inf", upload(MLP, _x_with_nonfinite()), Succeeds(nonfinite_inputs_said)),
    Case("inputs-big-endian-floats", upload(MLP, hostile.npz(x=hostile.sample_x().astype(">f4"))),
         Succeeds()),
    Case("inputs-zero-size", upload(MLP, hostile.npz(x=np.zeros((0, 8), np.float32))),
         Fails("invalid_inputs", ("empty",))),
    Case("inputs-100M-elements-in-300KiB", upload(MLP, partial(hostile.npz_bomb, 100_000_000)),
         Fails("resource_limit", ("100,000,000",), {LIMIT: "max_input_elements"})),
    Case("inputs-400GB-of-strings-declared", upload(MLP, hostile.zip_of(
        {"x.npy": hostile.npy_header_only("<U100000000", (1000,))})),
         Fails("invalid_inputs", ("dtype <U100000000",))),
    Case("inputs-member-not-npy", upload(MLP, hostile.zip_of({"x.txt": b"1,2,3"})),
         Fails("invalid_inputs", ("'x.txt'", "not a .npy"))),
    # Specs.
    Case("spec-unknown-type", post_spec({"inputs": X4, "layers": [{"type": "Lineer"}]}),
         Fails("invalid_spec", ("layers[0].type", "Linear"))),
    Case("spec-bad-kwargs", post_spec({"inputs": X4, "layers": [
        {"type": "Linear", "in_features": 4, "out_features": -3, "activation": "relu"}]}),
         Fails("invalid_spec", ("layers[0].",))),
    Case("spec-repeat-10^9", post_spec({"inputs": X4, "layers": [
        {"type": "Repeat", "times": 10**9, "layers": [LINEAR_4]}]}),
         Fails("resource_limit", ("max_nodes",), {LIMIT: "max_nodes"})),
    Case("spec-width-needing-400TB", post_spec({"inputs": [{"name": "x", "shape": [2, 10**7]}],
                                                "layers": [{"type": "Linear",
                                                            "in_features": 10**7,
                                                            "out_features": 10**7}]}),
         Fails("resource_limit", ("max_parameters",), {LIMIT: "max_parameters"})),
    Case("spec-containers-nested-12", post_spec(hostile.nested_containers(12)),
         Fails("resource_limit", ("nested",), {LIMIT: "max_nesting"})),
    Case("spec-containers-nested-1000",
         post_raw(partial(hostile.nested_containers_json, 1000), params={"wait": 60}),
         Refused(400, "invalid_json", ("nested deeper",))),
    Case("spec-int-10^400", post_spec({"inputs": X4, "layers": [
        {"type": "Linear", "in_features": 4, "out_features": 10**400}]}),
         Fails("invalid_spec", ("layers[0].out_features",))),
    Case("spec-wrong-json-types", post_spec({"inputs": "x", "layers": 5}),
         Fails("invalid_spec", ("inputs",))),
    Case("json-float-1e999", post_raw(b'{"spec": {"inputs": [], "layers": [1e999]}}'),
         Refused(400, "invalid_json", ("1e999",))),
    Case("json-nested-100000-deep", post_raw(partial(hostile.deep_json, 100_000)),
         Refused(400, "invalid_json", ("nested deeper",))),
    Case("json-19MB-of-tiny-values", post_raw(partial(hostile.json_values_bomb, 19)),
         Refused(413, "payload_too_large", ("JSON values",))),
    Case("json-duplicated-keys", post_raw(b'{"spec": {"layers": []}, "spec": {"inputs": []}}'),
         Refused(400, "invalid_json", ("duplicated key 'spec'",))),
    # Operator budgets (GRADDOCTOR_MAX_*) reach the engine.
    Case("budget-max-nodes-setting", upload(partial(hostile.node_chain, 60)),
         Fails("resource_limit", ("60 nodes",), TIGHT_CTX["max_nodes"]), server="tight"),
    Case("budget-max-nesting-setting", post_spec(hostile.nested_containers(3)),
         Fails("resource_limit", ("nested",), TIGHT_CTX["max_nesting"]), server="tight"),
    Case("budget-max-parameters-setting", post_spec({"inputs": [{"name": "x", "shape": [2, 5000]}],
                                                     "layers": [{"type": "Linear",
                                                                 "in_features": 5000,
                                                                 "out_features": 5000}]}),
         Fails("resource_limit", (), TIGHT_CTX["max_parameters"]), server="tight"),
    Case("budget-max-tensor-elements-setting",
         post_spec({"inputs": [{"name": "x", "shape": [2, 4000]}],
                    "layers": [{"type": "Linear", "in_features": 4000, "out_features": 4500}]}),
         Fails("resource_limit", (), TIGHT_CTX["max_tensor_elements"]), server="tight"),
    Case("budget-max-input-elements-setting",
         post_spec({"inputs": [{"name": "x", "shape": [4, 1_000_000]}],
                    "layers": [{"type": "Tanh"}]}),
         Fails("resource_limit", (), TIGHT_CTX["max_input_elements"]), server="tight"),
    # HTTP.
    Case("http-body-streamed-past-limit", stream_over_limit,
         Refused(413, "payload_too_large", ("2,097,152",)), server="tight"),
    Case("http-declared-length-past-limit", declared_too_long,
         Refused(413, "payload_too_large", ("over the limit",)), server="tight"),
    Case("http-urlencoded-form", post_raw(b"spec=1", "application/x-www-form-urlencoded"),
         Refused(415, "unsupported_media_type", ("multipart/form-data",))),
    Case("http-only-config-part", post_parts(("config", None, b"{}")),
         Refused(422, "validation_error", ("model",))),
    Case("http-inputs-part-twice", post_parts(("model", "m.onnx", MLP),
                                              ("inputs", "a.npz", b"PK\x03\x04"),
                                              ("inputs", "b.npz", b"PK\x03\x04")),
         Refused(400, "bad_request", ("more than once",))),
    Case("http-multipart-garbage",
         post_raw(b"this is no multipart body", "multipart/form-data; boundary=hostile"),
         Refused(400, "bad_request", ("malformed multipart",))),
    Case("http-multipart-without-boundary", post_raw(b"--x--", "multipart/form-data"),
         Refused(400, "bad_request", ("boundary",))),
    Case("filename-unicode", upload(MLP, filename="模型 ✓ ü.onnx"),
         Succeeds(display_name("模型 ✓ ü.onnx"))),
    Case("filename-path-traversal", upload(MLP, filename=f"../../../../../../tmp/{MARKER}.onnx"),
         Succeeds(display_name(f"{MARKER}.onnx"))),
    Case("filename-windows-path", upload(MLP, filename=f"C:\\Windows\\{MARKER}.onnx"),
         Succeeds(display_name(f"{MARKER}.onnx"))),
    Case("filename-control-characters", post_parts(("model", "a\x00b\x1b[31m\u202ec.onnx", MLP),
                                                   ("config", None, json.dumps(SMALL).encode())),
         Succeeds(display_name("ab[31mc.onnx"))),
    Case("filename-10000-chars", upload(MLP, filename="a" * 10_000 + ".onnx"),
         Refused(400, "bad_request", ("header size",))),
    Case("wait-negative", upload(MLP, wait=-1), Refused(422, "validation_error", ("query.wait",))),
    Case("wait-huge", upload(MLP, wait=10**12), Refused(422, "validation_error", ("query.wait",))),
    Case("wait-not-a-number", upload(MLP, wait="soon"),
         Refused(422, "validation_error", ("query.wait",))),
    Case("wait-nan", upload(MLP, wait="nan"), Refused(422, "validation_error", ("query.wait",))),
    Case("list-offset-past-int64", get(f"/v1/diagnoses?offset={2**64}"),
         Refused(422, "validation_error", ("query.offset",))),
    Case("http-slow-client", slow_client,
         Refused(408, "request_timeout", ("no data received for 2 s",)), server="tight"),
]


def _params() -> Iterator[Any]:
    for case in CASES:
        marks = [pytest.mark.slow] if case.slow else []
        yield pytest.param(case, id=case.id, marks=marks)


def _check(expect: Expect, status: int, body: dict[str, Any], client: httpx.Client) -> None:
    if isinstance(expect, Refused):
        assert status == expect.status, body
        assert body["error"] == expect.error, body
        for word in expect.mentions:
            assert word in body["detail"], body
        for key, value in expect.context.items():
            assert body.get(key) == value, body
        return
    assert status in (200, 202), body
    job = body if status == 200 else wait_for_status(
        client, body["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
    if isinstance(expect, Succeeds):
        assert job["status"] == "succeeded", dump(job)
        expect.check(job)
        return
    assert job["status"] == "failed", dump(job)
    error = job["error"]
    assert error["type"] == expect.error, dump(job)
    assert "\n" not in error["detail"], error
    assert len(error["detail"]) < 2000, error
    for word in expect.mentions:
        assert word in error["detail"], error
    for key, value in expect.context.items():
        assert (error["context"] or {}).get(key) == value, error


@pytest.mark.parametrize("case", list(_params()))
def test_hostile_input_is_refused_clearly(env: Env, case: Case) -> None:
    proc = env.main if case.server == "main" else env.tight
    with proc.client() as client:
        reply = case.send(env, client)
        text = reply.text
        env.texts.append(text)
        assert reply.status_code < 500, text
        assert env.secret.token not in text
        assert reply.headers.get("content-type", "").startswith("application/json"), text
        _check(case.expect, reply.status_code, json.loads(text), client)
    for each in (env.main, env.tight):
        assert httpx.get(f"{each.base_url}/healthz", timeout=10).status_code == 200


def test_the_service_is_unharmed_after_the_table(env: Env) -> None:
    with env.main.client() as client:
        canary = wait_for_status(client, env.canary_id, {"succeeded", "failed", "cancelled"},
                                 timeout=180)
        assert canary["status"] == "succeeded", dump(canary)
        assert canary["attempts"] == 1, dump(canary)
    for proc in (env.main, env.tight):
        with proc.client() as client:
            job = client.post("/v1/diagnoses", json={"spec": spec_mlp(width=5), "config": SMALL},
                              params={"wait": 60, "reuse": "false"}).json()
            assert job["status"] == "succeeded", dump(job)
        assert proc.data_dir is not None
        assert list((proc.data_dir / "staging").iterdir()) == [], "an upload was left behind"
        new_log = proc.log()[env.log_offsets["main" if proc is env.main else "tight"]:]
        assert "unexpected error" not in new_log, new_log[-5000:]
        assert env.secret.token not in new_log
    _assert_secret_untouched(env.secret)
    assert all(env.secret.token not in text for text in env.texts)
    # Where a client-supplied name could have landed: the folders it names, relative to the
    # server's working directory (the repository root), and anywhere in the data directories.
    for folder in (Path("/tmp"), ROOT, Path.cwd()):
        assert not list(folder.glob(f"*{MARKER}*")), f"{MARKER} written in {folder}"
    for proc in (env.main, env.tight):
        assert proc.data_dir is not None
        assert not list(proc.data_dir.glob(f"**/*{MARKER}*")), f"{MARKER} in the data dir"


def _assert_secret_untouched(secret: Secret) -> None:
    after = secret.path.stat()  # before reading it ourselves
    if secret.atime_measurable:
        assert after.st_atime_ns == secret.stat.st_atime_ns, "the secret file was read"
    assert after.st_mtime_ns == secret.stat.st_mtime_ns
    assert secret.path.read_bytes().startswith(secret.token.encode())


def test_every_engine_budget_is_an_operator_setting_and_documented() -> None:
    readme, security = ((ROOT / name).read_text() for name in ("README.md", "SECURITY.md"))
    defaults = Limits()
    for budget in fields(Limits):
        if budget.name == "max_model_bytes":  # the upload limit doubles as this one
            assert Settings(max_upload_bytes=4096).limits.max_model_bytes == 4096
            continue
        assert Settings.model_fields[budget.name].default == getattr(defaults, budget.name)
        assert getattr(Settings(**{budget.name: 7}).limits, budget.name) == 7
        variable = f"`GRADDOCTOR_{budget.name.upper()}`"
        assert readme.count(variable) >= 2, f"{variable}: settings table and Limits"
        assert variable in security
