"""diagnose(): load -> inputs -> probe -> statistics -> verdict -> remedies -> report."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from diagnostics.causes import find_causes
from diagnostics.config import Device, DiagnosisConfig, NormStats, ProbeDtype, resolve_config
from diagnostics.errors import (
    DiagnosticsError,
    InvalidConfigError,
    InvalidInputsError,
    ModelLoadError,
    ProbeError,
    ResourceLimitError,
)
from diagnostics.examination import Examination, examine
from diagnostics.guide_links import link_report
from diagnostics.inputs import InputsSource, SampleBatch, id_inputs, make_batches, read_inputs
from diagnostics.limits import DEFAULT_LIMITS, Limits
from diagnostics.loading.nn_module import ModuleInputs
from diagnostics.model import LoadedModel
from diagnostics.remedies.candidates import Candidate
from diagnostics.remedies.proposal import propose
from diagnostics.remedies.repair import RepairContext
from diagnostics.remedies.verification import skip_verification, verify
from diagnostics.report import (
    LayerReport,
    Remedy,
    Report,
    SampleReport,
    SamplesReport,
    SourceReport,
    Timings,
)

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


def model_folder(source: Source) -> Path | None:
    """The folder an ONNX file given by path reads its external data from: its own."""
    if isinstance(source, (bytes, Mapping)):
        return None
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return None
    return Path(source).parent


def load_model(payload: bytes | dict, *, name: str | None = None,
               limits: Limits = DEFAULT_LIMITS, seed: int = 0,
               data_dir: str | Path | None = None) -> LoadedModel:
    """Load ONNX bytes, JSON spec text (bytes starting with '{') or a spec dict.

    ``data_dir`` is where an ONNX model's external data files are read from (None: refused).

    Raises:
        ModelLoadError, InvalidSpecError, UnsupportedOperatorError, ResourceLimitError.
    """
    from diagnostics.loading.onnx.loader import load_onnx
    from diagnostics.loading.spec.loader import load_spec

    if isinstance(payload, dict) or payload.lstrip()[:1] == b"{":
        return load_spec(payload, limits=limits, seed=seed)
    return load_onnx(payload, name=name, limits=limits, data_dir=data_dir)


def _load(payload: bytes | dict, name: str | None, limits: Limits, seed: int,
          data_dir: str | Path | None) -> tuple[LoadedModel, dict | None]:
    """The model, and for specs the validated document that structural remedies edit."""
    if isinstance(payload, dict) or payload.lstrip()[:1] == b"{":
        from diagnostics.loading.spec.loader import build_spec, parse_spec

        spec = parse_spec(payload, limits=limits)
        return build_spec(spec, seed=seed, limits=limits), spec.to_dict()
    return load_model(payload, name=name, limits=limits, seed=seed, data_dir=data_dir), None


def _array_inputs(inputs: InputsSource | ModuleInputs) -> InputsSource:
    """The inputs of an ONNX model or a spec, which a module's tensor arguments are not."""
    if isinstance(inputs, (torch.Tensor, tuple, list)):
        raise InvalidInputsError(
            f"inputs of type {type(inputs).__name__} are an nn.Module's arguments; an ONNX model "
            "or a spec takes an .npz (path or bytes) or a mapping name -> array")
    return inputs


def _load_module(module: torch.nn.Module, inputs: Any, config: DiagnosisConfig,
                 limits: Limits) -> tuple[LoadedModel, list[SampleBatch]]:
    """A live module and its inputs: the same batch for every sample, as provided inputs are."""
    from diagnostics.loading.nn_module import load_module

    if inputs is None:
        raise InvalidInputsError(
            "diagnosing an nn.Module needs its inputs: a tensor, a tuple of tensors or a dict of "
            "keyword arguments (diagnose(module, inputs=...))")
    model, tensors = load_module(module, inputs, limits=limits)
    tensors = tuple(tensor.detach() for tensor in tensors)
    return model, [SampleBatch(config.seed + index, tensors) for index in range(config.samples)]


