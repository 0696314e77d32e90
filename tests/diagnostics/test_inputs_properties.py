"""Properties of the sample-inputs reader under arbitrary input (hypothesis).

An uploaded .npz is attacker-controlled bytes. Whatever they hold (any bytes, a corrupted or
truncated archive, members that are not arrays, pickled objects, any dtype, byte order, name or
shape, headers that promise more data than there is), ``read_inputs`` and ``make_batches`` either
succeed or raise InvalidInputsError / ResourceLimitError, quickly and without allocating past
the input budget; what they accept is numeric, native-endian, non-empty and within budget, and
``make_batches`` returns tensors of exactly the model's input shapes and dtypes.
"""

from __future__ import annotations

import io
import time
import warnings
import zipfile
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diagnostics.config import DiagnosisConfig
from diagnostics.errors import InvalidInputsError, ResourceLimitError
from diagnostics.inputs import make_batches, read_inputs
from diagnostics.limits import Limits
from diagnostics.model import InputSpec

LIMITS = Limits(max_input_elements=4096)
INPUT_ERRORS = (InvalidInputsError, ResourceLimitError)
PROPERTIES = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CONFIG = DiagnosisConfig(samples=2, batch_size=2)

DTYPES = st.sampled_from([
    "float32", "float64", "float16", ">f4", ">f8", "int8", "int32", "int64", ">i8", "uint8",
    "uint16", "uint32", "uint64", "bool", "complex64", "<U3", "S2", "datetime64[s]", "V4",
    "object", [("a", "f4"), ("b", "i2")],
])
NAMES = st.sampled_from(["x", "y", "mask", "input_ids"]) | st.text(max_size=12)
SHAPES = st.lists(st.integers(min_value=0, max_value=5), max_size=4).map(tuple)


