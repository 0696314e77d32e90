"""Sample inputs: read from an .npz (or a mapping) and checked, or synthesized from the seed."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diagnostics.config import DiagnosisConfig
from diagnostics.errors import InvalidInputsError, ResourceLimitError
from diagnostics.limits import Limits
from diagnostics.model import InputSpec, LoadedModel

InputsSource = str | Path | bytes | Mapping[str, Any]


@dataclass(frozen=True)
class SampleBatch:
    """One batch of model inputs, in the model's input order, and the seed that made it."""

    seed: int
    tensors: tuple[torch.Tensor, ...]

    @property
    def nonfinite_inputs(self) -> list[int]:
        return [
            index for index, tensor in enumerate(self.tensors)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
        ]


def read_inputs(source: InputsSource) -> dict[str, np.ndarray]:
    """Read user-supplied inputs.

    Args:
        source: Path to an .npz file, its bytes, or a mapping name -> array-like.

    Returns:
        name -> numpy array.

    Raises:
        InvalidInputsError: Unreadable file, pickled objects (never loaded), non-numeric arrays.
    """
    if isinstance(source, Mapping):
        arrays = {}
        for name, value in source.items():
            try:
                arrays[str(name)] = np.asarray(value)
            except Exception as exc:  # any conversion failure is the user's input
                raise InvalidInputsError(f"input {name!r}: not an array ({exc})",
                                         input_name=str(name)) from None
        return _check_arrays(arrays)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise InvalidInputsError(f"cannot read inputs file {source}: {exc.strerror}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InvalidInputsError(
                "inputs .npz holds pickled objects, which are never loaded; save plain numeric "
                "arrays (np.savez with numeric dtypes)"
            ) from None
        raise InvalidInputsError(f"inputs are not a readable .npz archive: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidInputsError(f"inputs are not a readable .npz archive: {exc}") from None
    return _check_arrays(arrays)


def _check_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise InvalidInputsError(
                f"input {name!r} has dtype {array.dtype}; only numeric and boolean arrays are "
                "accepted", input_name=name)
        if array.size == 0:
            raise InvalidInputsError(f"input {name!r} is empty (shape {list(array.shape)})",
                                     input_name=name)
    return arrays


def resolve_shape(spec: InputSpec, config: DiagnosisConfig) -> tuple[int, ...]:
    """The concrete shape to synthesize for ``spec``.

    Axis 0 when dynamic is the batch (``config.batch_size``); ``config.input_shapes[name]``
    gives a full shape and must agree with the static dimensions.

    Raises:
        InvalidInputsError: A dynamic axis that nothing resolves, named with its axis.
    """
    given = config.input_shapes.get(spec.name)
    if given is not None:
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
        return tuple(given)
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif axis == 0:
            shape.append(config.batch_size)
        else:
            label = f" ({dim!r})" if isinstance(dim, str) and dim else ""
            example = [config.batch_size if i == 0 else (d if isinstance(d, int) and d > 0 else 16)
                       for i, d in enumerate(spec.shape)]
            raise InvalidInputsError(
                f"input {spec.name!r} axis {axis}{label} is dynamic: give its full shape in "
                f"config.input_shapes, e.g. {{\"{spec.name}\": {example}}}",
                input_name=spec.name, axis=axis)
    return tuple(shape)


def make_batches(model: LoadedModel, config: DiagnosisConfig, limits: Limits,
                 provided: dict[str, np.ndarray] | None = None) -> list[SampleBatch]:
    """One batch per sample: the provided arrays (same for every sample), or synthesized.

    Synthesized float inputs are N(0, 1); integer inputs uniform in [0, vocab) with vocab from the
    table they index (else ``config.vocab_size``); inputs named like a mask are ones; booleans true.

    Raises:
        InvalidInputsError: Names, dtypes or shapes that do not fit the model.
        ResourceLimitError: Inputs larger than ``limits.max_input_elements``.
    """
    seeds = [config.seed + index for index in range(config.samples)]
    if provided is not None:
        tensors = _from_provided(model.inputs, provided)
        _check_size(tensors, limits)
        return [SampleBatch(seed, tensors) for seed in seeds]
    shapes = [resolve_shape(spec, config) for spec in model.inputs]
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
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    if _is_mask(spec.name):
        return torch.ones(shape, dtype=dtype)
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


def _is_integer(dtype: str) -> bool:
    return dtype != "bfloat16" and np.dtype(dtype).kind in "iu"


def _is_mask(name: str) -> bool:
    return "mask" in name.lower()


def _show(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join("?" if not isinstance(d, int) or d <= 0 else str(d) for d in shape) + "]"
