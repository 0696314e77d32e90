"""House rules the layout depends on, checked on the code itself (issue 12's import contracts).

- ``diagnostics`` is a pure library: no module of it imports ``service`` (lazily or not).
- The report schema and the package's public face import no engine module: a pipeline client
  that only reads reports (``graddoctor submit``, the renderers) starts without torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):  # function-level (lazy) imports count too
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_diagnostics_never_imports_service():
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in _imported_modules(path)
                                            if name == "service" or name.startswith("service."))
        for path in (ROOT / "diagnostics").rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_report_schema_and_public_face_import_no_engine():
    probe = ("import sys, diagnostics, diagnostics.report, diagnostics.config; "
             "engine = [m for m in sys.modules if m == 'torch' or m.startswith(("
             "'diagnostics.repair', 'diagnostics.pipeline', 'diagnostics.probe', "
             "'diagnostics.loading'))]; print(engine); sys.exit(1 if engine else 0)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
