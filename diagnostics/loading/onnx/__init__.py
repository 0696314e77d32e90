"""ONNX files -> LoadedModel: checks, graph facts and rewrites, onnx2torch conversion, parameters.

The entry point is :func:`diagnostics.loading.onnx.loader.load_onnx`; ``ops/`` holds the
converters we register with onnx2torch, one module per op family.
"""
