"""Builders for the hostile-input table (test_hostile_inputs.py): bad ONNX files, model bombs,
bad .npz archives, JSON bombs and raw-socket HTTP clients that a well-behaved library refuses to
produce.

Every ONNX builder returns bytes; none of them is a valid model the service should run.
"""

from __future__ import annotations

import io
import select
import socket
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.service.conftest import onnx_mlp

OPSET = 17


def _value(name: str, shape: list[Any] | None, elem: int = TensorProto.FLOAT) -> Any:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any],
           initializers: Sequence[Any] = (), opset: int = OPSET,
           extra_opsets: Sequence[Any] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    *extra_opsets])
    model.ir_version = 8
    return model


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


# --- Not ONNX, or not quite -------------------------------------------------------------------

def truncated_onnx() -> bytes:
    data = onnx_mlp(depth=3, width=32)
    return data[: len(data) // 2]


def protobuf_without_graph() -> bytes:
    return onnx.ModelProto(ir_version=8, producer_name="no graph here").SerializeToString()


def png_file() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def zip_checkpoint() -> bytes:
    """What torch.save writes (a zip with a pickle inside), uploaded as if it were ONNX."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/version", b"3\n")
    return buffer.getvalue()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def protobuf_nesting_bomb(levels: int = 5000) -> bytes:
    """A ModelProto whose graph nests If-style subgraphs ``levels`` deep, written by hand:
    protobuf's own serializer refuses past 100 levels, a hostile client does not."""
    graph = b""
    for _ in range(levels):
        attribute = _field(1, b"then_branch") + _varint(20 << 3) + _varint(5) + _field(6, graph)
        graph = _field(1, _field(4, b"If") + _field(5, attribute))  # node.op_type, .attribute
    return _varint(1 << 3) + _varint(8) + _field(7, graph)  # ir_version 8, graph


# --- External data ----------------------------------------------------------------------------

def external_data(location: str) -> bytes:
    """The test MLP with its first weight 'stored' at ``location``."""
    model = onnx.load_from_string(onnx_mlp())
    weight = next(t for t in model.graph.initializer if t.name == "w0")
    dims = list(weight.dims)
    weight.Clear()
    weight.name, weight.data_type = "w0", TensorProto.FLOAT
    weight.dims.extend(dims)
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "256")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return _bytes(model)


def external_mlp(width: int = 80, location: str = "mlp.onnx.data", *,
                 offset_shift: int = 0, length_extra: int = 0) -> tuple[bytes, bytes]:
    """The test MLP with every weight in one external file, as ``dynamo=True`` writes it:
    (model bytes, data bytes). ``width`` 80 makes the middle weight large enough that the engine
    reads it lazily; ``offset_shift``/``length_extra`` make the references lie."""
    model = onnx.load_from_string(onnx_mlp(width=width))
    data = bytearray()
    for tensor in model.graph.initializer:
        raw = numpy_helper.to_array(tensor).tobytes()
        offset = len(data)
        data += raw
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset + offset_shift)),
                           ("length", str(len(raw) + length_extra))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return _bytes(model), bytes(data)


