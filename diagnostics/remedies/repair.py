"""Repaired models: a remedy that changes only initializer values, written back into the file.

The remedy's edit is re-applied to a fresh copy of the loaded model (same inputs, same seed, so
the weights are the ones its verification measured), and every parameter is written into the
original ONNX model under its initializer name, in the initializer's own dtype. Nothing else in
the file changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from diagnostics.config import DiagnosisConfig
from diagnostics.errors import RemedyNotRepairableError
from diagnostics.inputs import SampleBatch
from diagnostics.model import LoadedModel, copy_model
from diagnostics.probe import probe_mode
from diagnostics.remedies.candidates import Candidate, Edit


@dataclass
class RepairContext:
    """What a report keeps (in memory only) so it can produce repaired models later."""

    source_bytes: bytes | Callable[[], bytes] | None  # a reader: the file is read again
    model: LoadedModel
    batches: list[SampleBatch]
    config: DiagnosisConfig
    candidates: list[Candidate]
    data_dir: str | Path | None = None  # where the source's external data files are
    # An nn.Module source's (device, float dtype), which the probe may have changed.
    original: tuple[torch.device, torch.dtype] | None = None

    # What the report calls: the report schema never imports this module (or torch).
    def repaired_onnx(self, remedy_id: str) -> bytes:
        return repaired_onnx(self, remedy_id)

    def repaired_module(self, remedy_id: str) -> Any:
        return repaired_module(self, remedy_id)


def repaired_onnx(context: RepairContext, remedy_id: str) -> bytes:
    """The ONNX file with the remedy's weights.

    Raises:
        RemedyNotRepairableError: Unknown remedy id, a remedy that edits the architecture, or a
            model that did not come from an ONNX file.
    """
    edit = _repairable(context, remedy_id)
    if context.model.source.kind == "module":
        raise RemedyNotRepairableError(
            "this report is of an nn.Module: report.repaired_module(remedy_id) returns the "
            "repaired module", remedy=remedy_id)
    if context.source_bytes is None or context.model.source.kind != "onnx":
        raise RemedyNotRepairableError(
            "repaired models are written for ONNX sources; for a spec, set the init shown in the "
            "remedy's params", remedy=remedy_id)
    copy = _edited_copy(context, edit)
    source = context.source_bytes
    model = onnx.load_from_string(source() if callable(source) else source)
    by_name = {init.name: init for init in model.graph.initializer}
    for name, param in copy.parameters.items():
        target = by_name.get(name)
        if target is None:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(target.data_type)
        values = param.detach().cpu().numpy().astype(dtype, copy=False)
        if tuple(values.shape) != tuple(target.dims):
            continue  # a parameter kept in another layout is never written half-right
        target.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(values), name=name))
    return _one_file(model, context.data_dir, remedy_id)


# protobuf cannot serialize a message over 2 GiB.
_PROTO_LIMIT = 2**31 - 1


def _one_file(model: onnx.ModelProto, data_dir: str | Path | None, remedy_id: str) -> bytes:
    """The repaired model as one file: external tensors it kept (constants) embedded."""
    from diagnostics.limits import Limits
    from diagnostics.loading.onnx.external_data import embed_external_data

    if model.ByteSize() > _PROTO_LIMIT:
        raise RemedyNotRepairableError(
            f"the repaired model is over protobuf's 2 GB limit for one file; apply remedy "
            f"{remedy_id!r} in your model code", remedy=remedy_id)
    embed_external_data(model, data_dir, Limits(max_tensor_elements=_PROTO_LIMIT))
    if model.ByteSize() > _PROTO_LIMIT:
        raise RemedyNotRepairableError(
            f"the repaired model is over protobuf's 2 GB limit for one file; apply remedy "
            f"{remedy_id!r} in your model code", remedy=remedy_id)
    return model.SerializeToString()


def repaired_module(context: RepairContext, remedy_id: str) -> nn.Module:
    """A new copy of the diagnosed ``nn.Module`` with the remedy's weights.

    The copy has the class, structure, train/eval modes, ``requires_grad`` flags and in-place
    flags of the caller's module, on its device and in its dtype; only the weights the remedy
    re-initializes differ (the ones its verification measured).

    Raises:
        RemedyNotRepairableError: Unknown remedy id, a remedy that edits the architecture, or a
            model that did not come from an ``nn.Module``.
    """
    from diagnostics.loading.nn_module import unwrap

    edit = _repairable(context, remedy_id)
    if context.model.source.kind != "module":
        raise RemedyNotRepairableError(
            "repaired_module is for reports of an nn.Module; use repaired_model for ONNX sources",
            remedy=remedy_id)
    module = unwrap(_edited_copy(context, edit))
    if context.original is not None:
        module.to(device=context.original[0], dtype=context.original[1])
    return module


def _repairable(context: RepairContext, remedy_id: str) -> Edit:
    """The edit of the remedy ``remedy_id``, which must only change initializer values."""
    candidate = next((c for c in context.candidates if c.remedy.id == remedy_id), None)
    if candidate is None:
        known = ", ".join(c.remedy.id for c in context.candidates) or "none"
        raise RemedyNotRepairableError(
            f"no remedy {remedy_id!r} in this report (remedies: {known})", remedy=remedy_id)
    if not candidate.remedy.repairable or candidate.edit is None:
        raise RemedyNotRepairableError(
            f"remedy {remedy_id!r} changes the architecture or the training setup, not only "
            "initializer values; apply it in your model code", remedy=remedy_id)
    return candidate.edit


def _edited_copy(context: RepairContext, edit: Edit) -> LoadedModel:
    copy = copy_model(context.model)
    with probe_mode(copy.module, context.config.norm_stats):
        return edit(copy, context.batches)


def write_repaired_model(report: Any, remedy_id: str, output: str | Path) -> None:
    """CLI helper: write ``report.repaired_model(remedy_id)`` to ``output``."""
    Path(output).write_bytes(report.repaired_model(remedy_id))
