"""Does the remedy for `exploding` cure the recurrent nets the verdict calls exploding?

    python -m bench.trainability.clipping                       # the three, every setting
    python -m bench.trainability.clipping --only lstm-t50-init10x

`lstm-t50-init10x` is labelled `vanishing` under SGD (every rate stalls) and called `exploding`
by `relative_update`: its gradient through time grows 1.5× per step back, and a bounded LSTM
state cannot blow the loss up, so the overwritten cell saturates and training stalls. If the
stall is that explosion, the verdict's top remedy — clip the gradient norm, at the `max_norm`
its report gives — should cure it. Each net is trained as its label was (same weights, batches,
SGD grid and 1,500 steps, :func:`bench.trainability.train.train_run`), unclipped, clipped at
56 (the `max_norm` the LSTM's report gives) and at 1.0. Measured on 2026-12-06
(docs/trainability.md, the `lstm-t50-init10x` entry): clipped at 56, SGD at 0.1 solves the
adding problem (best 0.037 B); `gru-t50-init10x` trains only clipped at 1.0 and lr 0.1, the
vanilla `rnn-t50-init3x` at no setting. Nothing here changes a label.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench.trainability.label import STEPS
from bench.trainability.labelling import SGD_LRS, run_outcome
from bench.trainability.models import by_id
from bench.trainability.tasks import make_task
from bench.trainability.train import train_run

# The recurrent nets GradDoctor calls exploding under SGD; 56 is the max_norm of the LSTM's
# clip-gradients remedy (diagnostics.remedies.training.clip_gradients), 1.0 the common default.
CALLED_EXPLODING = ("lstm-t50-init10x", "gru-t50-init10x", "rnn-t50-init3x")
CLIP_NORMS = (None, 56.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(CALLED_EXPLODING))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models = by_id()
    for ident in args.only:
        model = models[ident]
        task = make_task(model)
        for clip_norm in CLIP_NORMS:
            for lr in SGD_LRS:
                record = train_run(model, task, "sgd", lr, STEPS[model.task],
                                   clip_norm=clip_norm).to_dict()
                outcome = run_outcome(record, task.baseline, model.task)
                best = record["best_loss"]
                shown = f"{best / task.baseline:.3f} B" if best is not None else "non-finite"
                print(f"{ident} clip {clip_norm} sgd {lr:g}: best {shown}, {outcome}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