def zip_archive(members: dict[str, bytes], symlinks: dict[str, str] | None = None,
                compress: bool = True) -> bytes:
    """A .zip with these members (and symbolic links, as Info-ZIP stores them)."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_archive(members: dict[str, bytes], symlinks: dict[str, str] | None = None,
                gz: bool = False) -> bytes:
    """A .tar (or .tar.gz) with these members and symbolic links."""
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


def zip_bomb(size: int = 64 * 2**20) -> bytes:
    """A model archive whose data member inflates from ~70 KiB to ``size`` bytes of zeros."""
    model, _ = external_mlp()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("m.onnx", model)
        with archive.open("mlp.onnx.data", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(size // len(chunk)):
                member.write(chunk)
    return buffer.getvalue()


# --- Model bombs ------------------------------------------------------------------------------

def huge_initializer() -> bytes:
    """Declares a float tensor of 2^31 × 2^10 elements (8 TiB) with no data."""
    model = onnx.load_from_string(onnx_mlp())
    model.graph.initializer.append(
        TensorProto(name="bomb", data_type=TensorProto.FLOAT, dims=[2**31, 2**10]))
    return _bytes(model)


def _int64(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def constant_of_shape_bomb() -> bytes:
    node = helper.make_node("ConstantOfShape", ["shape"], ["y"], name="bomb")
    return _bytes(_model([node], [], [_value("y", ["a", "b", "c"])],
                         [_int64("shape", [2**20] * 3)]))


def expand_bomb() -> bytes:
    node = helper.make_node("Expand", ["x", "shape"], ["y"], name="bomb")
    return _bytes(_model([node], [_value("x", [1])], [_value("y", ["a", "b", "c"])],
                         [_int64("shape", [2**20] * 3)]))


def tile_bomb() -> bytes:
    node = helper.make_node("Tile", ["x", "repeats"], ["y"], name="bomb")
    return _bytes(_model([node], [_value("x", [4, 4])], [_value("y", ["a", "b"])],
                         [_int64("repeats", [2**20, 2**20])]))


def resize_bomb() -> bytes:
    scales = numpy_helper.from_array(np.array([1, 1, 1e5, 1e5], np.float32), "scales")
    roi = numpy_helper.from_array(np.array([], np.float32), "roi")
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="bomb", mode="nearest")
    return _bytes(_model([node], [_value("x", [1, 1, 4, 4])], [_value("y", ["n", "c", "h", "w"])],
                         [roi, scales]))


def runtime_expand_bomb() -> bytes:
    """Expand to a size computed from an input's values: no static analysis can see it."""
    nodes = [helper.make_node("ReduceMax", ["size"], ["largest"], keepdims=1),
             helper.make_node("Cast", ["largest"], ["shape"], to=TensorProto.INT64),
             helper.make_node("Expand", ["x", "shape"], ["big"], name="bomb"),
             helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0)]
    return _bytes(_model(nodes, [_value("x", [1]), _value("size", [1])], [_value("y", [])]))


def node_chain(count: int) -> bytes:
    names = ["x", *(f"h{i}" for i in range(1, count)), "y"]
    nodes = [helper.make_node("Relu", [names[i]], [names[i + 1]]) for i in range(count)]
    return _bytes(_model(nodes, [_value("x", [2, 4])], [_value("y", [2, 4])]))


def nested_subgraphs(op: str, levels: int) -> bytes:
    """``levels`` of ``op`` (If, Loop or Scan), each holding the next in a graph attribute.

    The bodies need not be valid: the nesting budget is checked before onnx's checker.
    """
    leaf = helper.make_graph([helper.make_node("Identity", ["x"], ["o0"])], "leaf", [],
                             [_value("o0", [2])])
    inner = leaf
    for level in range(1, levels + 1):
        if op == "If":
            node = helper.make_node("If", ["cond"], [f"o{level}"], then_branch=inner,
                                    else_branch=leaf)
        elif op == "Loop":
            node = helper.make_node("Loop", ["trip", "cond", "x"], [f"o{level}"], body=inner)
        else:
            node = helper.make_node("Scan", ["x"], [f"o{level}"], body=inner, num_scan_inputs=1)
        inner = helper.make_graph([node], f"level{level}", [], [_value(f"o{level}", [2])])
    constants = [numpy_helper.from_array(np.array(True), "cond"), _int64("trip", [2])]
    return _bytes(_model(list(inner.node), [_value("x", [2])], [_value(f"o{levels}", [2])],
                         constants))


def recursive_function() -> bytes:
    call = helper.make_node("Again", ["x"], ["y"], domain="local")
    function = helper.make_function("local", "Again", ["x"], ["y"], [call],
                                    [helper.make_opsetid("", OPSET),
                                     helper.make_opsetid("local", 1)])
    model = _model([helper.make_node("Again", ["x"], ["y"], domain="local", name="enter")],
                   [_value("x", [2])], [_value("y", [2])],
                   extra_opsets=[helper.make_opsetid("local", 1)])
    model.functions.append(function)
    return _bytes(model)


# --- Operators --------------------------------------------------------------------------------

def custom_domain_op() -> bytes:
    node = helper.make_node("Teleport", ["x"], ["y"], name="beam_me_up", domain="com.evil")
    return _bytes(_model([node], [_value("x", [2, 4])], [_value("y", [2, 4])],
                         extra_opsets=[helper.make_opsetid("com.evil", 3)]))


def unsupported_standard_op() -> bytes:
    node = helper.make_node("ImageDecoder", ["encoded"], ["image"], name="decode")
    return _bytes(_model([node], [_value("encoded", [64], TensorProto.UINT8)],
                         [_value("image", ["h", "w", 3], TensorProto.UINT8)], opset=20))


