"""The CI recipes of docs/ci.md run as written: their commands are read from the YAML files in
docs/ci/ (and the repository's .pre-commit-hooks.yaml) and executed against a local ONNX model
and a real local `graddoctor serve`.

Steps that install GradDoctor (`pip install graddoctor`) or belong to the CI platform
(`uses:` actions) are the only ones skipped: here the package is already importable, and
`graddoctor` on PATH runs this checkout's CLI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.service.conftest import ServiceProcess, onnx_mlp

pytestmark = pytest.mark.service

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "docs" / "ci"
CONFIG = {"samples": 1, "seed": 0, "verify_remedies": False}
_EXPRESSION = re.compile(r"\$\{\{\s*([\w.]+)\s*\}\}")


def _installs(command: str) -> bool:
    return command.strip().startswith("pip install")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project as the recipes expect it: build/model.onnx, ci/graddoctor.json, the main
    branch's report, and `graddoctor` on PATH."""
    root = tmp_path_factory.mktemp("project")
    for folder in ("build", "ci", "models", "bin"):
        (root / folder).mkdir()
    model = onnx_mlp(depth=3, width=8)
    (root / "build" / "model.onnx").write_bytes(model)
    (root / "models" / "model.onnx").write_bytes(model)
    (root / "ci" / "graddoctor.json").write_text(json.dumps(CONFIG))
    shim = root / "bin" / "graddoctor"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m service.cli "$@"\n')
    shim.chmod(0o755)
    # The main branch's report, made in-process (one interpreter start fewer than the CLI).
    from diagnostics import diagnose

    report = diagnose(model, config=CONFIG)
    (root / "ci" / "gradients-main.json").write_text(report.model_dump_json())
    return root


def _shell(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    path = f"{cwd / 'bin'}{os.pathsep}{os.environ['PATH']}"
    full = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": path, **env}
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=300, check=False)


def _github_env(step: dict[str, Any], values: dict[str, str]) -> dict[str, str]:
    """A step's `env:` with `${{ vars.X }}` / `${{ secrets.X }}` filled from ``values``."""
    return {key: _EXPRESSION.sub(lambda m: values[m.group(1)], str(value))
            for key, value in (step.get("env") or {}).items()}


def test_github_actions_workflow_runs(workspace: Path, server: ServiceProcess) -> None:
    workflow = yaml.safe_load((RECIPES / "github-actions.yml").read_text())
    values = {"vars.GRADDOCTOR_URL": server.base_url, "secrets.GRADDOCTOR_API_KEY": ""}
    ran = []
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "run" not in step or _installs(step["run"]):
                continue
            done = _shell(step["run"], workspace, _github_env(step, values))
            assert done.returncode == 0, (name, step.get("name"), done.stdout, done.stderr)
            ran.append((name, step["run"].split()[1]))
    assert sorted(ran) == [("local", "compare"), ("local", "diagnose"), ("service", "submit")]
    report = json.loads((workspace / "build" / "gradients.json").read_text())
    assert report["verdict"]["status"] == "healthy"


@pytest.mark.slow  # the same graddoctor commands as the GitHub workflow, which CI runs
def test_gitlab_ci_jobs_run(workspace: Path, server: ServiceProcess) -> None:
    pipeline = yaml.safe_load((RECIPES / "gitlab-ci.yml").read_text())
    jobs = {name: job for name, job in pipeline.items()
            if isinstance(job, dict) and "script" in job}
    assert set(jobs) == {"gradients-local", "gradients-service"}
    for name, job in jobs.items():
        commands = [c for c in [*job.get("before_script", []), *job["script"]] if not _installs(c)]
        env = {"GRADDOCTOR_URL": server.base_url, **(job.get("variables") or {})}
        done = _shell("\n".join(commands), workspace, env)
        assert done.returncode == 0, (name, done.stdout, done.stderr)
        if name == "gradients-service":
            assert "Verdict: HEALTHY" in done.stdout


def _pre_commit_command() -> str:
    hooks = {hook["id"]: hook for hook in yaml.safe_load(
        (ROOT / ".pre-commit-hooks.yaml").read_text())}
    hook = hooks["graddoctor-diagnose"]
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is False  # args name the model; changed files only trigger it
    config = yaml.safe_load((RECIPES / "pre-commit-config.yaml").read_text())
    used = config["repos"][0]["hooks"][0]
    assert used["id"] in hooks
    assert re.search(hook["files"], "models/model.onnx")
    return " ".join([hook["entry"], *used["args"]])


def test_pre_commit_hook_passes_a_healthy_model(workspace: Path):
    done = _shell(_pre_commit_command(), workspace, {})
    assert done.returncode == 0, done.stderr
    assert "Verdict: HEALTHY" in done.stdout


@pytest.mark.slow  # one more interpreter start with torch; the exit status is tested elsewhere
def test_pre_commit_hook_fails_a_vanishing_model(workspace: Path):
    command = _pre_commit_command()
    sigmoid = {"inputs": [{"name": "x", "shape": [8, 16]}],
               "layers": [{"type": "Linear", "in_features": 16, "out_features": 16},
                          {"type": "Sigmoid"}] * 10}
    broken = workspace / "broken"
    (broken / "models").mkdir(parents=True, exist_ok=True)
    (broken / "ci").mkdir(exist_ok=True)
    (broken / "bin").symlink_to(workspace / "bin")
    (broken / "ci" / "graddoctor.json").write_text(json.dumps(CONFIG))
    (broken / "models" / "model.onnx").write_text(json.dumps(sigmoid))  # a spec works too
    done = _shell(command, broken, {})
    assert done.returncode == 3, (done.stdout, done.stderr)


def test_the_doc_shows_the_recipes_verbatim() -> None:
    doc = (ROOT / "docs" / "ci.md").read_text()
    for path in (*sorted(RECIPES.glob("*.y*ml")), ROOT / ".pre-commit-hooks.yaml"):
        assert path.read_text().rstrip() in doc, f"docs/ci.md is out of step with {path.name}"
