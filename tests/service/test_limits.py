"""Per-job limits inside a worker process, and the settings they come from."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.settings import Settings
from service.workers.limits import JobTimeLimitError, isolated_cwd, time_limit
from tests.service.conftest import ROOT


def _swallowing_sleep(seconds: float) -> None:
    try:
        time.sleep(seconds)
    except Exception:  # code under a job that swallows errors cannot swallow the time limit
        pytest.fail("caught as an Exception")


def test_time_limit_interrupts_and_is_not_an_exception() -> None:
    started = time.monotonic()
    with pytest.raises(JobTimeLimitError), time_limit(0.2):
        _swallowing_sleep(5)
    assert time.monotonic() - started < 2


def test_memory_limit_refuses_big_allocations_then_lifts() -> None:
    script = (
        "from service.workers.limits import memory_limit\n"
        "with memory_limit(64 * 2**20):\n"
        "    try:\n        bytearray(512 * 2**20)\n    except MemoryError:\n"
        "        print('refused')\n"
        "bytearray(512 * 2**20)\nprint('lifted')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.split() == ["refused", "lifted"], result.stderr


def test_isolated_cwd_is_empty_and_removed() -> None:
    before = os.getcwd()
    with isolated_cwd() as folder:
        assert os.getcwd() == folder
        assert os.listdir(folder) == []
        Path("scratch").write_text("x")
    assert os.getcwd() == before
    assert not Path(folder).exists()


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRADDOCTOR_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("GRADDOCTOR_API_KEYS", " one, two ,,")
    monkeypatch.setenv("GRADDOCTOR_DATABASE_URL", "postgres://u:p@db/x")
    monkeypatch.setenv("GRADDOCTOR_WORKERS", "3")
    settings = Settings()
    assert settings.api_keys == ("one", "two")
    assert settings.store_url == "postgresql+psycopg://u:p@db/x"
    assert settings.data_dir == (tmp_path / "d").resolve()
    assert settings.workers == 3
    assert settings.threads_per_worker >= 1
    assert not settings.distributed


def test_default_store_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.store_url == f"sqlite:///{tmp_path.resolve() / 'graddoctor.db'}"


def test_api_process_never_imports_torch() -> None:
    script = ("import sys; from service.app import create_app; from service.settings import "
              "Settings; create_app(Settings(broker_url='redis://127.0.0.1:1/0')); "
              "print(sorted(m for m in ('torch', 'onnx2torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
