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
from onnx import numpy_helper

from diagnostics import edits
from diagnostics.config import DiagnosisConfig
from diagnostics.errors import DiagnosticsError
from diagnostics.inputs import SampleBatch
from diagnostics.model import LoadedModel
from diagnostics.probe import probe_mode
from diagnostics.remedies import Candidate


class RemedyNotRepairableError(DiagnosticsError):
    """The remedy does not exist, or changes more than initializer values."""

    error_type = "remedy_not_repairable"


@dataclass
class RepairContext:
    """What a report keeps (in memory only) so it can produce repaired models later."""

    source_bytes: bytes | Callable[[], bytes] | None  # a reader: the file is read again
    model: LoadedModel
    batches: list[SampleBatch]
    config: DiagnosisConfig
    candidates: list[Candidate]


def repaired_onnx(context: RepairContext, remedy_id: str) -> bytes:
    """The ONNX file with the remedy's weights.

    Raises:
        RemedyNotRepairableError: Unknown remedy id, a remedy that edits the architecture, or a
            model that did not come from an ONNX file.
    """
    candidate = next((c for c in context.candidates if c.remedy.id == remedy_id), None)
    if candidate is None:
        known = ", ".join(c.remedy.id for c in context.candidates) or "none"
        raise RemedyNotRepairableError(
            f"no remedy {remedy_id!r} in this report (remedies: {known})", remedy=remedy_id)
    if not candidate.remedy.repairable or candidate.edit is None:
        raise RemedyNotRepairableError(
            f"remedy {remedy_id!r} changes the architecture or the training setup, not only "
            "initializer values; apply it in your model code", remedy=remedy_id)
    if context.source_bytes is None or context.model.source.kind != "onnx":
        raise RemedyNotRepairableError(
            "repaired models are written for ONNX sources; for a spec, set the init shown in the "
            "remedy's params", remedy=remedy_id)
    copy = edits.copy_model(context.model)
    with probe_mode(copy.module, context.config.norm_stats):
        copy = candidate.edit(copy, context.batches)
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
    return model.SerializeToString()


def write_repaired_model(report: Any, remedy_id: str, _source: str | Path, output: str | Path,
                         **_ignored: Any) -> None:
    """CLI helper: write ``report.repaired_model(remedy_id)`` to ``output``."""
    Path(output).write_bytes(report.repaired_model(remedy_id))