def diagnose(source: Source | torch.nn.Module, *,
             inputs: InputsSource | ModuleInputs | None = None,
             config: DiagnosisConfig | dict[str, Any] | None = None,
             limits: Limits | None = None, progress: Progress | None = None,
             data_dir: str | Path | None = None) -> Report:
    """Diagnose a model's gradients from sample forward+backward passes.

    Args:
        source: ONNX model (path or bytes), architecture spec (dict, or path to a .json file),
            or a live ``torch.nn.Module`` (deep-copied, never modified; parameter names are its
            ``state_dict`` names).
        inputs: Sample inputs: path to an .npz, its bytes, or a mapping name -> array. Without
            them inputs are synthesized from ``config.seed``. For an ``nn.Module`` they are
            required: a tensor, a tuple of tensors (positional arguments) or a dict of keyword
            arguments (non-tensor values are passed as they are); every sample uses them.
        config: A :class:`DiagnosisConfig` or a dict of its fields.
        limits: Size budgets (the service passes its own); defaults to ``DEFAULT_LIMITS``.
        progress: Called with a short message at each stage (the CLI shows it). Repeated
            stages carry counts, ``"probing sample 2/3"``, ``"verifying remedy 1/4
            (reinitialize)"``, so a caller can estimate the time left.
        data_dir: Folder holding the files an ONNX model keeps its weights in (external data,
            ``model.onnx.data``). Default: the model file's own folder when ``source`` is a
            path; with bytes and no ``data_dir``, external data is refused. Locations are
            read only inside this folder (see ``diagnostics.loading.onnx.external_data``).

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

    say("loading the model")
    clock = time.perf_counter()
    folder: str | Path | None = None
    repair_source: bytes | Callable[[], bytes] | None = None
    if isinstance(source, torch.nn.Module):
        model, batches = _load_module(source, inputs, settings, limits)
        spec_document = None
    else:
        payload, name = read_source(source, limits)
        folder = data_dir if data_dir is not None else model_folder(source)
        model, spec_document = _load(payload, name, limits, settings.seed, folder)
        repair_source = _repair_source(source, payload, model)
        del payload  # a file's bytes are not held through the probe (a copy of every weight)
    timings.load_s = time.perf_counter() - clock

    clock = time.perf_counter()
    if not isinstance(source, torch.nn.Module):
        provided = read_inputs(_array_inputs(inputs), limits) if inputs is not None else None
        batches = make_batches(model, settings, limits, provided)
    device = _device(settings)
    model, batches = _place(model, batches, device, settings.dtype)
    timings.inputs_s = time.perf_counter() - clock

    try:
        found = examine(model, batches, settings, say)
    except ProbeError as exc:
        raise _with_input_hint(exc, model, synthesized=inputs is None and
                               not isinstance(source, torch.nn.Module)) from exc
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
        notes=[*model.notes, *_small_batch_statistics(model, layers, batches, settings)],
    )
    link_report(report)  # each rule, cause and remedy -> its guide section (docs/guide)
    report._repair = RepairContext(repair_source, model, batches, settings, candidates,
                                   data_dir=folder, original=_placement(source))
    timings.total_s = time.perf_counter() - started
    return report


# Batch statistics over fewer values per channel than this are noisy enough to inflate every
# gradient below them (torchvision's ResNet-50 at 64 px, batch 2: the last stage normalizes 8
# values and relative_update reads 4.2x; 0.63x at 224 px, where it sees 98).
_FEW_STATISTICS = 32
_BATCH_NORMS = frozenset({"BatchNormalization", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"})


def _small_batch_statistics(model: LoadedModel, layers: list[LayerReport],
                            batches: list[SampleBatch], settings: DiagnosisConfig) -> list[str]:
    """A note when a BatchNorm's batch statistics in this probe cover few values per channel."""
    if settings.norm_stats is not NormStats.BATCH or not batches[0].tensors or \
            not batches[0].tensors[0].dim():
        return []
    batch = int(batches[0].tensors[0].shape[0])
    counts = []
    for info, layer in zip(model.layers, layers, strict=True):
        names = [n for n in info.parameters if n in model.parameters]
        if info.op_type in _BATCH_NORMS and names and layer.output_numel:
            channels = int(model.parameters[names[0]].shape[0]) or 1
            counts.append((batch * layer.output_numel // channels, layer.name))
    if not counts or min(counts)[0] >= _FEW_STATISTICS:
        return []
    values, name = min(counts)
    return [f"BatchNorm {name} normalizes over only {values} values per channel in this probe "
            f"(batch {batch}): statistics that small make the gradients below it larger and "
            "noisier than at a training batch; probe with the batch and input size you train "
            "with (config batch_size where the batch axis is dynamic; else export with them)."]


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
    import diagnostics.loading.onnx.loader  # noqa: F401  (registers every converter)
    from diagnostics.render import render_html

    render_html(diagnose(WARM_UP_SPEC, config={"samples": 1, "verify_remedies": False}))


def _with_input_hint(exc: ProbeError, model: LoadedModel, *, synthesized: bool) -> ProbeError:
    """``exc``, saying so when the inputs that failed were synthesized token ids: random ids
    lack what some models look for (BART's classifier pools at the end-of-sequence token;
    a traced mixture of experts routes every token as in the export)."""
    ids = id_inputs(model.inputs)
    if not synthesized or not ids:
        return exc
    return ProbeError(
        f"{exc.detail} — the inputs were synthesized ({', '.join(ids)}: random ids); if the "
        "model needs particular values (an end-of-sequence token, the export's routing), give "
        "it its own inputs (CLI --inputs FILE.npz, API 'inputs' part, diagnose(..., inputs=))",
        node=exc.context.get("node"))


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
    return verify(candidates, model, batches, config, before, progress=say)


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


def _placement(source: object) -> tuple[torch.device, torch.dtype] | None:
    """An nn.Module's device and float dtype (from its first float parameter), to restore on a
    repaired copy."""
    if not isinstance(source, torch.nn.Module):
        return None
    first = next((p for p in source.parameters() if p.is_floating_point()), None)
    return (first.device, first.dtype) if first is not None else None


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


__all__ = ["DiagnosticsError", "diagnose", "load_model", "read_source"]
