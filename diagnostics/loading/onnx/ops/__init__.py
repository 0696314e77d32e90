"""Our onnx2torch converters: one module per op family, registered through onnx2torch's registry.

Importing this package imports every module in it, so a new family needs no edit here. Each
module registers with :func:`diagnostics.loading.onnx.ops.registry.converter`.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")
