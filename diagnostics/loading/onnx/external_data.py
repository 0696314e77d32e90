"""ONNX external data: tensors whose bytes live in files beside the model, read safely and once.

``torch.onnx.export(..., dynamo=True)`` writes the weights to ``model.onnx.data`` by default,
and a model over protobuf's 2 GB limit can only be stored that way. Every tensor that points to
a file is checked before a byte is read:

* its ``location`` is relative, has no ``..`` component and, once resolved (symlinks followed),
  stays inside the data directory and names a regular file;
* its ``offset`` and ``length`` are non-negative integers, the length is exactly what its type
  and shape need (shapes were already held to the element budgets), and the range lies within
  the file.

Anything else is an :class:`ExternalDataError` naming the tensor and its location. When the model
came as bytes with no directory, nothing is read and the error says how to pass the data.

Memory: small tensors (and every tensor outside the main graph's float initializers) are read
into the proto, where onnx's checker and the converters expect them. Large float initializers
(the weights) stay out of the proto: the checker and shape inference see them as graph inputs
of the same type and shape, and the converter reads each one straight from the file into one
numpy array (``np.fromfile``, no intermediate bytes) that the torch parameter then shares.
Weights are therefore held once while loading, not as proto bytes + numpy + torch copies.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper
from onnx2torch.onnx_tensor import OnnxTensor

from diagnostics.errors import ExternalDataError, ResourceLimitError
from diagnostics.limits import Limits
from diagnostics.loading.onnx.checks import FLOAT_TYPES, element_count, iter_tensors, one_line

# Float initializers up to this many elements are read into the proto (biases, norm gains,
# scalars): helpers that inspect constant values read them there, and they cost nothing.
INLINE_ELEMENTS = 4096
_DATA_ADVICE = (
    "pass the model by its path so the files beside it are read (diagnose('model.onnx'), "
    "`graddoctor diagnose model.onnx`), or name their folder (diagnose(..., data_dir=...), "
    "--data-dir); over HTTP upload each data file as an extra multipart part whose filename is "
    "its location, or one .zip/.tar archive holding the model and its data files"
)


@dataclass(frozen=True)
class ExternalRef:
    """One validated external tensor: the bytes ``[offset, offset + length)`` of ``path``."""

    name: str
    where: str
    location: str
    path: Path
    offset: int
    length: int
    data_type: int
    dims: tuple[int, ...]

    @property
    def key(self) -> tuple[str, int, int, tuple[int, ...]]:
        return self.location, self.offset, self.data_type, self.dims


def external_entries(tensor: TensorProto) -> dict[str, str]:
    """The ``external_data`` key/value pairs of ``tensor`` (empty for embedded tensors)."""
    return {entry.key: entry.value for entry in tensor.external_data}


def uses_external_data(tensor: TensorProto) -> bool:
    """Whether ``tensor`` keeps (or claims to keep) its bytes in a file."""
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _refuse(tensor: TensorProto, where: str, location: str, problem: str) -> ExternalDataError:
    name = tensor.name or "(unnamed)"
    return ExternalDataError(
        f"tensor {name!r} ({where}) keeps its data in an external file "
        f"{one_line(repr(location), 120)}: {problem}",
        tensor=tensor.name or None, location=location or None,
    )


def _checked_location(tensor: TensorProto, where: str, location: str) -> str:
    if not location:
        raise _refuse(tensor, where, location, "no location is given")
    if "\0" in location:
        raise _refuse(tensor, where, location, "the location contains a NUL character")
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or location[0] in "/\\":
        raise _refuse(tensor, where, location, "absolute locations are never read; the location "
                      "must be relative to the model's folder")
    if ".." in posix.parts or ".." in windows.parts:
        raise _refuse(tensor, where, location, "'..' in a location is never followed; the data "
                      "file must sit in the model's folder or below it")
    return location


def _resolve(tensor: TensorProto, where: str, location: str, root: Path) -> Path:
    candidate = root / location
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise _refuse(tensor, where, location, f"no such file in the data folder "
                      f"{root.name or str(root)!r}; put the data file beside the model") from None
    except (OSError, RuntimeError) as exc:  # symlink loops, permissions
        raise _refuse(tensor, where, location, f"cannot be opened ({exc})") from None
    if not resolved.is_relative_to(root):
        raise _refuse(tensor, where, location, "it resolves (through a symbolic link) to a file "
                      "outside the data folder, which is never read")
    if not resolved.is_file():
        raise _refuse(tensor, where, location, "it is not a regular file")
    return resolved


def _integer(tensor: TensorProto, where: str, location: str, entries: dict[str, str],
             key: str) -> int | None:
    text = entries.get(key)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit():
        raise _refuse(tensor, where, location, f"its {key} {text[:40]!r} is not a non-negative "
                      "integer")
    return int(text)


def _itemsize(tensor: TensorProto, where: str, location: str) -> int:
    if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        raise _refuse(tensor, where, location, "string or untyped tensors cannot be external")
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # an unknown data_type number
        raise _refuse(tensor, where, location,
                      f"unknown data type {tensor.data_type}") from None


def _packed_bytes(tensor: TensorProto, count: int, itemsize: int) -> int:
    """Bytes the raw data of ``count`` elements takes (4-bit types pack two per byte)."""
    four_bit = {getattr(TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1")
                if hasattr(TensorProto, name)}
    return (count + 1) // 2 if tensor.data_type in four_bit else count * itemsize


def check_reference(tensor: TensorProto, where: str, root: Path) -> ExternalRef:
    """Validate one external tensor against the data folder ``root`` (already resolved).

    Raises:
        ExternalDataError: bad location, file missing or outside ``root``, bad offset/length,
            or a byte range beyond the end of the file.
    """
    entries = external_entries(tensor)
    location = _checked_location(tensor, where, entries.get("location", ""))
    offset = _integer(tensor, where, location, entries, "offset") or 0
    length = _integer(tensor, where, location, entries, "length")
    needed = _packed_bytes(tensor, element_count(tensor.dims), _itemsize(tensor, where, location))
    if length is not None and length != needed:
        raise _refuse(tensor, where, location, f"its length {length:,} is not the {needed:,} "
                      f"bytes its type and shape {list(tensor.dims)} need")
    path = _resolve(tensor, where, location, root)
    size = path.stat().st_size
    if offset + needed > size:
        raise _refuse(tensor, where, location, f"bytes {offset:,}..{offset + needed:,} lie beyond "
                      f"the end of the file ({size:,} bytes)")
    return ExternalRef(tensor.name, where, location, path, offset, needed, tensor.data_type,
                       tuple(tensor.dims))


def read_bytes(ref: ExternalRef) -> bytes:
    """The tensor's raw bytes, exactly ``ref.length`` of them."""
    with open(ref.path, "rb") as handle:
        handle.seek(ref.offset)
        data = handle.read(ref.length)
    if len(data) != ref.length:  # the file shrank after it was checked
        raise ExternalDataError(f"tensor {ref.name!r}: file {ref.location!r} ended early",
                                tensor=ref.name or None, location=ref.location)
    return data


