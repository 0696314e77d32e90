"""Standard architectures stay healthy (issue 9): no false alarms on the models people have.

Every model of :mod:`tests.standard_models` — torchvision, transformers, timm and LSTM/GRU, each
at its library's own initialization — is exported with each PyTorch exporter's DEFAULT settings
(legacy: constant folding on; dynamo: optimizer on, weights in ``f.data``; and dynamo with
``external_data=False``) and diagnosed with the default config. Only remedy verification is
switched off: it re-probes repaired copies and never changes the verdict.

The verdict must be ``healthy``. The one exception is an export whose BatchNorm the exporter folded
into the convolutions: the file no longer holds the training graph (no normalization), so
``inconclusive`` with the ``folded_batchnorm`` rule is also a right answer. ``vanishing`` or
``exploding`` never is. The BatchNorm-folding note must appear exactly where BatchNorm was folded,
and the same BatchNorm nets exported with BatchNorm kept (no folding) must be healthy.

Each file is exported once per session into a temporary directory. Most cases are slow (exports
of real architectures take seconds each); the default run keeps a subset that covers a folded
CNN, a transformer encoder with a normalized output, a recurrent net and both exporters.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import onnx
import pytest

from diagnostics import diagnose
from tests.standard_models import BY_NAME, EXPORTERS, MODELS, UNFOLDED_EXPORTERS, export_to

# (model, exporter) pairs in the default (CI) run; everything else is slow.
FAST: frozenset[tuple[str, str]] = frozenset({
    ("resnet18", "legacy"),           # BatchNorm folded by constant folding
    ("resnet18", "dynamo"),           # the default dynamo export: weights in an external file
    ("resnet18", "legacy_unfolded"),  # the same net with BatchNorm kept
    ("vit", "legacy"),                # torchvision's zero-initialized head
    ("bert_hidden", "legacy"),        # LayerNorm output: a degenerate mean-square loss
    ("lstm", "dynamo_embedded"),      # recurrent
})
# Exports the exporter itself cannot make (not GradDoctor's to fix): (model, exporter) -> the
# text the exporter's error contains. The test skips only when the export raises with that text.
# T5: torch.export decomposes T5Attention's ``reshape`` of a transposed tensor into a ``view``
# (torch 2.14.1, transformers 5.25), with or without an attention mask.
EXPORTER_FAILS: dict[tuple[str, str], str] = {
    ("t5_encoder", "dynamo"): "Failed to decompose the FX graph",
    ("t5_encoder", "dynamo_embedded"): "Failed to decompose the FX graph",
}
CONFIG = {"verify_remedies": False}
FOLDED_OK = {"healthy", "inconclusive"}


def _cases() -> list:
    cases = []
    for model in MODELS:
        for exporter in EXPORTERS:
            fast = (model.name, exporter) in FAST
            cases.append(pytest.param(model.name, exporter, id=f"{model.name}-{exporter}",
                                      marks=() if fast else pytest.mark.slow))
    return cases


def _unfolded_cases() -> list:
    return [pytest.param(model.name, exporter, id=f"{model.name}-{exporter}",
                         marks=() if (model.name, exporter) in FAST else pytest.mark.slow)
            for model in MODELS if model.has_batch_norm for exporter in UNFOLDED_EXPORTERS]


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("standard-models")


@functools.cache
def _built(name: str):
    return BY_NAME[name].build()


def _export(name: str, exporter: str, directory: Path) -> Path:
    path = directory / f"{name}.{exporter}.onnx"
    if path.exists():
        return path
    try:
        return export_to(_built(name), exporter, path)
    except Exception as exc:
        known = EXPORTER_FAILS.get((name, exporter))
        if known and known in str(exc):
            pytest.skip(f"the {exporter} exporter cannot export {name}: {known}")
        raise


class Outcome(NamedTuple):
    """What the tests read of a report (the report itself holds the loaded model)."""

    status: str
    fired: tuple[str, ...]
    summary: str
    notes: tuple[str, ...]


# A healthy verdict with no depth profile rests on no evidence (timm's SE-ResNets read so while
# the profile's top was a layer inside a branch closed by a zero γ).
NO_PROFILE = "fewer than two hidden layers"


@functools.cache
def _diagnosed(path: Path, optimizer: str = "sgd") -> Outcome:
    report = diagnose(path, config={**CONFIG, "optimizer": optimizer})
    return Outcome(str(report.verdict.status),
                   tuple(check.rule for check in report.verdict.evidence.rules if check.fired),
                   report.verdict.summary, tuple(report.notes))


def _batch_norm_folded(name: str, path: Path) -> bool:
    """The module had BatchNorm and the file has none: the exporter fused it into Conv."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return BY_NAME[name].has_batch_norm and not any(
        node.op_type == "BatchNormalization" for node in graph.node)


def _folding_notes(notes: tuple[str, ...]) -> list[str]:
    """Notes that say BatchNorm was (or may have been) folded away (other notes may name
    BatchNorm for other reasons, e.g. its constant-valued initializers)."""
    return [note for note in notes if "BatchNorm" in note and "fold" in note.lower()]


@pytest.mark.parametrize(("name", "exporter"), _cases())
def test_standard_model_is_healthy(name: str, exporter: str, export_dir: Path) -> None:
    path = _export(name, exporter, export_dir)
    status, fired, summary, _ = _diagnosed(path)
    context = f"{name} ({exporter}): {status}, rules fired {list(fired)}: {summary}"
    if _batch_norm_folded(name, path):
        assert status in FOLDED_OK, context
        if status == "inconclusive":
            assert "folded_batchnorm" in fired, context
    else:
        assert status == "healthy", context
        assert NO_PROFILE not in summary, context


@pytest.mark.parametrize(("name", "exporter"), _cases())
def test_batch_norm_note_only_where_folded(name: str, exporter: str, export_dir: Path) -> None:
    path = _export(name, exporter, export_dir)
    noted = _folding_notes(_diagnosed(path).notes)
    if _batch_norm_folded(name, path):
        assert noted, f"{name} ({exporter}): BatchNorm was folded but no note says so"
    else:
        assert not noted, f"{name} ({exporter}) had no BatchNorm folded, yet: {noted}"


@pytest.mark.parametrize(("name", "exporter"), _unfolded_cases())
def test_unfolded_twin_is_healthy(name: str, exporter: str, export_dir: Path) -> None:
    """The same BatchNorm net exported with BatchNorm kept is the training graph: healthy."""
    status, fired, summary, notes = _diagnosed(_export(name, exporter, export_dir))
    context = f"{name} ({exporter}): {status}, rules fired {list(fired)}: {summary}"
    assert status == "healthy", context
    assert NO_PROFILE not in summary, context
    assert not _folding_notes(notes), notes


@pytest.mark.parametrize(("name", "exporter"), _cases())
def test_standard_model_is_healthy_for_adam_too(name: str, exporter: str,
                                                export_dir: Path) -> None:
    """Adam users get the same: its rules (adam_epsilon, weight_gradient_vanishing, the lower
    forward-scale threshold) do not fire on what people train with Adam. BERT's first weight
    is an attention query, whose gradient at init is ~1e-2 of the last layer's: the backward
    signal itself is flat, so that alone is no stall."""
    path = _export(name, exporter, export_dir)
    status, fired, summary, _ = _diagnosed(path, "adam")
    context = f"{name} ({exporter}, adam): {status}, rules fired {list(fired)}: {summary}"
    if _batch_norm_folded(name, path):
        assert status in FOLDED_OK, context
    else:
        assert status == "healthy", context
