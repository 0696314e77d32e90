"""Sample inputs: read from an .npz (or a mapping) and checked, or synthesized from the seed."""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from diagnostics.config import DiagnosisConfig
from diagnostics.errors import InvalidInputsError, ResourceLimitError
from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.model import InputSpec, LoadedModel
from diagnostics.stats import all_finite

InputsSource = str | Path | bytes | Mapping[str, Any]


@dataclass(frozen=True)
class SampleBatch:
    """One batch of model inputs, in the model's input order, and the seed that made it."""

    seed: int
    tensors: tuple[torch.Tensor, ...]

    @property
    def nonfinite_inputs(self) -> list[int]:
        return [index for index, tensor in enumerate(self.tensors)
                if tensor.is_floating_point() and not all_finite(tensor)]


def read_inputs(source: InputsSource, limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Read user-supplied inputs.

    An .npz is read member by member: each array's header (dtype, shape) is checked before its
    data is decompressed, so a small archive that declares huge arrays is refused up front.

    Args:
        source: Path to an .npz file, its bytes, or a mapping name -> array-like.
        limits: ``max_input_elements`` bounds the elements of all arrays together.

    Returns:
        name -> numpy array (native byte order).

    Raises:
        InvalidInputsError: Not an .npz, unreadable, a member that is not a .npy array, pickled
            objects (never loaded), non-numeric or empty arrays.
        ResourceLimitError: The arrays hold more than ``limits.max_input_elements`` elements.
    """
    if isinstance(source, Mapping):
        arrays = {}
        for name, value in source.items():
            try:
                arrays[str(name)] = np.asarray(value)
            except Exception as exc:  # any conversion failure is the user's input
                raise InvalidInputsError(f"input {name!r}: not an array ({exc})",
                                         input_name=str(name)) from None
        _check_elements((array.size for array in arrays.values()), limits)
        return _check_arrays(arrays)
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise InvalidInputsError(f"cannot read inputs file {source}: {exc.strerror}") from None
    if not data.startswith(_ZIP_MAGIC):
        raise InvalidInputsError("inputs are not an .npz archive (numpy.savez output): the data "
                                 "does not start like a zip file")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return _check_arrays(_read_npz(archive, limits))
    except (InvalidInputsError, ResourceLimitError, MemoryError):
        raise
    # zipfile and numpy raise many types on a hostile archive (BadZipFile, zlib.error,
    # NotImplementedError for an unknown compression, RuntimeError for encryption, ValueError,
    # EOFError ...); all of them mean the upload is unreadable.
    except Exception as exc:
        raise InvalidInputsError(
            f"inputs are not a readable .npz archive: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None


_ZIP_MAGIC = b"PK\x03\x04"
_MAX_HEADER_BYTES = 10_000


def _read_npz(archive: zipfile.ZipFile, limits: Limits) -> dict[str, np.ndarray]:
    members = [info for info in archive.infolist() if not info.is_dir()]
    headers = []
    for info in members:
        if not info.filename.endswith(".npy"):
            raise InvalidInputsError(f"inputs .npz member {info.filename[:80]!r} is not a .npy "
                                     "array; save the inputs with numpy.savez")
        name = info.filename[: -len(".npy")]
        with archive.open(info) as member:
            shape, dtype = _npy_header(member, name)
        headers.append((name, shape, dtype))
    _check_elements((math.prod(shape) for _, shape, _ in headers), limits)
    arrays = {}
    for info, (name, _, _) in zip(members, headers, strict=True):
        with archive.open(info) as member:
            arrays[name] = np.lib.format.read_array(member, allow_pickle=False,
                                                    max_header_size=_MAX_HEADER_BYTES)
    return arrays


def _npy_header(member: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(member)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(member, max_header_size=_MAX_HEADER_BYTES)
    if dtype.hasobject:
        raise InvalidInputsError(
            f"input {name!r} holds pickled objects, which are never loaded; save plain numeric "
            "arrays (np.savez with numeric dtypes)", input_name=name)
    _check_dtype(name, dtype)  # before reading: a '<U100000000' element is 400 MB
    return shape, dtype


def _check_dtype(name: str, dtype: np.dtype) -> None:
    if dtype.kind not in "biuf":
        raise InvalidInputsError(
            f"input {name!r} has dtype {dtype}; only numeric and boolean arrays are accepted",
            input_name=name)


def _check_elements(counts: Iterable[int], limits: Limits) -> None:
    total = sum(counts)
    if total > limits.max_input_elements:
        raise ResourceLimitError(
            f"inputs have {total:,} elements, over the limit of {limits.max_input_elements:,}",
            limit="max_input_elements", value=limits.max_input_elements)


def _check_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for name, array in arrays.items():
        _check_dtype(name, array.dtype)
        if array.size == 0:
            raise InvalidInputsError(f"input {name!r} is empty (shape {list(array.shape)})",
                                     input_name=name)
        if not array.dtype.isnative:  # torch takes native byte order only
            arrays[name] = array.astype(array.dtype.newbyteorder("="))
    return arrays


# A dynamic axis the graph bounds (a position-embedding table bounds the sequence axis) is
# synthesized at its bound, capped here: long enough for attention to mix many positions, short
# enough that probing a 12-layer, 512-position BERT stays cheap on a CPU.
INFERRED_AXIS_CAP = 128


def resolve_shapes(specs: Sequence[InputSpec], config: DiagnosisConfig) -> list[tuple[int, ...]]:
    """The concrete shape to synthesize for each input, in ``specs`` order.

    ``config.input_shapes[name]`` gives a full shape and must agree with the static dimensions.
    Otherwise a dynamic axis takes, first that applies: the size of an axis with the same
    symbolic name (in ONNX equal names are equal sizes: ``input_ids`` and ``attention_mask``
    share ``sequence``, so one given shape fixes both); ``config.batch_size`` on axis 0; the
    bound the graph puts on it (``InputSpec.max_sizes``), capped at :data:`INFERRED_AXIS_CAP`.

    Raises:
        InvalidInputsError: A given shape that does not fit its input, given shapes that
            disagree on an axis name they share, or a dynamic axis that nothing resolves
            (named with its axis).
    """
    sizes: dict[str, tuple[int, str, int]] = {}  # symbol -> (size, input, axis) that fixed it
    for spec in specs:
        given = config.input_shapes.get(spec.name)
        if given is None:
            continue
        _check_given(spec, given)
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and dim:
                size, first, first_axis = sizes.setdefault(dim, (given[axis], spec.name, axis))
                if size != given[axis]:
                    raise InvalidInputsError(
                        f"config.input_shapes gives {first!r} axis {first_axis} size {size} but "
                        f"{spec.name!r} axis {axis} size {given[axis]}; the model names both "
                        f"{dim!r}, so they must be equal", input_name=spec.name, axis=axis)
    return [tuple(config.input_shapes[spec.name]) if spec.name in config.input_shapes
            else _resolve(spec, config, sizes) for spec in specs]


def _check_given(spec: InputSpec, given: list[int]) -> None:
    if len(given) != len(spec.shape):
        raise InvalidInputsError(
            f"config.input_shapes.{spec.name} has rank {len(given)}, the model's input "
            f"{spec.name!r} has rank {len(spec.shape)} {_show(spec.shape)}",
            input_name=spec.name)
    for axis, (want, got) in enumerate(zip(spec.shape, given, strict=True)):
        if isinstance(want, int) and want != got:
            raise InvalidInputsError(
                f"config.input_shapes.{spec.name}[{axis}] is {got}, the model fixes it to "
                f"{want}", input_name=spec.name, axis=axis)
        if got < 1:
            raise InvalidInputsError(
                f"config.input_shapes.{spec.name}[{axis}] must be >= 1, got {got}",
                input_name=spec.name, axis=axis)


def _resolve(spec: InputSpec, config: DiagnosisConfig,
             sizes: dict[str, tuple[int, str, int]]) -> tuple[int, ...]:
    bounds = dict(spec.max_sizes)
    shape = []
    for axis, dim in enumerate(spec.shape):
        symbol = dim if isinstance(dim, str) and dim else None
        if isinstance(dim, int) and dim > 0:
            size = dim
        elif symbol in sizes:
            size = sizes[symbol][0]
        elif axis == 0:
            size = config.batch_size
        elif axis in bounds:
            size = min(bounds[axis], INFERRED_AXIS_CAP)
        else:
            label = f" ({dim!r})" if symbol else ""
            example = [config.batch_size if i == 0 else (d if isinstance(d, int) and d > 0 else 16)
                       for i, d in enumerate(spec.shape)]
            raise InvalidInputsError(
                f"input {spec.name!r} axis {axis}{label} is dynamic: give its full shape in "
                f"config.input_shapes, e.g. {{\"{spec.name}\": {example}}}",
                input_name=spec.name, axis=axis)
        if symbol:
            sizes.setdefault(symbol, (size, spec.name, axis))
        shape.append(size)
    return tuple(shape)


def make_batches(model: LoadedModel, config: DiagnosisConfig, limits: Limits,
                 provided: dict[str, np.ndarray] | None = None) -> list[SampleBatch]:
    """One batch per sample: the provided arrays (same for every sample), or synthesized.

    Synthesized float inputs are N(0, 1); integer inputs uniform in [0, vocab) with vocab from the
    table they index (else ``config.vocab_size``); inputs named like a mask (any dtype) are ones;
    booleans true.
    Shapes come from :func:`resolve_shapes`.

    Raises:
        InvalidInputsError: Names, dtypes or shapes that do not fit the model.
        ResourceLimitError: Inputs larger than ``limits.max_input_elements``.
    """
    seeds = [config.seed + index for index in range(config.samples)]
    if provided is not None:
        tensors = _from_provided(model.inputs, provided)
        _check_size(tensors, limits)
        return [SampleBatch(seed, tensors) for seed in seeds]
    shapes = resolve_shapes(model.inputs, config)
    total = sum(int(np.prod(shape)) for shape in shapes)
    if total > limits.max_input_elements:
        raise ResourceLimitError(
            f"sample inputs would have {total:,} elements, over the limit of "
            f"{limits.max_input_elements:,}", limit="max_input_elements",
            value=limits.max_input_elements)
    for spec in model.inputs:
        if _is_integer(spec.dtype) and not _is_mask(spec.name) and not (
                spec.vocab or config.vocab_size):
            raise InvalidInputsError(
                f"integer input {spec.name!r} indexes no table we can see: set config.vocab_size "
                "to the range of its values, or supply inputs", input_name=spec.name)
    return [
        SampleBatch(seed, tuple(
            _synthesize(spec, shape, config, generator)
            for spec, shape in zip(model.inputs, shapes, strict=True)))
        for seed in seeds
        for generator in [torch.Generator().manual_seed(seed)]
    ]


def _synthesize(spec: InputSpec, shape: tuple[int, ...], config: DiagnosisConfig,
                generator: torch.Generator) -> torch.Tensor:
    dtype = _torch_dtype(spec)
    if dtype == torch.bool or _is_mask(spec.name):  # float masks too: noise would mask at random
        return torch.ones(shape, dtype=dtype)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    vocab = spec.vocab or config.vocab_size or 1
    return torch.randint(0, vocab, shape, generator=generator, dtype=torch.int64).to(dtype)


def _from_provided(specs: tuple[InputSpec, ...],
                   provided: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    expected = {spec.name for spec in specs}
    for name in provided:
        if name not in expected:
            raise InvalidInputsError(
                f"inputs has {name!r}, which is not a model input (model inputs: "
                f"{', '.join(sorted(expected))})", input_name=name)
    tensors = []
    for spec in specs:
        if spec.name not in provided:
            raise InvalidInputsError(f"inputs lacks the model input {spec.name!r}",
                                     input_name=spec.name)
        array = provided[spec.name]
        _check_provided(spec, array)
        tensors.append(torch.from_numpy(np.ascontiguousarray(array)).to(_torch_dtype(spec)))
    return tuple(tensors)


def _check_provided(spec: InputSpec, array: np.ndarray) -> None:
    want_kind = np.dtype(spec.dtype).kind if spec.dtype != "bfloat16" else "f"
    compatible = {"f": "f", "i": "iub", "u": "iub", "b": "b"}.get(want_kind, want_kind)
    if array.dtype.kind not in compatible:
        raise InvalidInputsError(
            f"input {spec.name!r} has dtype {array.dtype}, the model expects {spec.dtype}",
            input_name=spec.name)
    if array.ndim != len(spec.shape):
        raise InvalidInputsError(
            f"input {spec.name!r} has shape {list(array.shape)}, the model expects rank "
            f"{len(spec.shape)} {_show(spec.shape)}", input_name=spec.name)
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if isinstance(want, int) and want > 0 and want != got:
            raise InvalidInputsError(
                f"input {spec.name!r} axis {axis} is {got}, the model expects {want} "
                f"{_show(spec.shape)}", input_name=spec.name, axis=axis)
    if want_kind in "iu" and spec.vocab and array.size and (
            int(array.min()) < 0 or int(array.max()) >= spec.vocab):
        raise InvalidInputsError(
            f"input {spec.name!r} holds ids outside the table it indexes [0, {spec.vocab})",
            input_name=spec.name)


def _check_size(tensors: tuple[torch.Tensor, ...], limits: Limits) -> None:
    total = sum(tensor.numel() for tensor in tensors)
    if total > limits.max_input_elements:
        raise ResourceLimitError(
            f"inputs have {total:,} elements, over the limit of {limits.max_input_elements:,}",
            limit="max_input_elements", value=limits.max_input_elements)


def _torch_dtype(spec: InputSpec) -> torch.dtype:
    if spec.dtype == "bfloat16":
        return torch.bfloat16
    try:
        return torch.from_numpy(np.zeros(0, dtype=spec.dtype)).dtype
    except TypeError:
        raise InvalidInputsError(f"input {spec.name!r} has unsupported dtype {spec.dtype}",
                                 input_name=spec.name) from None


def id_inputs(inputs: tuple[InputSpec, ...]) -> list[str]:
    """Names of the integer inputs that are not masks: synthesized as random ids."""
    return [spec.name for spec in inputs if _is_integer(spec.dtype) and not _is_mask(spec.name)]


def _is_integer(dtype: str) -> bool:
    return dtype != "bfloat16" and np.dtype(dtype).kind in "iu"


def _is_mask(name: str) -> bool:
    return "mask" in name.lower()


def _show(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join("?" if not isinstance(d, int) or d <= 0 else str(d) for d in shape) + "]"
