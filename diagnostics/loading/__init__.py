"""Sources -> :class:`~diagnostics.model.LoadedModel`: one loader per kind of input.

``onnx/`` (ONNX bytes, checked, converted by onnx2torch and our converters in ``onnx/ops/``),
``spec/`` (JSON architecture specs, validated, then built) and ``nn_module.py`` (a live
``torch.nn.Module``, probed without an export).
"""
