"""Throwaway infrastructure for the fault tests: a private Redis, a private PostgreSQL cluster,
a small filesystem for the data directory, and readers for what the service exposes.

Every fault here is done to something these helpers started (never the shared servers on 6379
and 5432, which other suites and CI use), and each helper cleans up in ``close()``, which the
fixtures call in ``finally``.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.service.conftest import ROOT, ServiceProcess, free_port

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
MIB = 1024 * 1024


def wait_until(condition: Callable[[], object], timeout: float, what: str,
               interval: float = 0.1) -> None:
    """Poll ``condition()`` until it is true, else fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout} s")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL a process we started (if still running) and reap it."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


# --- Redis --------------------------------------------------------------------------------


@dataclass
class PrivateRedis:
    """A redis-server of our own on a free port, without persistence (like the shared one)."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.answers, 10, f"private redis on port {self.port}")
        return self

    def client(self) -> object:
        import redis

        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def answers(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """Down at once, like a crashed broker: everything it held (no persistence) is gone."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def close(self) -> None:
        self.kill()


# --- PostgreSQL ---------------------------------------------------------------------------


def _pg_tool(name: str) -> str:
    for folder in PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"PostgreSQL's {name} is not installed")
    return found


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of our own: initdb into a temporary folder, trust auth, one port.

    As root the cluster belongs to the ``postgres`` user (initdb refuses to run as root), and
    ``folder`` (a fresh folder of its own, e.g. from :func:`temp_folder`) is handed to that user.
    """

    folder: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 90) -> None:
        command = list(argv)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(f"{argv[0]} failed ({result.returncode}):\n{result.stdout}"
                        f"\n{result.stderr}\n{self.log()[-3000:]}")

    def init(self) -> PrivatePostgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(_pg_tool("initdb"), "-D", str(self.folder / "data"), "-U", "postgres",
                  "-A", "trust", "--no-sync", "-E", "UTF8")
        return self

    def log(self) -> str:
        path = self.folder / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> PrivatePostgres:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=100")
        self._run(_pg_tool("pg_ctl"), "-D", str(self.folder / "data"), "-l",
                  str(self.folder / "postgres.log"), "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        self._run(_pg_tool("pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w",
                  "-t", "60", "stop")

    def running(self) -> bool:
        return (self.folder / "data" / "postmaster.pid").exists()

    def close(self) -> None:
        if not self.running():
            return
        try:
            self.stop()
        except BaseException:  # pytest.fail is a BaseException; fall back to SIGKILL
            pid = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)


# --- a small data directory ---------------------------------------------------------------


@dataclass
class SmallDisk:
    """The data directory on a small tmpfs when this process may mount one (root), so it can
    really fill up (ENOSPC). Otherwise the server gets RLIMIT_FSIZE instead, and writing a file
    past that size fails (EFBIG) the way a full disk fails a large upload.
    """

    path: Path
    size: int
    inodes: int = 8192
    mounted: bool = False

    def mount(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and shutil.which("mount"):
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o",
                 f"size={self.size},nr_inodes={self.inodes},mode=0700", "tmpfs", str(self.path)],
                capture_output=True, text=True, timeout=30)
            self.mounted = result.returncode == 0
        return self

    @property
    def file_size_limit(self) -> int | None:
        """RLIMIT_FSIZE for the server when no filesystem could be mounted."""
        return None if self.mounted else self.size

    def fill(self, leave: int) -> Path:
        """Fill the filesystem with a ballast file, all but ``leave`` bytes (tmpfs only)."""
        assert self.mounted
        ballast = self.path / "ballast"
        to_write = max(0, self.free_bytes() - leave)
        chunk = b"\0" * MIB
        with open(ballast, "ab") as handle:
            try:
                while to_write > 0:
                    handle.write(chunk[:min(MIB, to_write)])
                    to_write -= MIB
                handle.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        return ballast

    def use_all_inodes(self) -> Path:
        """Create empty files until no inode is left (a full disk fails even a mkdir)."""
        assert self.mounted
        folder = self.path / "ballast-inodes"
        folder.mkdir()
        try:
            for index in range(self.inodes + 1):
                (folder / str(index)).touch()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        return folder

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def close(self) -> None:
        if self.mounted:
            result = subprocess.run(["umount", str(self.path)], capture_output=True, timeout=30)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)
            self.mounted = False


@dataclass
class LimitedServiceProcess(ServiceProcess):
    """A ServiceProcess whose files may not grow past ``file_size_limit`` (RLIMIT_FSIZE)."""

    file_size_limit: int | None = None

    def start(self) -> LimitedServiceProcess:
        limit = self.file_size_limit

        def limits() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", *self.argv], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=limits)
        return self


def temp_folder(prefix: str) -> Path:
    """A temporary folder outside pytest's tmp tree (tmpfs mounts, postgres-owned files)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


# --- reading the service ------------------------------------------------------------------

_METRIC = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (comments skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match:
            key = match["name"] + (f"{{{match['labels']}}}" if match["labels"] else "")
            values[key] = float(match["value"])
    return values


def parent_pid(pid: int) -> int:
    """The parent of a live process (Linux /proc)."""
    return int(_stat_fields(pid)[1])


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` still runs (zombies do not count)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, ... (empty if gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def listing(folder: Path) -> set[str]:
    """Names in a folder (empty when it does not exist)."""
    return {entry.name for entry in folder.iterdir()} if folder.exists() else set()


def iter_ids(jobs: Iterable[dict[str, object]]) -> list[str]:
    return [str(job["id"]) for job in jobs]
