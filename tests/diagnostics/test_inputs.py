"""Synthesized inputs: shapes (given, shared by name, bounded by the graph, asked for); masks."""

from __future__ import annotations

import pytest
import torch

from diagnostics.config import resolve_config
from diagnostics.errors import InvalidInputsError
from diagnostics.inputs import INFERRED_AXIS_CAP, make_batches, resolve_shapes
from diagnostics.limits import DEFAULT_LIMITS
from diagnostics.model import InputSpec, LoadedModel, SourceInfo

IDS = InputSpec("input_ids", ("batch", "sequence"), "int64", vocab=100, max_sizes=((1, 64),))
MASK = InputSpec("attention_mask", ("batch", "sequence"), "int64", max_sizes=((1, 64),))
FREE = InputSpec("audio", ("n", 1, "samples"))


@pytest.mark.parametrize(
    ("specs", "config", "shapes"),
    [
        pytest.param([IDS, MASK], {}, [(8, 64), (8, 64)], id="bound-by-position-table"),
        pytest.param([IDS, MASK], {"batch_size": 2, "input_shapes": {"attention_mask": [3, 10]}},
                     [(3, 10), (3, 10)], id="one-given-shape-fixes-shared-names"),
        pytest.param([InputSpec("ids", (None, "t"), "int64", max_sizes=((1, 4096),))], {},
                     [(8, INFERRED_AXIS_CAP)], id="bound-capped"),
        pytest.param([FREE], {"input_shapes": {"audio": [2, 1, 100]}}, [(2, 1, 100)],
                     id="given"),
    ],
)
def test_resolved_shapes(specs, config, shapes) -> None:
    assert resolve_shapes(specs, resolve_config(config)) == shapes


def test_unbounded_dynamic_axis_is_asked_for_by_name() -> None:
    with pytest.raises(InvalidInputsError) as caught:
        resolve_shapes([FREE], resolve_config({}))
    assert caught.value.context == {"input": "audio", "axis": 2}
    assert "'audio' axis 2 ('samples') is dynamic" in caught.value.detail
    assert "config.input_shapes" in caught.value.detail


def test_given_shapes_must_agree_on_shared_names() -> None:
    config = resolve_config({"input_shapes": {"input_ids": [2, 16], "attention_mask": [2, 12]}})
    with pytest.raises(InvalidInputsError, match="'sequence'") as caught:
        resolve_shapes([IDS, MASK], config)
    assert caught.value.context == {"input": "attention_mask", "axis": 1}


@pytest.mark.parametrize("dtype", ["int64", "float32", "bool"])
def test_masks_are_ones_whatever_their_dtype(dtype: str) -> None:
    model = LoadedModel(module=torch.nn.Identity(),
                        inputs=(InputSpec("input_ids", (2, 5), "int64", vocab=7),
                                InputSpec("attention_mask", (2, 5), dtype)),
                        output_names=("y",), layers=(), parameters={},
                        source=SourceInfo("onnx", "0" * 64))
    (batch,) = make_batches(model, resolve_config({"samples": 1}), DEFAULT_LIMITS)
    ids, mask = batch.tensors
    assert bool((mask == 1).all())
    assert str(mask.dtype) == f"torch.{dtype}"
    assert 0 <= int(ids.min()) <= int(ids.max()) < 7


def test_a_probe_that_fails_on_synthesized_ids_says_to_supply_inputs():
    # BART's classifier pools the hidden state at the end-of-sequence token; random ids have
    # none, and the failure must say that the inputs, not the model, are what to change.
    import numpy as np
    from torch import nn

    from diagnostics import diagnose
    from diagnostics.errors import ProbeError
    from tests.onnx_export import export_legacy

    class EosPool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 2)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.embed(input_ids)
            pooled = hidden[input_ids.eq(2)].view(input_ids.shape[0], -1, 8)[:, -1, :]
            return self.head(pooled)

    ids = torch.randint(3, 50, (2, 6))
    ids[:, -1] = 2
    torch.manual_seed(0)
    data = export_legacy(EosPool().eval(), (ids,), input_names=["input_ids"])
    config = {"samples": 1, "verify_remedies": False}
    with pytest.raises(ProbeError) as caught:
        diagnose(data, config=config)
    assert "the inputs were synthesized (input_ids" in caught.value.detail
    assert "--inputs" in caught.value.detail
    report = diagnose(data, config=config, inputs={"input_ids": ids.numpy().astype(np.int64)})
    assert report.verdict.status == "healthy", report.verdict.summary
