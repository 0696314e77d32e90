"""Probe overhead: time and peak memory of a probed pass vs a bare forward+backward.

Both run on the same converted module, in the same mode, on the same inputs, side by side in one
run (time: interleaved repeats in one process, the median of each round's ratio; memory: each
kind of pass in its own fresh process, peak RSS above the post-load baseline, via /proc's
resettable high-water mark). Targets: time <= 1.10x, memory <= 1.1x.

    python bench/probe_overhead.py [--repeats N] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# bench/run.py --code DIR measures another checkout with this script.
sys.path.insert(0, os.environ.get("GRADDOCTOR_BENCH_CODE",
                                  str(Path(__file__).resolve().parents[1])))

TARGET_TIME, TARGET_MEMORY = 1.10, 1.1


def resnet18_model():
    import torch
    import torchvision

    from diagnostics.loading.onnx.loader import load_onnx

    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), buffer, dynamo=False,
                      do_constant_folding=False, input_names=["image"],
                      dynamic_axes={"image": {0: "batch"}}, opset_version=17)
    return load_onnx(buffer.getvalue(), name="resnet18.onnx"), {"batch_size": 8}


def deep_mlp_model():
    from diagnostics.loading.spec.loader import load_spec

    spec = {
        "name": "deep-mlp",
        "inputs": [{"name": "x", "shape": [256, 1024]}],
        "init": {"scheme": "kaiming_normal"},
        "layers": [{"type": "Repeat", "times": 24, "layers": [
            {"type": "Linear", "in_features": 1024, "out_features": 1024}, {"type": "ReLU"}]},
            {"type": "Linear", "in_features": 1024, "out_features": 10}],
    }
    return load_spec(spec), {}


MODELS = {"resnet18 (ONNX, batch 8, 224x224)": resnet18_model,
          "deep MLP (spec, 25 x 1024 wide, batch 256)": deep_mlp_model}


def _setup(name: str):
    import torch

    from diagnostics.config import DiagnosisConfig
    from diagnostics.inputs import make_batches
    from diagnostics.limits import DEFAULT_LIMITS
    from diagnostics.probe import compute_loss, probe_mode, run_sample

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, overrides = MODELS[name]()
    config = DiagnosisConfig(samples=1, **overrides)
    batch = make_batches(model, config, DEFAULT_LIMITS)[0]

    def bare() -> None:
        outputs = model.module(*batch.tensors)
        compute_loss(outputs, config.loss, batch.seed).backward()
        for param in model.parameters.values():
            param.grad = None

    def probed() -> None:
        run_sample(model, batch, config)

    return model, config, probe_mode, {"bare": bare, "probe": probed}


def measure_time(name: str, repeats: int) -> dict:
    model, config, probe_mode, passes = _setup(name)
    times: dict[str, list[float]] = {"bare": [], "probe": []}
    with probe_mode(model.module, config.norm_stats):
        for run in passes.values():
            run()  # warm-up: allocator, thread pool
        for _ in range(repeats):
            for kind, run in passes.items():
                started = time.perf_counter()
                run()
                times[kind].append(time.perf_counter() - started)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    # The ratio is the median of each round's probe / bare: the two passes of a round run back
    # to back, so a change in the machine's load between rounds cancels out of it.
    medians["ratio"] = statistics.median(p / b for p, b in zip(times["probe"], times["bare"],
                                                                strict=True))
    return medians


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure_memory_child(name: str, kind: str) -> None:
    """Runs in a fresh process: peak RSS of one pass of ``kind`` above the loaded baseline.

    One pass of the same kind runs first: the first pass also maps the code pages of every
    kernel it calls (libtorch's, counted in RSS), which is not what the pass holds.
    """
    import ctypes
    import gc

    model, config, probe_mode, passes = _setup(name)
    with probe_mode(model.module, config.norm_stats):
        passes[kind]()
        gc.collect()
        # Hand memory freed so far back to the OS (as bench/run.py does): otherwise the pass
        # reuses what was freed before it without raising RSS, and its peak reads low.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        baseline = _rss_kib("VmRSS")
        passes[kind]()
        peak = _rss_kib("VmHWM")
    print(json.dumps({"peak_kib": peak - baseline}))


# glibc raises its mmap threshold after the first large block is freed (up to 32 MB); later
# tensors then come from the heap, where freed ones stay, and peak RSS follows the heap's layout
# rather than what the pass holds: single readings of the deep MLP's passes moved by 50-90 MB.
# A fixed threshold keeps every tensor of 128 KiB or more mapped on its own: readings repeat to
# within 0.1 MB.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def measure_memory(name: str, kind: str) -> int:
    result = subprocess.run([sys.executable, __file__, "--memory-child", name, kind],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, **FIXED_MMAP})
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_kib"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        measure_memory_child(*args.memory_child)
        return 0
    rows = []
    for name in MODELS:
        times = measure_time(name, args.repeats)
        memory = {kind: measure_memory(name, kind) for kind in ("bare", "probe")}
        rows.append({
            "model": name,
            "bare_s": round(times["bare"], 4), "probe_s": round(times["probe"], 4),
            "time_ratio": round(times["ratio"], 3),
            "bare_peak_mib": round(memory["bare"] / 1024, 1),
            "probe_peak_mib": round(memory["probe"] / 1024, 1),
            "memory_ratio": round(memory["probe"] / max(memory["bare"], 1), 3),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'model':46s} {'bare s':>8s} {'probe s':>8s} {'time x':>7s} "
              f"{'bare MiB':>9s} {'probe MiB':>9s} {'mem x':>6s}")
        for row in rows:
            print(f"{row['model']:46s} {row['bare_s']:8.3f} {row['probe_s']:8.3f} "
                  f"{row['time_ratio']:7.3f} {row['bare_peak_mib']:9.1f} "
                  f"{row['probe_peak_mib']:9.1f} {row['memory_ratio']:6.3f}")
        print(f"targets: time <= {TARGET_TIME}x, memory <= {TARGET_MEMORY}x")
    ok = all(r["time_ratio"] <= TARGET_TIME and r["memory_ratio"] <= TARGET_MEMORY for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