def _array(dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    kind = np.dtype(dtype).kind
    if kind == "O":
        array = np.empty(shape, dtype=object)
        array.fill({"a": 1})
        return array
    if kind in "fc":
        return np.random.default_rng(0).normal(size=shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


@st.composite
def npz_archives(draw: st.DrawFn) -> bytes:
    arrays = {draw(NAMES): _array(draw(DTYPES), draw(SHAPES))
              for _ in range(draw(st.integers(min_value=0, max_value=3)))}
    buffer = io.BytesIO()
    save = np.savez_compressed if draw(st.booleans()) else np.savez
    try:
        save(buffer, allow_pickle=True, **arrays)
    except (TypeError, ValueError):  # a name numpy itself cannot store
        save(buffer, allow_pickle=True, x=np.ones(3, np.float32))
    return buffer.getvalue()


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A real archive, then truncated and/or with bytes overwritten."""
    data = bytearray(draw(npz_archives()))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
        if draw(st.booleans()) and data:
            data[at] = draw(st.integers(0, 255))
        else:
            del data[at:]
    return bytes(data)


def _npy(header: str, payload: bytes = b"") -> bytes:
    text = header.encode("latin-1")
    text += b" " * ((-len(text) - 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + payload


LYING_HEADERS = st.builds(
    lambda descr, shape, payload: _npy(
        f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}", payload),
    st.sampled_from(["<f4", "|O", "<U5", "<U100000000", "|b1", ">i8", "<c8", "garbage"]),
    st.lists(st.integers(min_value=0, max_value=2**40), max_size=3).map(tuple),
    st.binary(max_size=32))


@st.composite
def hand_made_zips(draw: st.DrawFn) -> bytes:
    """Zips numpy would never write: odd member names, raw bytes, lying .npy headers."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicated member names are the point
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            name = draw(st.sampled_from(["x.npy", "../x.npy", "dir/", "a/b.npy", "x.txt", ".npy"])
                        | st.text(min_size=1, max_size=8))
            archive.writestr(name, draw(LYING_HEADERS | st.binary(max_size=64)))
    return buffer.getvalue()


UPLOADS = (st.binary(max_size=256) | st.binary(max_size=64).map(lambda b: b"PK\x03\x04" + b)
           | npz_archives() | corrupted() | hand_made_zips())


def _read(data: bytes) -> dict[str, np.ndarray] | None:
    started = time.perf_counter()
    try:
        arrays = read_inputs(data, LIMITS)
    except INPUT_ERRORS:
        return None
    finally:
        assert time.perf_counter() - started < 5.0
    assert sum(array.size for array in arrays.values()) <= LIMITS.max_input_elements
    for array in arrays.values():
        assert array.dtype.kind in "biuf"
        assert array.dtype.isnative
        assert array.size > 0
    return arrays


@PROPERTIES
@given(data=UPLOADS)
def test_any_upload_is_read_or_refused_cleanly(data: bytes) -> None:
    _read(data)


MODEL_INPUTS = st.lists(
    st.builds(InputSpec, name=st.sampled_from(["x", "y", "mask"]),
              shape=st.lists(st.integers(min_value=1, max_value=5) | st.none(),
                             min_size=1, max_size=3).map(tuple),
              dtype=st.sampled_from(["float32", "float16", "int64", "int32", "bool"]),
              vocab=st.none() | st.integers(min_value=1, max_value=10)),
    min_size=1, max_size=2, unique_by=lambda spec: spec.name).map(tuple)


def _fits(tensor: torch.Tensor, spec: InputSpec) -> bool:
    fixed = all(want is None or want == got for want, got in zip(spec.shape, tensor.shape,
                                                                  strict=True))
    return tensor.dim() == len(spec.shape) and fixed


@st.composite
def archives_for(draw: st.DrawFn) -> tuple[bytes, tuple[InputSpec, ...]]:
    """Model inputs, and an archive close to what they need: right or wrong names, dtypes,
    ranks and sizes, extra or missing arrays."""
    inputs = draw(MODEL_INPUTS)
    arrays = {}
    for spec in inputs:
        if draw(st.integers(0, 5)) == 0:
            continue  # missing
        shape = [size or draw(st.integers(1, 4)) for size in spec.shape]
        if draw(st.integers(0, 3)) == 0:
            shape = list(draw(SHAPES))
        dtype = spec.dtype if draw(st.booleans()) else draw(DTYPES)
        arrays[spec.name if draw(st.integers(0, 5)) else draw(NAMES)] = _array(dtype, tuple(shape))
    if draw(st.integers(0, 5)) == 0:
        arrays["extra"] = np.ones(2, np.float32)
    buffer = io.BytesIO()
    try:
        np.savez(buffer, allow_pickle=True, **arrays)
    except (TypeError, ValueError):
        return draw(npz_archives()), inputs
    return buffer.getvalue(), inputs


@settings(PROPERTIES, max_examples=200)
@given(sample=archives_for() | st.tuples(npz_archives() | hand_made_zips(), MODEL_INPUTS))
def test_read_arrays_become_batches_of_the_models_shapes_or_clear_errors(
        sample: tuple[bytes, tuple[InputSpec, ...]]) -> None:
    data, inputs = sample
    arrays = _read(data)
    if arrays is None:
        return
    model: Any = SimpleNamespace(inputs=inputs)  # make_batches reads only the inputs
    try:
        batches = make_batches(model, CONFIG, LIMITS, arrays)
    except INPUT_ERRORS:
        return
    assert len(batches) == CONFIG.samples
    for batch in batches:
        assert len(batch.tensors) == len(inputs)
        for tensor, spec in zip(batch.tensors, inputs, strict=True):
            assert _fits(tensor, spec), (tensor.shape, spec)
            expected = torch.bfloat16 if spec.dtype == "bfloat16" else \
                torch.from_numpy(np.zeros(0, spec.dtype)).dtype
            assert tensor.dtype == expected


@PROPERTIES
@given(header=LYING_HEADERS)
def test_a_header_promising_too_much_is_refused_before_any_allocation(header: bytes) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", header)
    _read(buffer.getvalue())
