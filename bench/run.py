"""`make bench`: every ratio of the performance targets, side by side in one run.

Each section measures GradDoctor against the floor it cannot go below, on the same machine, in
the same run, with interleaved repeats and medians (the machine is shared: ratios, not absolute
times, are the result):

* ``floor``    whole diagnosis (samples 1, verification off) / the floor: ``onnx.load`` +
               ``onnx2torch.convert`` + one bare forward+backward with every float
               initializer's gradient (buffers made trainable, BatchNorm running statistics
               excepted); in the same loop, our loader alone (read + load) / load + convert.
* ``probe``    probed pass / bare pass, time and peak memory (bench/probe_overhead.py).
* ``memory``   peak RSS of a whole diagnosis / peak RSS of the floor, each in a fresh process.
* ``cli``      ``graddoctor diagnose small.onnx`` (whole process) / a script importing torch,
               onnx and onnx2torch and running the floor.
* ``http``     ``POST /v1/diagnoses?wait=60&reuse=false`` (curl-like, one request) with a warm
               embedded worker / the same ``diagnose`` in-process (ResNet-18, default config).
* ``jobs``     jobs per second through the embedded pool, 2 workers / 1 worker, small specs.
* ``default``  a default diagnosis (3 samples + verification of k remedies) / ((1 + k) x 3
               probed passes + one load), on a vanishing deep MLP.

    python bench/run.py [--only floor,probe,...] [--models resnet18,bert-base] [--repeats N]
                        [--code DIR] [--json FILE]

``--code DIR`` measures another checkout of GradDoctor (e.g. an older commit) with this harness.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = ("floor", "probe", "memory", "cli", "http", "jobs", "default")
TARGETS = {
    "diagnosis / floor": ("<=", 1.15), "loader / load+convert": ("<=", 1.2),
    "probe / bare time": ("<=", 1.10), "probe / bare memory": ("<=", 1.1),
    "diagnosis peak / floor peak": ("<=", 1.1), "CLI / floor script": ("<=", 1.15),
    "HTTP / in-process": ("<=", 1.2), "jobs/s 2 / 1 workers": (">=", 1.8),
    "default / (1+k)x3 passes + load": ("<=", 1.0),
}
CODE = Path(os.environ.get("GRADDOCTOR_BENCH_CODE", HERE.parent))


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{CODE}:{HERE}", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("GRADDOCTOR_API_KEYS", None)
    return env


def _median_pairs(runs: dict, repeats: int) -> dict[str, float]:
    """Run each callable of ``runs`` once per round, interleaved; median seconds per name."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


# --- floor: the model path ---------------------------------------------------------------------

def floor_pass(path: Path, batch) -> None:
    """onnx.load + onnx2torch.convert + one bare forward+backward with every weight's gradient."""
    import onnx
    import torch
    from stock import stock_convert

    from diagnostics.probe import compute_loss

    module = stock_convert(onnx.load(str(path)))
    trainable_floats(module)
    module.eval()  # as the loader returns it
    outputs = module(*batch.tensors)
    compute_loss(outputs, "mean_square", batch.seed).backward()
    del module, outputs
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def trainable_floats(module) -> None:
    """Make onnx2torch's float buffers (MatMul/Add/Gather weights) require grad, except
    BatchNorm's running statistics, so the floor computes every float initializer's gradient."""
    from onnx2torch.node_converters.batch_norm import OnnxBatchNorm
    from torch import nn

    statistics_ = set()  # buffers a BatchNormalization reads as running mean / variance
    for node in module.graph.nodes:
        if node.op == "call_module" and isinstance(module.get_submodule(node.target),
                                                   OnnxBatchNorm):
            for arg in node.args[3:5]:
                while getattr(arg, "op", None) == "call_module" and "Identity" in type(
                        module.get_submodule(arg.target)).__name__:
                    arg = arg.args[0]  # the legacy exporter's Identity copies of equal stats
                statistics_.add(getattr(arg, "target", None))
    container = getattr(module, "initializers", None)
    if container is not None:
        for name, buffer in list(container.named_buffers(recurse=False)):
            if (buffer.is_floating_point() and buffer.dim() > 0
                    and f"initializers.{name}" not in statistics_):
                del container._buffers[name]
                container.register_parameter(name, nn.Parameter(buffer))
    for name, param in module.named_parameters():
        param.requires_grad_(not name.endswith(("running_mean", "running_var")))


