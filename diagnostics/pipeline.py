"""diagnose(): load -> inputs -> probe -> statistics -> verdict -> remedies -> report."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from diagnostics.causes import find_causes
from diagnostics.config import Device, DiagnosisConfig, ProbeDtype, resolve_config
from diagnostics.errors import (
    DiagnosticsError,
    InvalidConfigError,
    ModelLoadError,
    ResourceLimitError,
)
from diagnostics.examination import Examination, examine
from diagnostics.inputs import InputsSource, SampleBatch, make_batches, read_inputs
from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.model import LoadedModel
from diagnostics.remedies import Candidate, propose
from diagnostics.repair import RepairContext
from diagnostics.report import Remedy, Report, SampleReport, SamplesReport, SourceReport, Timings
from diagnostics.verification import skip_verification, verify

Source = str | Path | bytes | Mapping[str, Any]
Progress = Callable[[str], None]


def read_source(source: Source, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes | dict, str | None]:
    """Read a model source once: (ONNX bytes or JSON text bytes or spec dict, display name).

    Raises:
        ModelLoadError: A path that cannot be read.
        ResourceLimitError: A file over ``limits.max_model_bytes``.
    """
    if isinstance(source, Mapping):
        return dict(source), None
    if isinstance(source, bytes):
        return source, None
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return source.encode(), None  # a spec as JSON text, as notebooks pass it
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > limits.max_model_bytes:
            raise ResourceLimitError(
                f"model file {path} is {size:,} bytes, over the limit of "
                f"{limits.max_model_bytes:,}", limit="max_model_bytes",
                value=limits.max_model_bytes)
        return path.read_bytes(), path.name
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}",
                             file=str(path)) from None


def load_model(payload: bytes | dict, *, name: str | None = None,
               limits: Limits = DEFAULT_LIMITS, seed: int = 0) -> LoadedModel:
    """Load ONNX bytes, JSON spec text (bytes starting with '{') or a spec dict.

    Raises:
        ModelLoadError, InvalidSpecError, UnsupportedOperatorError, ResourceLimitError.
    """
    from diagnostics.loading.onnx import load_onnx
    from diagnostics.loading.spec import load_spec

    if isinstance(payload, dict) or payload.lstrip()[:1] == b"{":
        return load_spec(payload, limits=limits, seed=seed)
    return load_onnx(payload, name=name, limits=limits)


def _load(payload: bytes | dict, name: str | None, limits: Limits,
          seed: int) -> tuple[LoadedModel, dict | None]:
    """The model, and for specs the validated document that structural remedies edit."""
    if isinstance(payload, dict) or payload.lstrip()[:1] == b"{":
        from diagnostics.loading.spec import build_spec, parse_spec

        spec = parse_spec(payload, limits=limits)
        return build_spec(spec, seed=seed, limits=limits), spec.to_dict()
    return load_model(payload, name=name, limits=limits, seed=seed), None


def diagnose(source: Source, *, inputs: InputsSource | None = None,
             config: DiagnosisConfig | dict[str, Any] | None = None,
             limits: Limits | None = None, progress: Progress | None = None) -> Report:
    """Diagnose a model's gradients from sample forward+backward passes.

    Args:
        source: ONNX model (path or bytes) or architecture spec (dict, or path to a .json file).
        inputs: Sample inputs: path to an .npz, its bytes, or a mapping name -> array. Without
            them inputs are synthesized from ``config.seed``.
        config: A :class:`DiagnosisConfig` or a dict of its fields.
        limits: Size budgets (the service passes its own); defaults to ``DEFAULT_LIMITS``.
        progress: Called with a short message at each stage (the CLI shows it).

    Returns:
        The report. A vanishing or exploding verdict is a result, not an error.

    Raises:
        DiagnosticsError: Bad input (model, spec, inputs, config), naming what is at fault.
    """
    started = time.perf_counter()
    say = progress or (lambda _message: None)
    settings = resolve_config(config)
    limits = limits or DEFAULT_LIMITS
    timings = Timings()

    say("loading model")
    clock = time.perf_counter()
    payload, name = read_source(source, limits)
    model, spec_document = _load(payload, name, limits, settings.seed)
    repair_source = _repair_source(source, payload, model)
    del payload  # a file's bytes are not held through the probe (a copy of every weight)
    timings.load_s = time.perf_counter() - clock

    clock = time.perf_counter()
    provided = read_inputs(inputs, limits) if inputs is not None else None
    batches = make_batches(model, settings, limits, provided)
    device = _device(settings)
    model, batches = _place(model, batches, device, settings.dtype)
    timings.inputs_s = time.perf_counter() - clock

    found = examine(model, batches, settings, say)
    timings.probe_s, timings.verdict_s = found.probe_s, found.verdict_s
    verdict, layers = found.verdict, found.layers

    clock = time.perf_counter()
    causes = find_causes(model, found, settings)
    candidates = propose(model, found, settings, spec_document, limits)
    timings.remedies_s = time.perf_counter() - clock
    clock = time.perf_counter()
    remedies = _verified_remedies(candidates, model, batches, settings, found, say)
    timings.verification_s = time.perf_counter() - clock

    report = Report(
        source=SourceReport(**vars(model.source)),
        config=settings,
        verdict=verdict,
        layers=layers,
        causes=causes,
        remedies=remedies,
        temporal=found.temporal,
        samples=SamplesReport(
            count=len(batches),
            batch_size=int(batches[0].tensors[0].shape[0]) if batches[0].tensors and
            batches[0].tensors[0].dim() else 1,
            input_shapes={spec.name: list(t.shape) for spec, t in
                          zip(model.inputs, batches[0].tensors, strict=True)},
            runs=[SampleReport(seed=o.seed, loss=o.loss if _finite(o.loss) else None, status=s)
                  for o, s in zip(found.observations, found.sample_statuses, strict=True)],
        ),
        timings=timings,
        notes=list(model.notes),
    )
    report._repair = RepairContext(repair_source, model, batches, settings, candidates)
    timings.total_s = time.perf_counter() - started
    return report


def _repair_source(source: Source, payload: bytes | dict,
                   model: LoadedModel) -> bytes | Callable[[], bytes] | None:
    """What a repaired model is written from: the ONNX bytes, or for a file a reader of it.

    A file is read again when a repaired model is asked for (checked against the hash it was
    diagnosed with) instead of keeping its bytes, as large as the weights, through the run.
    """
    if model.source.kind != "onnx" or not isinstance(payload, bytes):
        return None
    if not isinstance(source, str | Path) or (isinstance(source, str)
                                              and source.lstrip().startswith("{")):
        return payload
    path, digest = Path(source), model.source.sha256

    def read() -> bytes:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file {path} again: {exc.strerror}",
                                 file=str(path)) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ModelLoadError(f"model file {path} changed since it was diagnosed; diagnose "
                                 "it again", file=str(path))
        return data

    return read


WARM_UP_SPEC = {"inputs": [{"name": "x", "shape": [2, 4]}],
                "layers": [{"type": "Linear", "in_features": 4, "out_features": 4},
                           {"type": "ReLU"}, {"type": "Linear", "in_features": 4,
                                              "out_features": 2}]}


def warm_up() -> None:
    """Import torch, the converters and the engine, run one tiny diagnosis and render its HTML
    page (which loads matplotlib), so that a worker process's first real job pays no start-up
    cost."""
    import diagnostics.loading.onnx  # noqa: F401  (registers every converter)
    from diagnostics.render import render_html

    render_html(diagnose(WARM_UP_SPEC, config={"samples": 1, "verify_remedies": False}))


def _verified_remedies(candidates: list[Candidate], model: LoadedModel,
                       batches: list[SampleBatch], config: DiagnosisConfig,
                       before: Examination, say: Progress) -> list[Remedy]:
    if not candidates:
        return []
    size = sum(param.numel() for param in model.parameters.values())
    enabled = config.verify_remedies
    if enabled is None:
        enabled = size <= config.max_verify_parameters
        reason = (f"not verified: the model has {size:,} parameters, over max_verify_parameters "
                  f"({config.max_verify_parameters:,}); set verify_remedies to true to force it")
    else:
        reason = "not verified: verify_remedies is off"
    if not enabled:
        return skip_verification(candidates, reason)
    say(f"verifying {sum(1 for c in candidates if c.edit)} remedies")
    return verify(candidates, model, batches, config, before)


def _device(config: DiagnosisConfig) -> torch.device:
    if config.device is Device.CUDA and not torch.cuda.is_available():
        raise InvalidConfigError("config.device is 'cuda' but no CUDA device is available",
                                 field="device")
    if config.device is Device.CPU or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _place(model: LoadedModel, batches: list[SampleBatch], device: torch.device,
           dtype: ProbeDtype) -> tuple[LoadedModel, list[SampleBatch]]:
    target = {ProbeDtype.FLOAT16: torch.float16, ProbeDtype.BFLOAT16: torch.bfloat16}.get(dtype)
    if device.type == "cpu" and target is None:
        return model, batches
    model.module.to(device=device)
    if target is not None:
        model.module.to(dtype=target)

    def move(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(device)
        return tensor.to(target) if target is not None and tensor.is_floating_point() else tensor

    return model, [SampleBatch(b.seed, tuple(move(t) for t in b.tensors)) for b in batches]


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


__all__ = ["DiagnosticsError", "diagnose", "load_model", "read_source"]
