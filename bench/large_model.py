"""A model over protobuf's 2 GB limit, end to end: GPT-2 large (774M parameters) exported with
``torch.onnx.export(dynamo=True)`` (weights in ``gpt2-large.onnx.data``, 3.1 GB), diagnosed from
the CLI and over HTTP; peak resident memory compared with the weights' bytes (target <= 2.5x).

Too slow for CI (export ~minutes, each diagnosis ~minutes on 2 cores); run by hand:

    python bench/large_model.py export --out /tmp/gpt2-large
    python bench/large_model.py cli --out /tmp/gpt2-large
    python bench/large_model.py http --out /tmp/gpt2-large
    python bench/large_model.py loader --out /tmp/gpt2-large   # loader / (onnx.load + convert)

Random initialization (transformers' own), batch 1, a 16-token sequence, one sample.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gpt2-large.onnx"
CONFIG = {"samples": 1, "batch_size": 1, "verify_remedies": False}


def export(out: Path) -> None:
    """Random-init GPT-2 large, default dynamo export (external data beside the file)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    torch.manual_seed(0)
    config = GPT2Config(n_embd=1280, n_layer=36, n_head=20, use_cache=False)
    model = GPT2LMHeadModel(config).eval()
    count = sum(p.numel() for p in model.parameters())
    print(f"parameters: {count:,}")
    out.mkdir(parents=True, exist_ok=True)
    ids = torch.randint(0, config.vocab_size, (1, 16))
    started = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids,), str(out / MODEL), dynamo=True,
                          input_names=["input_ids"])
    print(f"export: {time.perf_counter() - started:.0f} s")
    for path in sorted(out.iterdir()):
        print(f"{path.name}: {path.stat().st_size:,} bytes")


def loader(out: Path, repeats: int = 3) -> dict:
    """Our loader alone / (``onnx.load`` + ``onnx2torch.convert`` reading the external data), in
    one process, interleaved (the issue's loader target, on the model over protobuf's limit)."""
    import gc
    import statistics

    import onnx
    import torch
    from onnx2torch.onnx_tensor import OnnxTensor
    from stock import stock_convert

    from diagnostics.limits import Limits
    from diagnostics.loading.onnx import external_data
    from diagnostics.pipeline import load_model, read_source

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    path = out / MODEL
    limits = Limits(max_parameters=1_000_000_000, max_tensor_elements=1 << 30)

    def ours() -> None:
        load_model(read_source(path, limits)[0], name=MODEL, limits=limits, data_dir=out)

    def floor() -> None:
        # onnx.load(path) + convert fails here: onnx2torch's shape inference serializes the
        # loaded proto, over protobuf's 2 GB limit. So the floor loads the graph alone and lets
        # onnx2torch read each initializer's external data itself (relative to the folder).
        # (Importing diagnostics routes onnx2torch's reader through our checked one, which
        # refuses external data outside a load: the floor gets onnx2torch's own back.)
        here, guarded = os.getcwd(), OnnxTensor.to_numpy
        os.chdir(out)
        OnnxTensor.to_numpy = external_data._original_to_numpy
        try:
            stock_convert(onnx.load(MODEL, load_external_data=False))
        finally:
            OnnxTensor.to_numpy = guarded
            os.chdir(here)

    times: dict[str, list[float]] = {"loader": [], "load+convert": []}
    for _ in range(repeats):
        for name, run in (("loader", ours), ("load+convert", floor)):
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
            gc.collect()
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"path": "loader", **{f"{k}_s": [round(v, 1) for v in vs] for k, vs in times.items()},
            "loader / load+convert": round(medians["loader"] / medians["load+convert"], 3)}


def _weights_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.iterdir() if p.name.endswith(".data"))


def _peak_from_time(stderr: str) -> int:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(match.group(1)) * 1024 if match else -1


def cli(out: Path) -> dict:
    """``graddoctor diagnose`` under /usr/bin/time -v (its maximum resident set size)."""
    config = out / "config.json"
    config.write_text(json.dumps(CONFIG))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    run = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-m", "service.cli", "diagnose",
         str(out / MODEL), "--config", str(config), "--format", "json",
         "--output", str(out / "report-cli.json")],
        capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    peak = _peak_from_time(run.stderr)
    result = {"path": "cli", "exit": run.returncode, "wall_s": round(elapsed, 1),
              "peak_rss_bytes": peak, "weights_bytes": _weights_bytes(out),
              "ratio": round(peak / _weights_bytes(out), 2)}
    if run.returncode not in (0, 3):
        result["stderr"] = run.stderr[-2000:]
    return result


def http(out: Path, port: int = 8765) -> dict:
    """``graddoctor serve`` (embedded pool, one worker) and ``graddoctor submit --wait``; the
    peak is the largest high-water mark (VmHWM) among the server's processes, read after the
    job while the worker is still alive."""
    (out / "config.json").write_text(json.dumps(CONFIG))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADDOCTOR_DATA_DIR": str(out / "service"),
           "GRADDOCTOR_MAX_PARAMETERS": "1000000000",
           "GRADDOCTOR_MAX_UPLOAD_BYTES": str(8 * 1024**3),
           "GRADDOCTOR_JOB_MEMORY_LIMIT_MB": str(20 * 1024),
           "GRADDOCTOR_JOB_TIME_LIMIT_S": "3600", "GRADDOCTOR_WORKERS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port)
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "service.cli", "submit", str(out / MODEL), "--url",
             f"http://127.0.0.1:{port}", "--config", str(out / "config.json"), "--wait",
             "--no-reuse", "--format", "json"], capture_output=True, text=True, env=env,
            check=False)
        elapsed = time.perf_counter() - started
        peaks = {pid: _high_water_mark(pid) for pid in _descendants(server.pid)}
    finally:
        server.terminate()
        server.wait(timeout=120)
    peak = max(peaks.values(), default=-1)
    result = {"path": "http", "exit": run.returncode, "wall_s": round(elapsed, 1),
              "peak_rss_bytes": peak, "weights_bytes": _weights_bytes(out),
              "ratio": round(peak / _weights_bytes(out), 2), "job": _job_times(run.stdout)}
    if run.returncode not in (0, 3):
        result["stderr"] = (run.stderr + run.stdout)[-2000:]
    return result


def _job_times(stdout: str) -> dict | None:
    try:
        return json.loads(stdout).get("timings")
    except ValueError:
        return None


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _high_water_mark(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def _wait_ready(port: int, timeout_s: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError("server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["export", "cli", "http", "loader"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpt2-large"))
    parser.add_argument("--repeats", type=int, default=3, help="loader: interleaved rounds")
    args = parser.parse_args()
    if args.step == "export":
        export(args.out)
    else:
        step = {"cli": cli, "http": http,
                "loader": lambda out: loader(out, args.repeats)}[args.step]
        print(json.dumps(step(args.out)))


if __name__ == "__main__":
    main()