def read_array(ref: ExternalRef) -> np.ndarray:
    """The tensor as a writable numpy array, read from the file into it (one allocation)."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ref.data_type)
    count = element_count(ref.dims)
    plain = dtype.kind in "fiub" and dtype.itemsize * count == ref.length
    if plain and ref.data_type != TensorProto.BFLOAT16:
        array = np.fromfile(ref.path, dtype=dtype.newbyteorder("<"), count=count,
                            offset=ref.offset)
        if array.size != count:
            raise ExternalDataError(f"tensor {ref.name!r}: file {ref.location!r} ended early",
                                    tensor=ref.name or None, location=ref.location)
        if not array.dtype.isnative:
            array = array.astype(dtype)
        return array.reshape(ref.dims)
    # Exotic encodings (bfloat16, float8, 4-bit): onnx's own decoding of the raw bytes.
    proto = TensorProto(name=ref.name, data_type=ref.data_type, dims=ref.dims,
                        raw_data=read_bytes(ref))
    return numpy_helper.to_array(proto).copy()


@dataclass
class ExternalWeights:
    """The external tensors of one model, validated, and the large weights left out of the proto.

    Attributes:
        lazy: Main-graph float initializers read only when the converter asks for them.
        refs: Every validated reference by location, offset, type and shape: a tensor copied
            inside the loader (an Identity made an initializer) is read under its new name.
    """

    lazy: dict[str, ExternalRef] = field(default_factory=dict)
    refs: dict[tuple[str, int, int, tuple[int, ...]], ExternalRef] = field(default_factory=dict)
    # Weak: an array lives as long as a tensor made from it. Uses alive at the same time share
    # one array; a converter that copies (onnx2torch's Gemm scales B into a new tensor) lets
    # the file's array go at once instead of holding a second copy of every weight.
    _cache: MutableMapping[str, np.ndarray] = field(default_factory=weakref.WeakValueDictionary)

    def __bool__(self) -> bool:
        return bool(self.lazy)

    def array(self, tensor: TensorProto) -> np.ndarray:
        """``tensor``'s values; a lazy weight is read once and shared by the uses that hold it."""
        entries = external_entries(tensor)
        try:
            key = (entries.get("location", ""), int(entries.get("offset", "0")),
                   tensor.data_type, tuple(tensor.dims))
            ref = self.refs[key]
        except (KeyError, ValueError):
            raise ExternalDataError(f"tensor {tensor.name!r} points to external data that was "
                                    "not checked", tensor=tensor.name or None) from None
        array = self._cache.get(tensor.name)
        if array is None:
            array = read_array(ref)
            self._cache[tensor.name] = array
        return array

    def checkable(self, model: ModelProto) -> ModelProto:
        """A copy of ``model`` for onnx's checker and shape inference: each lazy weight is a
        graph input of the same type and shape instead of an initializer (the checker would
        otherwise open its file relative to the working directory)."""
        if not self.lazy:
            return model
        copy = ModelProto()
        copy.CopyFrom(model)  # cheap: the lazy weights hold no bytes
        kept = [init for init in copy.graph.initializer if init.name not in self.lazy]
        moved = [init for init in copy.graph.initializer if init.name in self.lazy]
        del copy.graph.initializer[:]
        copy.graph.initializer.extend(kept)
        declared = {value.name for value in copy.graph.input}
        for init in moved:
            if init.name not in declared:
                copy.graph.input.append(
                    onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
        return copy

    def restore(self, inferred: ModelProto, model: ModelProto) -> ModelProto:
        """``inferred`` (from :meth:`checkable`) with the lazy weights initializers again."""
        if not self.lazy:
            return inferred
        original = {value.name for value in model.graph.input}
        inputs = [value for value in inferred.graph.input
                  if value.name not in self.lazy or value.name in original]
        del inferred.graph.input[:]
        inferred.graph.input.extend(inputs)
        del inferred.graph.initializer[:]
        inferred.graph.initializer.extend(model.graph.initializer)
        return inferred

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Within the block, onnx2torch reads lazy weights from their files (this thread only);
        on exit the loader's own references are dropped, so only the parameters hold them."""
        previous = getattr(_ACTIVE, "weights", None)
        _ACTIVE.weights = self
        try:
            yield
        finally:
            _ACTIVE.weights = previous
            self._cache.clear()


def prepare_external_data(model: ModelProto, data_dir: str | Path | None,
                          limits: Limits) -> ExternalWeights:
    """Validate every external tensor of ``model``; read the small ones into the proto.

    Call after :func:`~diagnostics.loading.onnx.checks.check_budgets` (shapes are within the
    element budgets) and before onnx's checker.

    Args:
        model: The parsed model; modified in place (small external tensors embedded).
        data_dir: The folder external locations are relative to; None when the model came as
            bytes, in which case any external tensor is refused.
        limits: The budgets; the tensors read into the proto count against
            ``max_tensor_elements`` together.

    Returns:
        The large weights left external, read later under :meth:`ExternalWeights.reading`.

    Raises:
        ExternalDataError: naming the first tensor whose reference is refused.
        ResourceLimitError: the embedded external tensors together exceed the element budget.
    """
    found = [(where, tensor) for where, tensor in iter_tensors(model, limits.max_nesting)
             if uses_external_data(tensor)]
    weights = ExternalWeights()
    if not found:
        return weights
    if data_dir is None:
        where, tensor = found[0]
        location = external_entries(tensor).get("location", "")
        raise _refuse(tensor, where, location, f"the model was given as bytes, with no folder to "
                      f"read it from; {_DATA_ADVICE}")
    try:
        root = Path(data_dir).resolve(strict=True)
    except OSError:
        raise ExternalDataError(f"data folder {str(data_dir)!r} does not exist") from None
    if not root.is_dir():
        raise ExternalDataError(f"data folder {str(data_dir)!r} is not a directory")
    embedded = 0
    for where, tensor in found:
        ref = check_reference(tensor, where, root)
        weights.refs[ref.key] = ref
        if _stays_external(tensor, where):
            weights.lazy[tensor.name] = ref
            continue
        embedded += element_count(tensor.dims)
        if embedded > limits.max_tensor_elements:
            raise ResourceLimitError(
                f"external tensors other than weights hold over {limits.max_tensor_elements} "
                f"elements together", limit="max_tensor_elements",
                value=limits.max_tensor_elements)
        raw = read_bytes(ref)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
        tensor.raw_data = raw
    return weights


def _stays_external(tensor: TensorProto, where: str) -> bool:
    return (where == "initializer" and tensor.data_type in FLOAT_TYPES and bool(tensor.name)
            and element_count(tensor.dims) > INLINE_ELEMENTS)


def initializer_array(tensor: TensorProto) -> np.ndarray:
    """A tensor's values as a writable array: embedded tensors decoded (a copy), external ones
    from the file through the weights being read on this thread (shared, read once).

    Raises:
        ExternalDataError: an external tensor with no :meth:`ExternalWeights.reading` active;
            never read relative to the working directory.
    """
    if uses_external_data(tensor):
        weights = getattr(_ACTIVE, "weights", None)
        if weights is None:
            raise ExternalDataError(f"tensor {tensor.name!r} keeps its data in an external file "
                                    "that is not being read here", tensor=tensor.name or None)
        return weights.array(tensor)
    return numpy_helper.to_array(tensor).copy()


# onnx2torch reads every initializer through OnnxTensor.to_numpy, which would hand an external
# tensor to onnx's reader relative to the working directory. Route it through
# initializer_array: the same values for embedded tensors, the checked file for external ones,
# and a refusal for external tensors outside a load (other threads are unaffected: the active
# weights are per thread).
_ACTIVE = threading.local()
_original_to_numpy = OnnxTensor.to_numpy


def _to_numpy(self: OnnxTensor) -> np.ndarray:
    if uses_external_data(self.proto):
        return initializer_array(self.proto)
    return _original_to_numpy(self)


OnnxTensor.to_numpy = _to_numpy

__all__ = ["ExternalRef", "ExternalWeights", "initializer_array", "prepare_external_data",
           "read_array", "uses_external_data"]


def embed_external_data(model: ModelProto, data_dir: str | Path | None,
                        limits: Limits) -> None:
    """Read every external tensor of ``model`` into it, under the same checks as loading (for
    a repaired model written as one file).

    Raises:
        ExternalDataError: a reference is refused, or ``data_dir`` is None.
        ResourceLimitError: the embedded tensors exceed the element budget.
    """
    weights = prepare_external_data(model, data_dir, limits)
    for init in model.graph.initializer:
        ref = weights.lazy.get(init.name)
        if ref is not None:
            raw = read_bytes(ref)
            del init.external_data[:]
            init.data_location = TensorProto.DEFAULT
            init.raw_data = raw
