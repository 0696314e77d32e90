"""Imported once by the embedded pool's forkserver, so every worker it forks starts warm.

Nothing here may start threads (a forked process inherits none of them): imports, and building
matplotlib's mathtext parser (about 2 s, otherwise paid by each worker's first report). The
engine imports some modules lazily; those we know of are listed, best effort (a renamed module
only costs each worker's warm-up run a little time).
"""

import importlib
import logging

_MODULES = (
    "torch", "onnx", "onnx2torch", "diagnostics",
    "diagnostics.loading.onnx.loader", "diagnostics.loading.spec.loader",
    "diagnostics.remedies.proposal",
    "diagnostics.remedies.verification", "diagnostics.render.html",
)

for _name in _MODULES:
    try:
        importlib.import_module(_name)
    except Exception:  # a broken import must not kill the forkserver
        logging.getLogger("graddoctor.pool").warning("preloading %s failed", _name)

try:
    from matplotlib.mathtext import MathTextParser

    MathTextParser("path").parse(r"$10^{-3}\ \|\partial L/\partial y\|$")
except Exception:
    logging.getLogger("graddoctor.pool").warning("warming matplotlib failed")