def _batch(path: Path, overrides: dict):
    from diagnostics.config import DiagnosisConfig
    from diagnostics.inputs import make_batches
    from diagnostics.limits import DEFAULT_LIMITS
    from diagnostics.pipeline import load_model, read_source

    payload, name = read_source(path)
    model = load_model(payload, name=name)
    return make_batches(model, DiagnosisConfig(samples=1, **overrides), DEFAULT_LIMITS)[0]


def section_floor(models: list[str], repeats: int) -> list[dict]:
    import onnx
    from bench_models import MODELS, model_path
    from stock import stock_convert

    from diagnostics import diagnose
    from diagnostics.pipeline import load_model, read_source

    rows = []
    for name in models:
        path = model_path(name)
        overrides = MODELS[name][1]
        batch = _batch(path, overrides)
        config = {"samples": 1, "verify_remedies": False, **overrides}
        runs = {
            "floor": lambda path=path, batch=batch: floor_pass(path, batch),
            "diagnosis": lambda path=path, config=config: diagnose(path, config=config),
            "load+convert": lambda path=path: stock_convert(onnx.load(str(path))),
            "loader": lambda path=path: load_model(read_source(path)[0], name=path.name),
        }
        for run in runs.values():
            run()  # warm-up: allocator, kernels, lazy imports
        times = _median_pairs(runs, repeats)
        rows.append({"model": name, **{f"{k}_s": round(v, 3) for k, v in times.items()},
                     "diagnosis / floor": times["diagnosis"] / times["floor"],
                     "loader / load+convert": times["loader"] / times["load+convert"]})
        print(f"  {name}: diagnosis {times['diagnosis']:.2f} s / floor {times['floor']:.2f} s; "
              f"loader {times['loader']:.2f} s / load+convert {times['load+convert']:.2f} s",
              flush=True)
    return rows


# --- memory: peak RSS, each run in a fresh process --------------------------------------------

def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(name: str, kind: str) -> None:
    """In a fresh process: peak RSS above the post-import baseline of one floor or diagnosis."""
    import ctypes
    import gc

    import onnx  # noqa: F401
    import onnx2torch  # noqa: F401
    import torch
    from bench_models import MODELS, model_path

    from diagnostics import diagnose
    from diagnostics.inputs import make_batches  # noqa: F401

    torch.set_num_threads(1)
    path, overrides = model_path(name), MODELS[name][1]
    batch = None
    if kind == "floor":
        batch = _batch(path, overrides)  # built before the baseline, as the inputs are data
    gc.collect()
    # Hand memory freed so far (building the inputs loads the model once) back to the OS:
    # otherwise the run that follows reuses it without raising RSS, and its peak reads low.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _rss_kib("VmRSS")
    if kind == "floor":
        floor_pass(path, batch)
    else:
        diagnose(path, config={"samples": 1, "verify_remedies": False, **overrides})
    print(json.dumps({"peak_kib": _rss_kib("VmHWM") - baseline}))


