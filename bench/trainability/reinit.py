"""Do the stalls GradDoctor misses belong to the architecture, or to the draw of the weights?

    python -m bench.trainability.reinit           # retrain and rediagnose; print each result

Each pair of :mod:`bench.trainability.budget`'s ``MISSES`` (a model labelled ``vanishing`` under an
optimizer that GradDoctor calls healthy) is built again with other initial weights — the same
architecture and initialization scheme, ``config.seed`` 1 and 2 instead of 0 (``diagnose`` builds
a spec's weights from that seed) — trained over that optimizer's grid exactly as the labeller
trains (same task, batches, steps, rule) and diagnosed by GradDoctor with that seed. Unlike the
batches (:mod:`bench.trainability.reseed`), the weights are something a verdict sees, so a label
that moves with them is one a verdict could in principle follow. Results: ``reinit.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from bench.trainability.budget import MISSES
from bench.trainability.label import GRIDS, LABELS_PATH, STEPS, load_labels
from bench.trainability.labelling import label_runs, trained_loss
from bench.trainability.predictors import config_for, graddoctor_call
from bench.trainability.score import bench_model
from bench.trainability.tasks import make_task
from bench.trainability.train import train_run

REINIT_PATH = Path(__file__).with_name("reinit.json")
SEEDS = (1, 2)


def main() -> int:
    torch.set_num_threads(1)
    stored = load_labels(LABELS_PATH)["models"]
    results = json.loads(REINIT_PATH.read_text()) if REINIT_PATH.exists() else {}
    for ident, optimizer in MISSES:
        model = bench_model(ident, stored[ident])
        task = make_task(model)
        stop = trained_loss(model.task, task.baseline)
        for seed in SEEDS:
            key = f"{ident}/{optimizer}/seed-{seed}"
            if key in results:
                continue
            runs = [train_run(model, task, optimizer, lr, STEPS[model.task], stop_below=stop,
                              init_seed=seed).to_dict() for lr in dict(GRIDS)[optimizer]]
            status, facts = graddoctor_call(model, {**config_for(model, optimizer), "seed": seed})
            results[key] = {"label": label_runs(runs, task.baseline, model.task),
                            "stored_label": stored[ident]["labels"][optimizer],
                            "graddoctor": status, "rules_fired": facts["rules_fired"],
                            "backward_signal_ratio": facts["backward_signal_ratio"]}
            REINIT_PATH.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            print(key, results[key], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
