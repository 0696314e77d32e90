"""Run one ONNX backend node test through our loader and classify the outcome.

Used by ``scripts/conformance.py``, which runs it in worker processes. A case is loaded with
:func:`diagnostics.loading.onnx.loader.load_onnx` (our converters, checks and parameter
binding), run forward on the case's inputs and compared with its expected outputs; where the
op's schema calls a float input differentiable, a backward pass must run and give finite
gradients wherever the inputs and outputs are finite, and on sampled cases agree with
``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from onnx import ModelProto, TensorProto, numpy_helper
from onnx.defs import OpSchema, SchemaError, get_schema
from torch.autograd.gradcheck import GradcheckError

from diagnostics.errors import DiagnosticsError, UnsupportedOperatorError
from diagnostics.loading.onnx.loader import load_onnx

# Elementwise |actual - expected| <= atol + rtol·|expected|, the larger of our tolerance and the
# one onnx's own backend runner applies to node tests (rtol 1e-3, atol 1e-7), per dtype.
_TOLERANCES = {
    "float64": ((1e-4, 1e-5), (1e-3, 1e-7)),
    "float32": ((1e-4, 1e-5), (1e-3, 1e-7)),
    "float16": ((1e-3, 1e-3), (1e-3, 1e-3)),
    "bfloat16": ((2**-6, 1e-2), (2**-6, 1e-2)),
}
# Outputs drawn from a random generator: the expected values come from numpy's, so only shape
# and dtype can be compared.
_RANDOM_OPS = frozenset({"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike",
                         "RandomUniform", "RandomUniformLike"})
_RANDOM_CASES = re.compile(r"^test_training_dropout(_default)?(_mask)?$|^test_dropout_random_old$")
# numpy dtypes torch has no tensor type for (ml_dtypes' float8/int4 come as TensorProto or
# custom numpy dtypes and end up here too).
_TORCH_DTYPES = {
    "bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "float16": torch.float16,
    "float32": torch.float32, "float64": torch.float64, "uint16": torch.uint16,
    "uint32": torch.uint32, "uint64": torch.uint64,
}
_GRADCHECK_JITTER = 1e-3
# Float inputs the loader keeps constant whatever the schema says (see
# ``diagnostics.loading.onnx.params``):
# BatchNormalization's running statistics are state, and torch refuses gradients for them.
_STATE_INPUTS = frozenset({("BatchNormalization", 3), ("BatchNormalization", 4)})
# Ops the schema calls differentiable whose derivative is zero almost everywhere: an output
# detached from the graph (argmax inside) is the right gradient, zero.
_PIECEWISE_CONSTANT = frozenset({"Hardmax"})


class Status(StrEnum):
    """Outcome of one case; ``wrong`` (silently different outputs) is the dangerous one."""

    PASS = "pass"
    WRONG = "wrong"
    UNSUPPORTED = "unsupported"
    ERROR = "error"
    BACKWARD = "backward"


@dataclass(frozen=True)
class Outcome:
    """What happened to one case: its status, a one-line reason, and the gradcheck verdict."""

    status: Status
    message: str = ""
    gradcheck: str | None = None


class _RefusedError(Exception):
    """The case needs something our module cannot take or give (a dtype, a sequence)."""


def node_of(model: ModelProto):
    """The single node a backend node test exercises."""
    return model.graph.node[0]


def opset_of(model: ModelProto) -> int:
    """The model's opset for its node's domain."""
    domain = node_of(model).domain
    aliases = {domain} | ({"", "ai.onnx"} if domain in {"", "ai.onnx"} else set())
    return next(entry.version for entry in model.opset_import if entry.domain in aliases)


def differentiable_inputs(model: ModelProto) -> list[int]:
    """Positions (among the model's inputs) of float inputs the op's schema calls differentiable.

    Old schema versions often say "Unknown"; then the op's latest schema decides, since the
    differentiability of an input rarely changes between versions.
    """
    node = node_of(model)
    try:
        schema = get_schema(node.op_type, opset_of(model), node.domain)
        latest = get_schema(node.op_type, node.domain)
    except SchemaError:
        return []
    present = [slot for slot, name in enumerate(node.input) if name]
    positions = []
    for position, slot in enumerate(present):
        category = _category(schema, slot)
        if category == OpSchema.DifferentiationCategory.Unknown:
            category = _category(latest, slot)
        dtype = model.graph.input[position].type.tensor_type.elem_type
        if (category == OpSchema.DifferentiationCategory.Differentiable
                and dtype in (TensorProto.FLOAT, TensorProto.DOUBLE)
                and (node.op_type, slot) not in _STATE_INPUTS):
            positions.append(position)
    return positions


def _category(schema: OpSchema, slot: int):
    formals = schema.inputs
    if not formals:
        return OpSchema.DifferentiationCategory.Unknown
    # A variadic last formal parameter covers every later slot.
    return formals[min(slot, len(formals) - 1)].differentiation_category


def evaluate(model: ModelProto, inputs: list[Any], expected: list[Any], *,  # noqa: C901
             gradcheck: bool) -> Outcome:
    """Load, run and check one case.

    Args:
        model: The case's model (one node, every tensor a graph input).
        inputs: Input values in graph-input order (arrays, numpy scalars, TensorProtos, lists).
        expected: Expected outputs in graph-output order.
        gradcheck: Also compare autograd with finite differences in float64.

    Returns:
        The case's :class:`Outcome`.
    """
    kinds = {value.type.WhichOneof("value") for value in [*model.graph.input, *model.graph.output]}
    if kinds - {"tensor_type"}:
        return Outcome(Status.UNSUPPORTED, "the graph takes or returns sequence/optional values, "
                                           "which the loader refuses")
    try:
        tensors = [_to_torch(value) for value in inputs]
        wanted = [_to_numpy(value) for value in expected]
    except _RefusedError as exc:
        return Outcome(Status.UNSUPPORTED, str(exc))
    try:
        loaded = load_onnx(model.SerializeToString(), name=model.graph.name)
    except UnsupportedOperatorError as exc:
        return Outcome(Status.UNSUPPORTED, exc.detail)
    except DiagnosticsError as exc:
        return Outcome(Status.ERROR, f"{type(exc).__name__}: {exc.detail}")
    except Exception as exc:  # a loader bug is reported, not raised
        return Outcome(Status.ERROR, f"load: {type(exc).__name__}: {_short(exc)}")
    module = loaded.module
    try:
        with torch.no_grad():
            actual = _as_list(module(*tensors))
    except NotImplementedError as exc:
        return Outcome(Status.UNSUPPORTED, f"forward: {_short(exc)}")
    except Exception as exc:  # converters fail with anything; keep running the suite
        return Outcome(Status.ERROR, f"forward: {type(exc).__name__}: {_short(exc)}")
    node = node_of(model)
    shape_only = node.op_type in _RANDOM_OPS or bool(_RANDOM_CASES.match(model.graph.name))
    try:
        mismatch = _compare(actual, wanted, shape_only=shape_only)
    except _RefusedError as exc:
        return Outcome(Status.UNSUPPORTED, str(exc))
    if mismatch:
        return Outcome(Status.WRONG, mismatch)
    note = "random op: shape and dtype only" if shape_only else ""
    positions = differentiable_inputs(model)
    if not positions or shape_only or node.op_type in _PIECEWISE_CONSTANT:
        return Outcome(Status.PASS, note)
    problem = _check_backward(module, tensors, positions)
    if problem:
        return Outcome(Status.BACKWARD, problem)
    verdict = _gradcheck(module, tensors, positions) if gradcheck else None
    if verdict is not None and verdict.startswith("disagrees"):
        return Outcome(Status.BACKWARD, f"gradcheck {verdict}", gradcheck=verdict)
    return Outcome(Status.PASS, note, gradcheck=verdict)


def _short(exc: BaseException, limit: int = 300) -> str:
    flat = " ".join(str(exc).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _to_numpy(value: Any) -> Any:
    if value is None or isinstance(value, list):
        return None if value is None else [_to_numpy(item) for item in value]
    if isinstance(value, TensorProto):
        value = numpy_helper.to_array(value)
    return np.asarray(value)


def _to_torch(value: Any) -> Any:
    array = _to_numpy(value)
    if array is None or isinstance(array, list):
        return None if array is None else [_to_torch(item) for item in array]
    if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: same bits as torch's
        bits = np.ascontiguousarray(array).view(np.int16).copy()
        return torch.from_numpy(bits).view(torch.bfloat16)
    dtype = _TORCH_DTYPES.get(array.dtype.name)
    if dtype is None:
        raise _RefusedError(f"input dtype {array.dtype.name} has no torch tensor type")
    # np.array(..., order="C") keeps a 0-d array 0-d (np.ascontiguousarray makes it 1-d).
    return torch.from_numpy(np.array(array, order="C", copy=True)).to(dtype)


def _as_list(output: Any) -> list[Any]:
    return list(output) if isinstance(output, tuple) else [output]


def _compare(actual: list[Any], expected: list[Any], *, shape_only: bool) -> str | None:
    if len(actual) != len(expected):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        if want is None or isinstance(want, list):
            if not isinstance(got, list | tuple) or want is None:
                raise _RefusedError(f"output {index} is a sequence or optional, which our module "
                               f"does not return ({type(got).__name__})")
            problem = _compare(list(got), want, shape_only=shape_only)
        else:
            problem = _compare_tensor(got, want, shape_only=shape_only)
        if problem:
            return f"output {index}: {problem}"
    return None


def _compare_tensor(got: Any, want: np.ndarray, *, shape_only: bool) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"got {type(got).__name__}, expected a tensor"
    if tuple(got.shape) != want.shape:
        return f"shape {tuple(got.shape)}, expected {want.shape}"
    if want.dtype.name not in _TORCH_DTYPES and want.dtype.name != "bfloat16":
        raise _RefusedError(f"expected dtype {want.dtype.name} has no torch tensor type")
    got_dtype = str(got.dtype).removeprefix("torch.")
    if got_dtype != want.dtype.name:
        return f"dtype {got_dtype}, expected {want.dtype.name}"
    if shape_only:
        return None
    if got.dtype == torch.bfloat16:
        got, want = got.float(), want.astype(np.float32)
    values = got.detach().cpu().numpy()
    if want.dtype.kind not in "fc" and got_dtype != "bfloat16":
        if not np.array_equal(values, want):
            wrong = int(np.sum(values != want))
            return f"{wrong} of {want.size} values differ (exact comparison)"
        return None
    return _float_mismatch(values.astype(np.float64), want.astype(np.float64), got_dtype)


def _float_mismatch(got: np.ndarray, want: np.ndarray, dtype: str) -> str | None:
    (rtol, atol), (onnx_rtol, onnx_atol) = _TOLERANCES[dtype]
    same_special = (np.isnan(got) == np.isnan(want)) & (np.isinf(want) <= (got == want))
    if not np.all(same_special):
        return "NaN/inf positions differ from the expected output"
    finite = np.isfinite(want)
    error = np.abs(got[finite] - want[finite])
    bound = np.maximum(atol + rtol * np.abs(want[finite]),
                       onnx_atol + onnx_rtol * np.abs(want[finite]))
    if error.size and np.any(error > bound):
        worst = int(np.argmax(error - bound))
        return (f"{int(np.sum(error > bound))} of {want.size} values off, max abs error "
                f"{float(error.max()):.3g} (expected {float(want[finite][worst]):.4g}, "
                f"got {float(got[finite][worst]):.4g})")
    return None


def _check_backward(module: torch.nn.Module, tensors: list[Any], positions: list[int]) -> str:
    """"" when backward runs with finite gradients, else what went wrong.

    A non-finite gradient with finite inputs and outputs is retried at a jittered point: at a
    singular point of the function (Acosh at 1, Sqrt at 0) it is the right answer, anywhere
    else it is a bug.
    """
    if all(tensors[p].numel() == 0 for p in positions):
        return ""  # nothing to differentiate (a reduction over an empty set)
    problem = _backward_once(module, tensors, positions, jitter=0.0)
    if problem.startswith("non-finite"):
        retry = _backward_once(module, tensors, positions, jitter=_GRADCHECK_JITTER)
        return f"{problem}, also at a jittered point" if retry else ""
    return problem


def _backward_once(module: torch.nn.Module, tensors: list[Any], positions: list[int],
                   jitter: float) -> str:
    leaves = _with_grad(tensors, positions, jitter=jitter)
    try:
        floats = [out for out in _as_list(module(*leaves)) if _is_float(out)]
        outputs = [out for out in floats if out.requires_grad]
        if not outputs:
            # Integer outputs (Pow of an int base) have no gradient; float ones must have one.
            return "gradient detached: no float output depends on a differentiable input" \
                if floats else ""
        # Non-finite outputs would make every gradient through them non-finite; leave them out.
        loss = sum(torch.where(torch.isfinite(out), out, 0).sum() for out in outputs)
        loss.backward()
    except Exception as exc:  # any autograd failure is what this check reports
        return f"backward: {type(exc).__name__}: {_short(exc)}"
    finite_io = all(torch.isfinite(t).all() for t in leaves if _is_float(t)) and all(
        torch.isfinite(out).all() for out in outputs)
    for position in positions:
        grad = leaves[position].grad
        if grad is not None and finite_io and not torch.isfinite(grad).all():
            return f"non-finite gradient for input {position} with finite inputs and outputs"
    return ""


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _with_grad(tensors: list[Any], positions: list[int], dtype: torch.dtype | None = None,
               jitter: float = 0.0) -> list[Any]:
    leaves = []
    for position, value in enumerate(tensors):
        if _is_float(value) and dtype is not None and value.dtype == torch.float32:
            value = value.to(dtype)
        if position in positions:
            value = value.detach().clone()
            if jitter:
                generator = torch.Generator().manual_seed(position)
                noise = torch.rand(value.shape, generator=generator, dtype=value.dtype)
                value = value + jitter * (2 * noise - 1) * (value.abs() + 1)
            value.requires_grad_(True)
        leaves.append(value)
    return leaves


def _gradcheck(module: torch.nn.Module, tensors: list[Any], positions: list[int]) -> str:
    """"ok", "disagrees: ..." or "skipped: ..." for autograd against finite differences.

    Runs in float64. A first disagreement is retried at a jittered point, since test inputs
    often sit exactly on a kink (ReLU at 0, ties in Max) where both answers are legitimate.
    """
    if not all(torch.isfinite(tensors[p]).all() for p in positions):
        return "skipped: non-finite inputs"  # finite differences are NaN there
    try:
        module.double()
    except Exception as exc:  # a module that cannot be cast is skipped, not failed
        return f"skipped: cannot cast to float64: {type(exc).__name__}"

    def function(*leaves):
        full = list(base)
        for position, leaf in zip(positions, leaves, strict=True):
            full[position] = leaf
        outputs = _as_list(module(*full))
        return tuple(out for out in outputs if _is_float(out))

    failure = ""
    for jitter in (0.0, _GRADCHECK_JITTER):
        base = _with_grad(tensors, positions, torch.float64, jitter)
        try:
            with torch.no_grad():
                probe = function(*[base[p] for p in positions])
                if not probe or any(t.dtype != torch.float64 for t in probe):
                    # Finite differences through a float32 (or narrower) output are noise.
                    return "skipped: outputs are not float64 after the cast"
            torch.autograd.gradcheck(function, tuple(base[p] for p in positions),
                                     eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=False)
            return "ok" if not jitter else "ok at a jittered point"
        except GradcheckError as exc:
            failure = _short(exc, 200)
        except Exception as exc:  # the module does not run in float64: skipped, not failed
            return f"skipped: does not run in float64: {type(exc).__name__}: {_short(exc, 120)}"
    return f"disagrees: {failure}"


def float_elements(values: list[Any], positions: Iterable[int]) -> int:
    """Elements of ``values`` at ``positions`` (a sequence counts its items): gradcheck's cost."""
    total = 0
    for position in positions:
        value = _to_numpy(values[position])
        items = value if isinstance(value, list) else [value]
        total += sum(math.prod(np.shape(item)) for item in items if item is not None)
    return total