def opset_99() -> bytes:
    node = helper.make_node("Relu", ["x"], ["y"], name="future_relu")
    return _bytes(_model([node], [_value("x", [2, 4])], [_value("y", [2, 4])], opset=99))


# --- .npz archives ----------------------------------------------------------------------------

def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npz_bomb(elements: int) -> bytes:
    """A few hundred KiB that decompress to ``elements`` bytes of zeros."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros(elements, np.uint8))
    return buffer.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npy_header_only(descr: str, shape: tuple[int, ...]) -> bytes:
    """A .npy member that declares an array and holds none of it."""
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * ((-len(header) - 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def sample_x(batch: int = 4, width: int = 8) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(batch, width)).astype(np.float32)


# --- Specs and JSON ---------------------------------------------------------------------------

def nested_containers(levels: int) -> dict[str, Any]:
    layer: dict[str, Any] = {"type": "Linear", "in_features": 4, "out_features": 4}
    for _ in range(levels):
        layer = {"type": "Sequential", "layers": [layer]}
    return {"inputs": [{"name": "x", "shape": [2, 4]}], "layers": [layer]}


def nested_containers_json(levels: int) -> bytes:
    """:func:`nested_containers` as a request body, written directly: json.dumps gives up
    at about 1000 levels, a hostile client does not."""
    opening = b'{"type": "Sequential", "layers": [' * levels
    leaf = b'{"type": "Linear", "in_features": 4, "out_features": 4}'
    return (b'{"spec": {"inputs": [{"name": "x", "shape": [2, 4]}], "layers": [' + opening + leaf
            + b"]}" * levels + b"]}}")


def deep_json(levels: int) -> bytes:
    return b'{"spec": {"inputs": [], "layers": ' + b"[" * levels + b"]" * levels + b"}}"


def json_values_bomb(megabytes: int) -> bytes:
    """Many tiny JSON values: a few MB that a naive parser turns into hundreds of MB."""
    count = megabytes * 1024 * 1024 // 3
    return b'{"spec": {"inputs": [], "layers": [' + b"[]," * count + b"[]]}}"


# --- Raw HTTP ---------------------------------------------------------------------------------

@dataclass
class RawReply:
    """What a raw-socket client saw: the status and body, and how much it managed to send."""

    status_code: int
    text: str
    sent: int = 0
    elapsed_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        import json

        return json.loads(self.text)


def _connect(base_url: str, timeout: float) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _read_reply(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], str]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body.decode("utf-8", "replace")


def stream_forever(base_url: str, *, content_type: str, preamble: bytes, total: int,
                   chunk: int = 64 * 1024) -> RawReply:
    """POST a chunked body of ``total`` bytes (no Content-Length), stopping as soon as the
    server answers or stops reading; report what was sent."""
    started = time.monotonic()
    sock = _connect(base_url, timeout=10)
    try:
        sock.sendall(f"POST /v1/diagnoses HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}"
                     "\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        piece = b"\0" * chunk
        framed = f"{chunk:x}\r\n".encode() + piece + b"\r\n"
        sock.sendall(f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n")
        sent = len(preamble)
        sock.settimeout(5)
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(framed)
                sent += chunk
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server stopped reading: what it answered is next
        status, headers, text = _read_reply(sock, timeout=10)
        return RawReply(status, text, sent, time.monotonic() - started, headers)
    finally:
        sock.close()


def declared_too_long(base_url: str, declared: int) -> RawReply:
    """Headers that announce ``declared`` bytes; the server must answer before any arrive."""
    started = time.monotonic()
    sock = _connect(base_url, timeout=10)
    try:
        sock.sendall(f"POST /v1/diagnoses HTTP/1.1\r\nHost: test\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {declared}\r\n\r\n".encode())
        status, headers, text = _read_reply(sock, timeout=10)
        return RawReply(status, text, 0, time.monotonic() - started, headers)
    finally:
        sock.close()


def stall_after_headers(base_url: str, *, declared: int, first: bytes,
                        timeout: float) -> RawReply:
    """Send headers promising ``declared`` bytes and ``first`` of them, then nothing."""
    started = time.monotonic()
    sock = _connect(base_url, timeout=timeout)
    try:
        sock.sendall(f"POST /v1/diagnoses HTTP/1.1\r\nHost: test\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {declared}\r\n\r\n".encode() + first)
        status, headers, text = _read_reply(sock, timeout=timeout)
        return RawReply(status, text, len(first), time.monotonic() - started, headers)
    finally:
        sock.close()
