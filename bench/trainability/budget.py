"""Are the stalls GradDoctor misses plateaus that a longer run breaks, or permanent?

    python -m bench.trainability.budget            # train the listed models 10x longer; print
    python -m bench.trainability.budget --pairs mixer-gelu-d32-initdef/sgd --steps 10000

Each pair listed in ``MISSES`` — a held-out model labelled ``vanishing`` under an optimizer that
GradDoctor calls healthy — is trained again from
the same initial weights, at the learning rate of its grid that came closest to training (its
lowest best-window loss in ``labels.json``), for 10x the labelling budget. The labels are not
changed by this: "vanishing" means that training struggles within the budget, and a 10x slower
start is struggling; the question here is what kind of stall it is, for whoever looks for a
measure next. Results: ``budget.json`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from bench.trainability.label import LABELS_PATH, STEPS, load_labels
from bench.trainability.labelling import run_outcome, trained_loss
from bench.trainability.score import bench_model
from bench.trainability.tasks import make_task
from bench.trainability.train import train_run

BUDGET_PATH = Path(__file__).with_name("budget.json")
FACTOR = 10
# Every such pair but the 32-block mixers (GELU at 0.1x and default init, both optimizers; tanh,
# Adam), for which the 16-block ReLU mixer stands in: they cost about twice as much to train.
MISSES = (("mlp-relu-d20-bn-init3x", "sgd"), ("cnn-relu-d20-bn-init3x", "sgd"),
          ("cnn-relu-d20-bn-init3x", "adam"), ("mlp-gelu-d30-ln-initdef", "sgd"),
          ("mlp-gelu-d30-ln-initdef", "adam"), ("mixer-relu-d16-initdef", "sgd"),
          ("mixer-relu-d16-initdef", "adam"), ("cnn-sigmoid-d4-init1x", "sgd"),
          ("cnn-sigmoid-d4-init1x", "adam"), ("mlp-sigmoid-d10-init3x", "sgd"))


def closest_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run that reached the lowest best-window loss (None when no window was finite)."""
    finite = [run for run in runs if run["best_loss"] is not None]
    return min(finite, key=lambda run: run["best_loss"]) if finite else None


def closest_lr(entry: dict[str, Any], optimizer: str) -> float:
    """The grid's learning rate whose run reached the lowest best-window loss."""
    closest = closest_run(entry["runs"][optimizer])
    assert closest is not None, "every listed miss stalled with finite losses"
    return float(closest["lr"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="*", metavar="ID/OPTIMIZER",
                        help="these pairs instead of MISSES")
    parser.add_argument("--steps", type=int, help="step budget (default: 10x the label's)")
    parser.add_argument("--lr", type=float,
                        help="learning rate (default: the grid's closest at the stored budget)")
    parser.add_argument("--path", type=Path, default=BUDGET_PATH,
                        help="results file (two processes side by side need one each)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    stored = load_labels(LABELS_PATH)["models"]
    results = json.loads(args.path.read_text()) if args.path.exists() else {}
    pairs = [tuple(pair.rsplit("/", 1)) for pair in args.pairs] if args.pairs else MISSES
    for ident, optimizer in pairs:
        entry = stored[ident]
        model = bench_model(ident, entry)
        steps = args.steps or STEPS[model.task] * FACTOR
        key = f"{ident}/{optimizer}" + (f"/{steps}" if args.steps else "")
        if key in results:
            continue
        task = make_task(model)
        lr = args.lr or closest_lr(entry, optimizer)
        stop = trained_loss(model.task, task.baseline)
        run = train_run(model, task, optimizer, lr, steps, stop_below=stop).to_dict()
        results[key] = {"lr": lr, "steps": steps, "label": entry["labels"][optimizer],
                        "best_over_B": run["best_loss"] / task.baseline
                        if run["best_loss"] is not None else None,
                        "trained": run_outcome(run, task.baseline, model.task) == "trained",
                        "steps_run": run["steps_run"], "nan_step": run["nan_step"]}
        args.path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(key, results[key], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
