"""Size and work budgets a model must fit before we allocate anything for it.

The library enforces them; the operator of a service sets them (the service passes its own
``Limits``). They are not part of the user's ``DiagnosisConfig``: a user must not be able to
raise them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Budgets, each checked up front where it can be estimated.

    Attributes:
        max_model_bytes: Size of an ONNX file or spec document.
        max_parameters: Trainable elements (sum over all weights).
        max_nodes: ONNX nodes (subgraphs included) or spec layers after expanding ``Repeat``.
        max_nesting: Depth of nested subgraphs (If/Loop/Scan) or spec containers.
        max_tensor_elements: Elements of any one tensor, declared, inferred or synthesized
            (an initializer, a ConstantOfShape/Expand/Tile output, an input).
        max_input_elements: Elements of all sample inputs together.
    """

    # A file that embeds its weights holds 4 bytes per float32 parameter: 1 GiB fits a model
    # at the parameter budget (800 MB) with its graph. At 512 MiB an embedded VGG-16-BN
    # (138M parameters, 553 MB, legacy export) was refused although its .data twin loaded.
    max_model_bytes: int = 1024 * 1024 * 1024
    max_parameters: int = 200_000_000
    max_nodes: int = 20_000
    max_nesting: int = 8
    max_tensor_elements: int = 256 * 1024 * 1024
    max_input_elements: int = 64 * 1024 * 1024


DEFAULT_LIMITS = Limits()