def _peak(name: str, kind: str) -> int:
    from probe_overhead import FIXED_MMAP  # peak RSS that follows the live tensors

    result = subprocess.run([sys.executable, __file__, "--memory-child", name, kind],
                            capture_output=True, text=True, env={**_env(), **FIXED_MMAP},
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_kib"]


def section_memory(models: list[str], repeats: int) -> list[dict]:
    rows = []
    for name in models:
        peaks: dict[str, list[int]] = {"floor": [], "diagnosis": []}
        for _ in range(max(1, repeats // 2)):
            for kind in peaks:
                peaks[kind].append(_peak(name, kind))
        floor, ours = (statistics.median(peaks[k]) for k in ("floor", "diagnosis"))
        rows.append({"model": name, "floor_peak_mib": round(floor / 1024),
                     "diagnosis_peak_mib": round(ours / 1024),
                     "diagnosis peak / floor peak": ours / max(floor, 1)})
        print(f"  {name}: diagnosis peak {ours / 1024:.0f} MiB / floor {floor / 1024:.0f} MiB",
              flush=True)
    return rows


# --- probe: bench/probe_overhead.py -----------------------------------------------------------

def section_probe(repeats: int) -> list[dict]:
    # At least 7 rounds: a pass takes 0.3-1 s, and with 3 a single disturbed round moved the
    # deep MLP's median by 0.1.
    result = subprocess.run([sys.executable, str(HERE / "probe_overhead.py"), "--json",
                             "--repeats", str(max(7, repeats))], capture_output=True, text=True,
                            env=_env())
    rows = json.loads(result.stdout[result.stdout.index("["):])
    for row in rows:
        row["probe / bare time"] = row.pop("time_ratio")
        row["probe / bare memory"] = row.pop("memory_ratio")
        print(f"  {row['model']}: time {row['probe / bare time']:.3f}x, "
              f"memory {row['probe / bare memory']:.3f}x", flush=True)
    return rows


# --- cli: cold start of a whole process -------------------------------------------------------

_FLOOR_SCRIPT = """
import sys, torch, onnx, onnx2torch
sys.path.insert(0, {here!r})
from run import floor_pass, _batch
path = {path!r}
floor_pass(path, _batch(path, {{}}))
"""


def section_cli(repeats: int) -> list[dict]:
    from bench_models import small_model_path

    path = small_model_path()
    script = _FLOOR_SCRIPT.format(here=str(HERE), path=str(path))
    runs = {
        "cli": lambda: subprocess.run([sys.executable, "-m", "service.cli", "diagnose", str(path)],
                                      env=_env(), capture_output=True, check=False),
        "floor script": lambda: subprocess.run([sys.executable, "-c", script], env=_env(),
                                               capture_output=True, check=True),
    }
    times = _median_pairs(runs, repeats)
    row = {"model": f"{path.name} ({path.stat().st_size / 2**20:.1f} MB)",
           "cli_s": round(times["cli"], 3), "floor_script_s": round(times["floor script"], 3),
           "CLI / floor script": times["cli"] / times["floor script"]}
    print(f"  CLI {times['cli']:.2f} s / floor script {times['floor script']:.2f} s", flush=True)
    return [row]


# --- http and jobs: a real server with its embedded pool --------------------------------------

class Server:
    """``graddoctor serve`` on a free port with a fresh data directory; stopped on exit."""

    def __init__(self, workers: int, threads: int | None = None) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.data = tempfile.TemporaryDirectory(prefix="graddoctor-bench-")
        env = dict(_env(), GRADDOCTOR_DATA_DIR=self.data.name, GRADDOCTOR_LOG_LEVEL="warning")
        if threads:
            env["GRADDOCTOR_TORCH_THREADS"] = str(threads)
        for key in ("GRADDOCTOR_BROKER_URL", "GRADDOCTOR_DATABASE_URL"):
            env.pop(key, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port),
             "--workers", str(workers)], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        import httpx

        # One client for every request: a new one per call (httpx.get/post) builds an SSL
        # context each time, ~15 ms of the benchmark's own CPU a request, taken from the workers.
        self.client = httpx.Client(base_url=self.url)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if self.client.get("/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.data.cleanup()

    def submit_file(self, path: Path, wait: float) -> dict:
        with path.open("rb") as handle:
            response = self.client.post(
                "/v1/diagnoses", params={"wait": wait, "reuse": "false"},
                files={"model": (path.name, handle, "application/octet-stream")},
                timeout=wait + 30)
        response.raise_for_status()
        return response.json()

    def submit_spec(self, spec: dict, config: dict, wait: float = 0) -> dict:
        response = self.client.post("/v1/diagnoses", params={"wait": wait, "reuse": "false"},
                                    json={"spec": spec, "config": config}, timeout=wait + 30)
        response.raise_for_status()
        return response.json()

    def finished(self, job_id: str, wait: float = 0) -> bool:
        """Whether the job has finished; ``wait``: hold the request until it has (GET ?wait)."""
        record = self.client.get(f"/v1/diagnoses/{job_id}", params={"wait": wait},
                                 timeout=wait + 30).json()
        return record["status"] in ("succeeded", "failed", "cancelled")


def section_http(repeats: int) -> list[dict]:
    from bench_models import model_path

    from diagnostics import diagnose

    path = model_path("resnet18")
    # One torch thread in the worker, as in this process: like against like (a worker's default
    # share of a 2-core machine is 2 threads, which on a loaded machine only adds contention).
    with Server(workers=1, threads=1) as server:
        server.submit_file(path, 60)  # warm the worker on this model's kernels
        diagnose(path)
        runs = {"http": lambda: _succeeded(server.submit_file(path, 60)),
                "in-process": lambda: diagnose(path)}
        times = _median_pairs(runs, repeats)
    row = {"model": "resnet18 (default config)", "http_s": round(times["http"], 3),
           "in_process_s": round(times["in-process"], 3),
           "HTTP / in-process": times["http"] / times["in-process"]}
    print(f"  HTTP {times['http']:.2f} s / in-process {times['in-process']:.2f} s", flush=True)
    return [row]


def _succeeded(record: dict) -> None:
    if record["status"] != "succeeded":
        raise RuntimeError(f"job {record['id']} ended {record['status']}: {record.get('error')}")


SMALL_SPEC = {"name": "small-mlp", "inputs": [{"name": "x", "shape": [32, 64]}],
              "layers": [{"type": "Repeat", "times": 4, "layers": [
                  {"type": "Linear", "in_features": 64, "out_features": 64},
                  {"type": "Tanh"}]}, {"type": "Linear", "in_features": 64, "out_features": 4}]}


def _jobs_per_second(server: Server, jobs: int) -> float:
    started = time.perf_counter()
    ids = [server.submit_spec(SMALL_SPEC, {"seed": i})["id"] for i in range(jobs)]
    # In submission order, each with one long-poll (GET ?wait), as a waiting client does: a
    # polling loop's sleep added up to its interval to every batch and its requests took API
    # CPU from the workers.
    for job in ids:
        while not server.finished(job, wait=60):
            pass
    return jobs / (time.perf_counter() - started)


def section_jobs(repeats: int) -> list[dict]:
    # Both servers stay up and take batches in turn (an idle one costs nothing), so the two
    # rates see the same load; single runs of one server then the other read 1.2 to 5.4.
    # One torch thread per worker on both sides, like against like: the default (cores /
    # workers) gives a lone worker 2 threads, which on these tiny jobs only adds contention.
    # Seven rounds at least, as the probe section takes: a batch of 12 small jobs lasts ~1.3 s
    # with 2 workers, and 3 of them read 1.68-1.84 in four back-to-back runs where 7 read
    # 1.82-1.89.
    jobs, rounds = 12, max(7, repeats)
    rates: dict[int, list[float]] = {1: [], 2: []}
    with Server(workers=1, threads=1) as one, Server(workers=2, threads=1) as two:
        servers = {1: one, 2: two}
        for workers, server in servers.items():
            for _ in range(workers):
                server.submit_spec(SMALL_SPEC, {}, wait=60)  # every worker past its first job
        for _ in range(rounds):
            for workers, server in servers.items():
                rates[workers].append(_jobs_per_second(server, jobs))
    single, double = (statistics.median(rates[k]) for k in (1, 2))
    # Two workers need two free cores: other processes' load caps the ratio, so it is printed.
    print(f"  {double:.2f} jobs/s with 2 workers / {single:.2f} with 1 (medians of {rounds} "
          f"interleaved batches of {jobs}; load average {os.getloadavg()[0]:.1f})", flush=True)
    return [{"model": f"small MLP spec, {rounds} x {jobs} jobs",
             "one_worker_jobs_s": round(single, 2), "two_workers_jobs_s": round(double, 2),
             "jobs/s 2 / 1 workers": double / single}]


# --- default: verification's cost against the passes it needs ---------------------------------

VANISHING_SPEC = {
    "name": "deep-sigmoid-mlp", "inputs": [{"name": "x", "shape": [64, 256]}],
    "init": {"scheme": "normal", "std": 0.02},
    "layers": [{"type": "Repeat", "times": 12, "layers": [
        {"type": "Linear", "in_features": 256, "out_features": 256}, {"type": "Sigmoid"}]},
        {"type": "Linear", "in_features": 256, "out_features": 10}],
}


def _remedied_models(config) -> list:
    """The models a default diagnosis of VANISHING_SPEC re-probes: each verified candidate's
    edit applied (outside any timing) as verification applies it."""
    from diagnostics.examination import examine
    from diagnostics.inputs import make_batches
    from diagnostics.limits import DEFAULT_LIMITS
    from diagnostics.model import copy_model
    from diagnostics.pipeline import _load
    from diagnostics.probe import probe_mode
    from diagnostics.remedies.proposal import propose

    model, document = _load(VANISHING_SPEC, None, DEFAULT_LIMITS, config.seed, None)
    batches = make_batches(model, config, DEFAULT_LIMITS)
    candidates = propose(model, examine(model, batches, config), config, document)
    edited = []
    for candidate in (c for c in candidates if c.edit is not None):
        if candidate.rebuilds:
            edited.append(candidate.edit(model, batches))
        else:
            copy = copy_model(model)
            with probe_mode(copy.module, config.norm_stats):
                edited.append(candidate.edit(copy, batches))
    return edited


def section_default(repeats: int) -> list[dict]:
    from diagnostics import diagnose
    from diagnostics.config import DiagnosisConfig
    from diagnostics.inputs import make_batches
    from diagnostics.limits import DEFAULT_LIMITS
    from diagnostics.loading.spec.loader import load_spec
    from diagnostics.probe import probe_mode, run_sample

    report = diagnose(VANISHING_SPEC)
    verified = sum(1 for remedy in report.remedies if remedy.verified is not None)
    config = DiagnosisConfig()
    model = load_spec(VANISHING_SPEC)
    batches = make_batches(model, config, DEFAULT_LIMITS)
    remedied = _remedied_models(config)

    def passes() -> None:
        fresh = load_spec(VANISHING_SPEC)
        with probe_mode(fresh.module, config.norm_stats):
            for _ in range(1 + verified):
                for batch in batches:
                    run_sample(fresh, batch, config)

    def remedied_passes() -> None:  # a breakdown: the passes on the models actually verified
        for probed in [load_spec(VANISHING_SPEC), *remedied]:
            with probe_mode(probed.module, config.norm_stats):
                for batch in batches:
                    run_sample(probed, batch, config)

    runs = {"default diagnosis": lambda: diagnose(VANISHING_SPEC), "passes": passes,
            "remedied passes": remedied_passes}
    for run in runs.values():
        run()
    times = _median_pairs(runs, repeats)
    print(f"  verdict {report.verdict.status}, k = {verified} verified remedies: diagnosis "
          f"{times['default diagnosis']:.3f} s / (1+k)x3 passes + load {times['passes']:.3f} s "
          f"(3 passes on the original and on each of the {len(remedied)} remedied models + "
          f"load: {times['remedied passes']:.3f} s)", flush=True)
    return [{"model": f"vanishing MLP, k={verified}", "verdict": str(report.verdict.status),
             "diagnosis_s": round(times["default diagnosis"], 3),
             "passes_s": round(times["passes"], 3),
             "remedied_passes_s": round(times["remedied passes"], 3),
             "default / (1+k)x3 passes + load": times["default diagnosis"] / times["passes"]}]


# --- main ------------------------------------------------------------------------------------

def _print_table(results: dict[str, list[dict]]) -> bool:
    print("\nratio                              target    model                                 "
          "value  ok")
    ok = True
    for rows in results.values():
        for row in rows:
            for key, (sense, target) in TARGETS.items():
                if key in row:
                    value = row[key]
                    good = value <= target if sense == "<=" else value >= target
                    ok &= good
                    print(f"{key:34s} {sense}{target:<7} {row['model'][:36]:37s} {value:6.3f}  "
                          f"{'yes' if good else 'NO'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections ({', '.join(SECTIONS)})")
    parser.add_argument("--models", default="resnet18,resnet50,bert-base,vit-b16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--code", type=Path, help="GradDoctor checkout to measure")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.code:
        os.environ["GRADDOCTOR_BENCH_CODE"] = str(args.code.resolve())
        os.execv(sys.executable, [sys.executable, __file__,
                                  *[a for a in sys.argv[1:] if not a.startswith("--code")
                                    and a != str(args.code)]])
    sys.path[:0] = [str(CODE), str(HERE)]
    import torch

    torch.set_num_threads(1)
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    models = [m for m in args.models.split(",") if m]
    wanted = [s for s in args.only.split(",") if s]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    print(f"GradDoctor at {CODE}; torch {torch.__version__}; {os.cpu_count()} CPUs; "
          f"repeats {args.repeats}; load average {os.getloadavg()[0]:.1f}", flush=True)
    results: dict[str, list[dict]] = {}
    for section in SECTIONS:
        if section not in wanted:
            continue
        print(f"[{section}]", flush=True)
        started = time.perf_counter()
        if section in ("floor", "memory"):
            chosen = models if section == "floor" else [m for m in models if m != "resnet18"]
            results[section] = globals()[f"section_{section}"](chosen, args.repeats)
        else:
            results[section] = globals()[f"section_{section}"](args.repeats)
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    ok = _print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
