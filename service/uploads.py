"""Reading a submission off the wire: streamed to disk, counted, never buffered whole.

The body limit is enforced chunk by chunk as the bytes arrive (a lying or absent Content-Length
changes nothing), a client that stalls is dropped after ``read_timeout_s``, and files go
straight into a staging folder while they are hashed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from pydantic import ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from diagnostics import strict_json
from diagnostics.errors import InvalidSpecError, ResourceLimitError
from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.loading.spec.parsing import (
    check_document_bounds,
    max_document_bytes,
    max_json_values,
)
from service.blobs import ARCHIVE_FILE, DATA_DIR, INPUTS_FILE, MODEL_FILE, SPEC_FILE
from service.data_files import MAX_MEMBERS, data_path, is_archive_name, unpack_archive
from service.errors import (
    NO_SPACE,
    BadRequestError,
    InsufficientStorageError,
    InvalidRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)
from service.schemas import JobCreate, JobKind

MAX_FIELD_BYTES = 64 * 1024
_FILES = {"model": MODEL_FILE, "inputs": INPUTS_FILE}
_FIELDS = ("config",)
_DATA = "data"  # repeatable: one part per external data file, its filename the location


class InvalidJSONError(BadRequestError):
    error = "invalid_json"


@dataclass
class Submission:
    """What a request asked for; its files are in the staging folder."""

    kind: JobKind
    config: dict[str, Any] | None = None
    filename: str | None = None
    model_sha256: str = ""
    inputs_sha256: str | None = None
    data_sha256: str | None = None  # the external data files (or the archive), if any
    sizes: dict[str, int] = field(default_factory=dict)


def parse_json(raw: bytes | str, what: str) -> Any:
    """Strict JSON: no NaN/Infinity (nor numbers that overflow to it), no duplicated keys,
    bounded nesting."""
    try:
        return strict_json.loads(raw)
    except RecursionError:
        raise InvalidJSONError(f"{what}: JSON nested too deeply", field=what) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSONError(f"{what}: invalid JSON: {exc}", field=what) from None


async def body_chunks(request: Request, limit: int, timeout_s: float) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk; 413 as soon as it passes ``limit``, 408 on a stall."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {int(declared):,} bytes is over the limit of "
                                   f"{limit:,} bytes", limit=limit)
    stream = request.stream().__aiter__()
    total = 0
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeoutError(f"no data received for {timeout_s:g} s") from None
        except ClientDisconnect:
            raise BadRequestError("the client disconnected during the upload") from None
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(f"request body is over the limit of {limit:,} bytes",
                                       limit=limit)
        yield chunk


async def read_submission(request: Request, staging: Path, *, limit: int,
                          timeout_s: float, limits: Limits = DEFAULT_LIMITS) -> Submission:
    """Parse a JSON or multipart submission into ``staging``; raise a ServiceError if bad.

    A JSON body is parsed in memory, so it is held to what a spec can need under ``limits``
    (bytes, values, depth) before it is parsed; files stream to disk up to ``limit``.
    """
    media, options = parse_options_header(request.headers.get("content-type"))
    if media == b"application/json":
        limit = min(limit, max_document_bytes(limits) + MAX_FIELD_BYTES)
    chunks = body_chunks(request, limit, timeout_s)
    try:
        if media == b"application/json":
            return await _read_json(chunks, staging, limits)
        if media == b"multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise BadRequestError("multipart/form-data without a boundary")
            return await _read_form(chunks, boundary, staging, limit)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise InsufficientStorageError("no space left for the upload on the server") from None
        raise
    raise UnsupportedMediaTypeError(
        f"unsupported content type {media.decode('latin-1') or '(none)'!r}: send "
        "multipart/form-data with an ONNX 'model' file, or application/json with a 'spec'")


async def _read_json(chunks: AsyncIterator[bytes], staging: Path, limits: Limits) -> Submission:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
    # Parsing takes up to a second on a large spec: off the event loop.
    return await run_in_threadpool(_save_json, bytes(body), staging, limits)


def _parse_body_json(raw: bytes, limits: Limits) -> Any:
    """A spec submission's JSON body, refused before parsing if it holds more values or deeper
    nesting than a spec can need (a 100 MB body of ``[],`` would cost gigabytes once parsed)."""
    try:
        text = raw.decode("utf-8")
        check_document_bounds(text, limits, extra_depth=1)
    except UnicodeDecodeError as exc:
        raise InvalidJSONError(f"body: not UTF-8 ({exc.reason} at byte {exc.start})",
                               field="body") from None
    except ResourceLimitError as exc:
        raise PayloadTooLargeError(f"body: {exc.detail}", field="body",
                                   max_values=max_json_values(limits)) from None
    except InvalidSpecError as exc:
        raise InvalidJSONError(f"body: {exc.detail}", field="body") from None
    return parse_json(text, "body")


def _save_json(raw: bytes, staging: Path, limits: Limits) -> Submission:
    data = _parse_body_json(raw, limits)
    try:
        job = JobCreate.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in ("body", *first["loc"]))
        raise InvalidRequestError(f"{where}: {first['msg']}", field=where) from None
    canonical = json.dumps(job.spec, sort_keys=True, separators=(",", ":")).encode()
    (staging / SPEC_FILE).write_bytes(canonical)
    return Submission(JobKind.SPEC, config=job.config,
                      model_sha256=hashlib.sha256(canonical).hexdigest(),
                      sizes={"spec": len(canonical)})


async def _read_form(chunks: AsyncIterator[bytes], boundary: bytes, staging: Path,
                     limit: int) -> Submission:
    form = _FormWriter(staging)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:  # not multipart at all, or a part header over 4 KiB
        raise BadRequestError(f"malformed multipart body: {str(exc)[:200]}") from None
    finally:
        form.close()
    if not form.ended:
        raise BadRequestError("truncated multipart body")
    submission = form.submission()
    if form.archive is not None:  # unpacking reads and writes up to `limit` bytes: off the loop
        await run_in_threadpool(_unpack, form, submission, staging, limit)
    return submission


def _unpack(form: _FormWriter, submission: Submission, staging: Path, limit: int) -> None:
    archive = staging / ARCHIVE_FILE
    try:
        name = unpack_archive(archive, form.archive or "", staging, limit)
    finally:
        archive.unlink(missing_ok=True)
    submission.filename = _clean_filename(name.encode()) or submission.filename
    submission.data_sha256 = submission.model_sha256  # the archive holds model and data


class _FormWriter:
    """python-multipart callbacks: files to disk (hashed), the config field to memory."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.ended = False
        self.seen: set[str] = set()
        self.hashes: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.fields: dict[str, bytearray] = {}
        self.filename: str | None = None
        self.archive: str | None = None  # the model part's filename when it is an archive
        self.data_files: dict[str, str] = {}  # location -> sha256
        self._location = ""
        self._headers: dict[bytes, bytes] = {}
        self._name = self._value = b""
        self._part: str | None = None
        self._file: IO[bytes] | None = None
        self._hash = hashlib.sha256()

    def callbacks(self) -> Any:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done, "on_part_data": self._data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._name.lower()] = self._value
        self._name = self._value = b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == _DATA:
            self._begin_data(options.get(b"filename"))
            return
        if name not in _FILES and name not in _FIELDS:
            raise BadRequestError(f"unexpected form field {name[:64]!r}; expected 'model' (ONNX "
                                  "file or .zip/.tar archive), 'data' (external data files, "
                                  "repeatable), 'inputs' (.npz file) and 'config' (JSON)",
                                  field=name[:64])
        if name in self.seen:
            raise BadRequestError(f"form field {name!r} given more than once", field=name)
        self.seen.add(name)
        self._part = name
        if name in _FILES:
            target = self.staging / _FILES[name]
            if name == "model":
                raw = options.get(b"filename", b"")
                self.filename = _clean_filename(raw)
                if is_archive_name(self.filename):
                    self.archive, target = self.filename, self.staging / ARCHIVE_FILE
            self._file = open(target, "wb")
            self._hash = hashlib.sha256()
            self.sizes[name] = 0
        else:
            self.fields[name] = bytearray()

    def _begin_data(self, raw: bytes | None) -> None:
        """A 'data' part: written under data/ at the path its filename names (checked)."""
        location = (raw or b"").decode("utf-8", "replace")
        if not location:
            raise InvalidRequestError("data: each data part needs a filename, the location "
                                      "its tensors name (e.g. model.onnx.data)", field="data")
        if len(self.data_files) >= MAX_MEMBERS:
            raise InvalidRequestError(f"data: more than {MAX_MEMBERS} data files",
                                      field="data", max_files=MAX_MEMBERS)
        self._file = open(data_path(self.staging / DATA_DIR, location), "wb")
        self._part, self._location = _DATA, location
        self._hash = hashlib.sha256()
        self.sizes[_DATA] = self.sizes.get(_DATA, 0)
        self.seen.add(_DATA)

    def _data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self._file is not None:
            self._file.write(piece)
            self._hash.update(piece)
            self.sizes[self._part or ""] += len(piece)
            return
        buffer = self.fields[self._part or ""]
        if len(buffer) + len(piece) > MAX_FIELD_BYTES:
            raise PayloadTooLargeError(f"form field {self._part!r} is over {MAX_FIELD_BYTES:,} "
                                       "bytes", field=self._part)
        buffer += piece

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self._part == _DATA:
                self.data_files[self._location] = self._hash.hexdigest()
            else:
                self.hashes[self._part or ""] = self._hash.hexdigest()
        self._part = None

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def submission(self) -> Submission:
        if "model" not in self.seen:
            raise InvalidRequestError("model: an ONNX file is required (form field 'model')",
                                      field="model")
        if self.sizes["model"] == 0:
            raise InvalidRequestError("model: the uploaded file is empty", field="model")
        if self.archive is not None and self.data_files:
            raise InvalidRequestError("data: send the data files inside the archive or as "
                                      "'data' parts, not both", field="data")
        if "inputs" in self.seen:
            with open(self.staging / INPUTS_FILE, "rb") as handle:
                if handle.read(4) != b"PK\x03\x04":
                    raise InvalidRequestError("inputs: not an .npz file (numpy.savez output)",
                                              field="inputs")
        config = None
        if "config" in self.fields:
            config = parse_json(bytes(self.fields["config"]), "config")
            if not isinstance(config, dict):
                raise InvalidRequestError("config: must be a JSON object", field="config")
        data_sha256 = None
        if self.data_files:
            listing = json.dumps(sorted(self.data_files.items())).encode()
            data_sha256 = hashlib.sha256(listing).hexdigest()
        return Submission(JobKind.ONNX, config=config, filename=self.filename,
                          model_sha256=self.hashes["model"],
                          inputs_sha256=self.hashes.get("inputs"), data_sha256=data_sha256,
                          sizes=dict(self.sizes))


def _clean_filename(raw: bytes) -> str | None:
    """A display name only (never a path): last component, printable, at most 255 chars."""
    text = raw.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip()
    return text[:255] or None
