"""The labeller: train every benchmark model over the learning-rate grids and label it.

    python -m bench.trainability.label            # label models missing from labels.json
    python -m bench.trainability.label --retrain  # recompute every label
    python -m bench.trainability.label --only mlp-tanh-d20-init1x --retrain
    python -m bench.trainability.label --extend   # add runs for learning rates new to a grid

Results go to ``bench/trainability/labels.json`` (committed, so the scorer never retrains):
per model its family, knobs, spec, the task's baseline, every run's record, the SGD and Adam
labels (rule in :mod:`bench.trainability.labelling`) and its half of the split. The file is
rewritten after every model, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.trainability.labelling import ADAM_LRS, SGD_LRS, label_runs, trained_loss
from bench.trainability.models import BenchModel, all_models
from bench.trainability.split import stratified_split
from bench.trainability.tasks import make_task
from bench.trainability.train import DATA_SEED, train_run

LABELS_PATH = Path(__file__).with_name("labels.json")
STEPS = {"teacher-vector": 300, "teacher-image": 300, "adding": 1500}


GRIDS = (("sgd", SGD_LRS), ("adam", ADAM_LRS))


def label_model(model: BenchModel, known: dict[str, list[dict[str, Any]]] | None = None,
                *, data_seed: int = DATA_SEED, steps: int | None = None,
                keep_curve: bool = False) -> dict[str, Any]:
    """Train ``model`` with SGD (momentum 0.9) and Adam over their grids; label each.

    ``known``: runs already made (by optimizer, as stored in labels.json); a run of a learning
    rate found there is reused instead of retrained. A run is deterministic (seeded model, data
    and teacher), so this is how a grid is widened for every model without retraining the rest.
    ``data_seed``: the training batches' seed (the stored labels use ``DATA_SEED``).
    ``steps``: the step budget (default: the benchmark's, :data:`STEPS`); ``keep_curve``: keep
    every run's loss curve, so the labels at any shorter budget can be read from it.
    """
    task = make_task(model)
    steps = steps or STEPS[model.task]
    stop = trained_loss(model.task, task.baseline)  # there, the outcome is decided: trained
    runs = {}
    for name, grid in GRIDS:
        done = {run["lr"]: run for run in (known or {}).get(name, []) if run["steps"] == steps}
        runs[name] = [done.get(lr) or train_run(model, task, name, lr, steps, stop_below=stop,
                                                data_seed=data_seed,
                                                keep_curve=keep_curve).to_dict()
                     for lr in grid]
    return {"family": model.family, "task": model.task, "knobs": model.knobs,
            "baseline": task.baseline, "steps": steps, "runs": runs,
            "labels": {name: label_runs(group, task.baseline, model.task)
                       for name, group in runs.items()},
            "spec": model.spec}


def load_labels(path: Path = LABELS_PATH) -> dict[str, Any]:
    """The cached labels file (``{"models": {}}`` when there is none yet)."""
    if not path.exists():
        return {"models": {}}
    return json.loads(path.read_text())


def save_labels(data: dict[str, Any], path: Path = LABELS_PATH) -> None:
    """Write the labels; a model without a half yet gets one from the stratified split.

    A model keeps its half once it has one, also when it is relabelled: rules tuned on the
    ``tune`` half must never meet a tuned-on model in ``held-out``.
    """
    split = stratified_split(data["models"])
    for ident, entry in data["models"].items():
        entry.setdefault("split", split[ident])
    data["rule"] = {"sgd_lrs": list(SGD_LRS), "adam_lrs": list(ADAM_LRS), "steps": STEPS,
                    "doc": "bench/trainability/labelling.py"}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Label the models that need it; print one progress line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="recompute existing labels")
    parser.add_argument("--extend", action="store_true",
                        help="train only the learning rates a model's stored runs lack (a "
                        "widened grid), reuse the others, and relabel every model")
    parser.add_argument("--only", nargs="*", default=None, help="model ids to (re)label")
    parser.add_argument("--output", type=Path, default=LABELS_PATH)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_labels(args.output)
    models = [m for m in all_models() if args.only is None or m.id in args.only]
    started = time.perf_counter()
    for index, model in enumerate(models, 1):
        stored = data["models"].get(model.id)
        if stored and not (args.retrain or args.extend):
            continue
        clock = time.perf_counter()
        entry = label_model(model, stored["runs"] if stored and args.extend else None)
        if "split" in data["models"].get(model.id, {}):
            entry["split"] = data["models"][model.id]["split"]  # a model keeps its half
        data["models"][model.id] = entry
        save_labels(data, args.output)
        print(f"[{index}/{len(models)}] {model.id}: sgd={entry['labels']['sgd']} "
              f"adam={entry['labels']['adam']} ({time.perf_counter() - clock:.1f}s, "
              f"total {time.perf_counter() - started:.0f}s)", flush=True)
    print(f"done in {time.perf_counter() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
