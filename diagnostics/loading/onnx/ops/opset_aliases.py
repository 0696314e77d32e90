"""Newer opset versions of ops whose schema changed only in the element types it accepts.

onnx2torch looks a node up at its schema's ``since_version`` for the model's opset, so a model
at opset 20 that uses Identity needs a converter registered at Identity-19 even though Identity-19
only added float8 types. For the ops below the attributes, inputs and outputs are identical to
the newest version onnx2torch 1.5.15 registers (``tests/diagnostics/test_ops.py`` checks that
against the schemas), so the stock converter is registered again at the newer versions.

Ops whose newer versions changed behaviour (Reduce*-18 axes as an input, Pad-18 axes, Split-18
``num_outputs``, Resize-18/19, AveragePool-19 dilations, Cast-19 ``saturate``) and ops whose
stock converter is replaced (Flatten, Reshape, Shape, DepthToSpace, IsInf, ScatterND here;
Conv, MaxPool, Dropout, TopK, Selu in the ``std_*`` modules) register every version in their
own modules.
"""

from __future__ import annotations

from onnx2torch.node_converters.registry import get_converter

from diagnostics.loading.onnx.ops.registry import converter

# op -> (the stock version whose converter is reused, newer type-only versions)
TYPE_ONLY_VERSIONS: dict[str, tuple[int, tuple[int, ...]]] = {
    "Acos": (7, (22,)),
    "Asin": (7, (22,)),
    "Atan": (7, (22,)),
    "Cos": (7, (22,)),
    "Sin": (7, (22,)),
    "Tan": (7, (22,)),
    "Celu": (12, (28,)),
    "Elu": (6, (22,)),
    "HardSigmoid": (6, (22,)),
    "HardSwish": (14, (22,)),
    "Softplus": (1, (22,)),
    "Softsign": (1, (22,)),
    "Round": (11, (22,)),
    "Mod": (13, (28,)),
    "GlobalAveragePool": (1, (22,)),
    "InstanceNormalization": (6, (22,)),
    "Einsum": (12, (28,)),
    "EyeLike": (9, (22,)),
    "RoiAlign": (16, (22,)),
    "Equal": (13, (19,)),
    "GreaterOrEqual": (12, (16,)),
    "LessOrEqual": (12, (16,)),
    "IsNaN": (13, (9, 20)),  # 9 is older than the stock 13 but differs only in types too
    "Constant": (13, (19, 21, 23, 24, 25)),
    "ConstantOfShape": (9, (20, 21, 23, 24, 25)),
    "Identity": (16, (19, 21, 23, 24, 25)),
    "Squeeze": (21, (23, 24, 25)),
    "Unsqueeze": (13, (21, 23, 24, 25)),
    "Transpose": (13, (21, 23, 24, 25)),
}

for _op, (_stock, _versions) in TYPE_ONLY_VERSIONS.items():
    converter(_op, _versions)(get_converter(_op, _stock))
