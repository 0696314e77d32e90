"""Uploaded files and rendered reports on disk, one folder per job under the data directory.

Uploads are written into a private staging folder first and moved into place in one rename, so
a failed or interrupted upload never leaves a half-written job folder behind. Paths are built
only from job ids we generated (checked against their alphabet), never from client file names.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from pathlib import Path

MODEL_FILE = "model.onnx"
# An ONNX model's external data files (names are the tensors' locations), and an uploaded
# archive before it is unpacked; see service/data_files.py.
DATA_DIR = "data"
ARCHIVE_FILE = "upload.archive"
SPEC_FILE = "spec.json"
INPUTS_FILE = "inputs.npz"
REPORT_FILE = "report.html"
# Present from the moment a job's result is stored until its report page is written: the worker
# stores the result first (a waiting client gets its answer without waiting for the plot) and
# renders the page right after. A marker older than this is a worker that died while rendering.
REPORT_PENDING_FILE = ".report.pending"
REPORT_PENDING_S = 120.0
REMEDIES_DIR = "remedies"
# Remedy ids are the engine's own slugs; anything else never becomes part of a path.
REMEDY_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")

_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def new_id() -> str:
    """An unguessable id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


class BlobStore:
    """Files of jobs under ``root``: ``jobs/<id>/`` and ``staging/<token>/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs = root / "jobs"
        self.staging = root / "staging"

    def create_dirs(self) -> None:
        for path in (self.root, self.jobs, self.staging):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def job_dir(self, job_id: str) -> Path:
        if not _ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.jobs / job_id

    def new_staging(self) -> Path:
        path = self.staging / new_id()
        path.mkdir(mode=0o700)
        return path

    def commit(self, staging: Path, job_id: str) -> Path:
        """Move a complete staging folder into place as the job's folder."""
        target = self.job_dir(job_id)
        os.replace(staging, target)
        return target

    def report_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / REPORT_FILE

    def mark_report_pending(self, job_id: str) -> None:
        """Say that the job's report page is being rendered (see ``REPORT_PENDING_FILE``)."""
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (folder / REPORT_PENDING_FILE).touch()

    def clear_report_pending(self, job_id: str) -> None:
        (self.job_dir(job_id) / REPORT_PENDING_FILE).unlink(missing_ok=True)

    def report_pending(self, job_id: str) -> bool:
        """Whether a worker is rendering the job's page now (a recent marker, no page yet)."""
        try:
            age = time.time() - (self.job_dir(job_id) / REPORT_PENDING_FILE).stat().st_mtime
        except OSError:
            return False
        return age < REPORT_PENDING_S and not self.report_path(job_id).is_file()

    def write_report(self, job_id: str, html: str) -> None:
        """Write the HTML report atomically (temp file + rename)."""
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{REPORT_FILE}.{os.getpid()}.tmp"
        try:
            tmp.write_text(html, encoding="utf-8")
            os.replace(tmp, folder / REPORT_FILE)
        except BaseException:  # a full disk leaves no half-written report behind
            tmp.unlink(missing_ok=True)
            raise

    def copy_report(self, source_id: str, job_id: str) -> None:
        """Give a reused job the earlier job's report page and repaired models."""
        source = self.report_path(source_id)
        if source.is_file():
            self.write_report(job_id, source.read_text(encoding="utf-8"))
        for path in sorted((self.job_dir(source_id) / REMEDIES_DIR).glob("*.onnx")):
            self.write_repaired_model(job_id, path.stem, path.read_bytes())

    def repaired_model_path(self, job_id: str, remedy_id: str) -> Path:
        if not REMEDY_ID.fullmatch(remedy_id):
            raise ValueError(f"not a remedy id: {remedy_id!r}")
        return self.job_dir(job_id) / REMEDIES_DIR / f"{remedy_id}.onnx"

    def write_repaired_model(self, job_id: str, remedy_id: str, model: bytes) -> None:
        """Write a repaired ONNX model atomically (temp file + rename)."""
        target = self.repaired_model_path(job_id, remedy_id)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(model)
        os.replace(tmp, target)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def sweep_staging(self, older_than_s: float) -> None:
        """Remove staging folders left by uploads interrupted by a crash."""
        cutoff = time.time() - older_than_s
        for path in self.staging.glob("*"):
            try:
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                continue
