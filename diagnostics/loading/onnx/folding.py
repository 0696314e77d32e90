"""Which nodes of an exported graph carry a BatchNorm that the exporter folded into them.

PyTorch's exporters fold eval-mode BatchNorm into the preceding convolution by default (the
legacy exporter's constant folding, dynamo's optimizer), so the file is an un-normalized network
that is not the one being trained. Each exporter leaves its own evidence, and only that evidence
counts (a graph without BatchNormalization nodes may simply never have had any):

- dynamo (onnxscript's rewriter) records the rule on the node: metadata ``pkg.onnxscript.
  rewriter.rule_name`` names ``FuseBatchNormIntoConv`` (or ``...Gemm``), and the node's class
  hierarchy names the BatchNorm module it came from;
- the legacy exporter renames the fused weight and bias after the op (``onnx::Conv_25``,
  ``onnx::Conv_26``), which it never does for a weight it kept as it was
  (``layer1.0.conv1.weight``). Folding always writes a bias (β − μγ/σ, even for a conv that had
  none); constant folding alone also renames a weight it reshaped or sliced (transformers'
  LFM2 ShortConv), but leaves a missing bias missing and a kept bias named.
"""

from __future__ import annotations

import re

from onnx import GraphProto

_FOLDED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_RULE_KEY = "pkg.onnxscript.rewriter.rule_name"
_LEGACY_FUSED_NAME = re.compile(r"^onnx::(Conv|ConvTranspose)_\d+$")


def folded_batchnorm_nodes(graph: GraphProto) -> tuple[str, ...]:
    """Names of the nodes (in graph order) that carry a BatchNorm folded in by the exporter."""
    initializers = {init.name for init in graph.initializer}
    folded = []
    for node in graph.node:
        if node.op_type not in _FOLDED_OPS:
            continue
        rules = next((entry.value for entry in node.metadata_props if entry.key == _RULE_KEY), "")
        by_rule = "BatchNorm" in rules
        # The bias may come through an Identity: the exporter writes identical folded biases
        # (zeros at init) once and copies them.
        by_name = node.op_type.startswith("Conv") and len(node.input) > 2 and \
            node.input[1] in initializers and \
            all(_LEGACY_FUSED_NAME.match(name) for name in node.input[1:3])
        if by_rule or by_name:
            folded.append(node.name or node.output[0])
    return tuple(folded)


FOLDING_ADVICE = (
    "re-export without folding: torch.onnx.export(..., dynamo=False, "
    "do_constant_folding=False) or torch.onnx.export(..., dynamo=True, optimize=False) — or "
    "export the model in training mode (training=torch.onnx.TrainingMode.TRAINING)"
)
