"""The benchmark's labels at longer step budgets, and GradDoctor's unchanged calls scored on them.

    python -m bench.trainability.long_budget --train --half held-out   # retrain (resumes)
    python -m bench.trainability.long_budget --train --half tune --shard 1/2 --path /tmp/lb.1.json
    python -m bench.trainability.long_budget --merge --path /tmp/lb.json  # shards -> one file
    python -m bench.trainability.long_budget [--docs]                  # score every budget

Why: the 300-step budget labels torchvision ResNet-50, MobileNetV2 and RegNetY-400MF `vanishing`
on a task they express (:mod:`bench.trainability.standard`), and the benchmark's misses are
plateaus that end at 440-2,320 steps (:mod:`bench.trainability.budget`). A label is only ground
truth for a verdict if it does not call architectures everyone trains untrainable, so the budget
is calibrated on those library nets and the benchmark is read again there.

Written down before any long run of a benchmark model was made:

- *Calibrated budget*: the smallest of :data:`BUDGETS` within which each of ResNet-50,
  MobileNetV2 and RegNetY-400MF (own initialization) trains the translation-invariant control
  task (8 px) at SGD 0.1 or Adam 1e-3, the rates of their usual recipes
  (``standard.py --steps 3000 --lrs sgd=0.1 adam=0.001``). If one of them trains at neither
  within 3,000 steps, no budget here is calibrated and the 300-step labels stay the benchmark's.
- *What is retrained*: every feed-forward model (MLP, CNN, mixer) under each optimizer whose
  300-step label is not ``healthy``: each learning rate of that optimizer's grid whose stored run
  stayed finite, from the same weights on the same batches, for :data:`LONG_STEPS` with its loss
  curve kept. A run is seeded, so its first 300 steps should be the stored run. (Amended after
  the runs: where runs are chaotic they drift from the stored ones by float rounding, so the
  difference is measured and reported, :func:`prefix_difference`, not required to be zero.)
  A label that is ``healthy`` at 300 steps is healthy at any longer budget, and a run that went
  non-finite before 300 steps does so again, so neither is retrained. The recurrent nets keep
  their 1,500-step budget: it was set so that the cells that can learn the adding problem do
  (default LSTM/GRU under Adam), and no library recurrent net calls it into question.
- *Labels at a budget* follow the labelling rule unchanged (:mod:`bench.trainability.labelling`),
  each run cut at that budget (:func:`at_budget`).
- *Scored*: the calls stored in ``results.json`` (GradDoctor's rules of fd496f5, told each
  optimizer; the anchors' rules) against the labels at each budget, both halves, the held-out
  half reported. No rule is tuned on these labels.

Results: ``long_budget.json`` beside this file (the long runs, with their curves); what they
said is in docs/trainability.md ("At the budget library nets need"): the library nets train
under Adam at 1,520-2,520 steps, so 3,000 is the calibrated budget, and there GradDoctor's
unchanged calls score 88 / 97 % (SGD / Adam) on the held-out half but 83 / 70 % on the tune
half: a longer budget turns missed plateaus into right calls and right calls into false alarms.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from bench.trainability.label import LABELS_PATH, STEPS, load_labels
from bench.trainability.labelling import label_runs, trained_loss
from bench.trainability.metrics import percent
from bench.trainability.score import (
    LABEL_SETS,
    PREDICTORS,
    RESULTS_PATH,
    agreed_label,
    bench_model,
    scores,
    write_docs,
)
from bench.trainability.split import HALVES
from bench.trainability.tasks import make_task
from bench.trainability.train import SMOOTHING, train_run

LONG_PATH = Path(__file__).with_name("long_budget.json")
BEGIN = "<!-- BEGIN GENERATED: long_budget.py -->"
END = "<!-- END GENERATED: long_budget.py -->"
FEED_FORWARD_TASKS = frozenset({"teacher-vector", "teacher-image"})
STORED_STEPS = STEPS["teacher-vector"]  # the feed-forward tasks' labelling budget
assert all(STEPS[task] == STORED_STEPS for task in FEED_FORWARD_TASKS)
BUDGETS = (STORED_STEPS, 1000, 3000)
LONG_STEPS = BUDGETS[-1]


def run_key(ident: str, optimizer: str, lr: float) -> str:
    return f"{ident}/{optimizer}/{lr:g}"


def runs_to_retrain(entry: dict[str, Any]) -> list[tuple[str, float]]:
    """``(optimizer, lr)`` pairs a longer budget can change for one stored model."""
    if entry["task"] not in FEED_FORWARD_TASKS:
        return []
    return [(optimizer, run["lr"]) for optimizer, runs in entry["runs"].items()
            if entry["labels"][optimizer] != "healthy"
            for run in runs if run["nan_step"] is None]


def at_budget(run: dict[str, Any], budget: int) -> dict[str, Any]:
    """A run's record as it would have been with ``budget`` steps (``run`` kept its curve)."""
    windows = run["curve"][:max(1, budget // SMOOTHING)]
    diverged = run["nan_step"] is not None and run["nan_step"] < budget
    finite = [w for w in windows if math.isfinite(w)]
    return {**run, "steps": budget, "steps_run": min(run["steps_run"], budget),
            "nan_step": run["nan_step"] if diverged else None,
            "best_loss": min(finite) if finite else None,
            "final_loss": None if diverged or not windows else windows[-1]}


def labels_at(stored: dict[str, Any], long_runs: dict[str, Any], budget: int, *,
              recompute: bool = False) -> dict[str, dict[str, str | None]]:
    """Every model's SGD and Adam labels at ``budget`` (None where a needed run is missing).

    At a budget no longer than the stored one, the stored labels are returned, unless
    ``recompute``: then every retrained label is computed from the long runs cut at it, which
    checks that the long runs reproduce the stored ones where it matters, in their labels.
    """
    out: dict[str, dict[str, str | None]] = {}
    for ident, entry in stored.items():
        retrain = set(runs_to_retrain(entry))
        labels: dict[str, str | None] = {}
        for optimizer, runs in entry["runs"].items():
            if ((budget <= entry["steps"] and not recompute)
                    or not any(o == optimizer for o, _ in retrain)):
                labels[optimizer] = entry["labels"][optimizer]
                continue
            cut = []
            for run in runs:
                if (optimizer, run["lr"]) not in retrain:
                    cut.append(run)
                elif (key := run_key(ident, optimizer, run["lr"])) in long_runs:
                    cut.append(at_budget(long_runs[key], budget))
            labels[optimizer] = (label_runs(cut, entry["baseline"], entry["task"])
                                 if len(cut) == len(runs) else None)
        out[ident] = labels
    return out


def train(half: str | None, path: Path, shard: tuple[int, int] = (0, 1),
          reverse: bool = False) -> None:
    """Make every long run the labels at longer budgets need (resumes from ``path``); with
    ``shard`` (k, n), only every n-th model from the k-th, so n processes can share the work;
    ``reverse``: from the last model (a second process on the same shard meets the first).
    A run found in any file :func:`load_long` reads beside ``path`` is not made again: processes
    writing ``<stem>.<k>.json`` files side by side skip each other's runs."""
    stored = load_labels(LABELS_PATH)["models"]
    done = json.loads(path.read_text()) if path.exists() else {}
    chosen = [ident for ident in sorted(stored) if not half or stored[ident]["split"] == half]
    mine = chosen[shard[0]::shard[1]]
    for ident in reversed(mine) if reverse else mine:
        entry = stored[ident]
        model = bench_model(ident, entry)
        task = make_task(model)
        stop = trained_loss(model.task, task.baseline)
        for optimizer, lr in runs_to_retrain(entry):
            key = run_key(ident, optimizer, lr)
            if key in done or key in load_long(path):
                continue
            record = train_run(model, task, optimizer, lr, LONG_STEPS, stop_below=stop,
                               keep_curve=True).to_dict()
            done[key] = record
            save_long(done, path)
            best = record["best_loss"]
            print(f"{key}: best {best / entry['baseline'] if best else float('nan'):.3f} B, "
                  f"{record['steps_run']} steps, {record['seconds']:.0f} s", flush=True)


def prefix_difference(stored: dict[str, Any], long_runs: dict[str, Any]) -> tuple[float, str]:
    """The largest relative difference between a stored run's best window and its long run's
    best window within the stored budget (0 where the long runs reproduce the stored ones), and
    the run it is found on. Runs are seeded; only float rounding (kernels that sum in another
    order) can make them differ, and a chaotic run magnifies it."""
    worst, where = 0.0, ""
    for key, run in long_runs.items():
        ident, optimizer, _ = key.split("/")
        entry = stored[ident]
        short = next(r for r in entry["runs"][optimizer] if r["lr"] == run["lr"])
        cut = at_budget(run, entry["steps"])["best_loss"]
        if short["best_loss"] is None or cut is None:
            continue
        difference = abs(cut - short["best_loss"]) / abs(short["best_loss"])
        if difference > worst:
            worst, where = difference, key
    return worst, where


def save_long(runs: dict[str, Any], path: Path) -> None:
    """Write long runs one per line (a curve is 150 numbers: indented, the file would be 5x)."""
    lines = [f"{json.dumps(key)}: {json.dumps(run)}" for key, run in sorted(runs.items())]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def load_long(path: Path) -> dict[str, Any]:
    """The long runs: ``path`` and any shard files written beside it (``<stem>.*.json``)."""
    runs: dict[str, Any] = {}
    for part in sorted(path.parent.glob(f"{path.stem}*.json")):
        runs.update(json.loads(part.read_text()))
    return runs


def _inputs(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The stored labels, the long runs and the stored calls (``results.json`` rows by id)."""
    rows = {row["id"]: row for row in json.loads(RESULTS_PATH.read_text())["rows"]}
    return load_labels(LABELS_PATH)["models"], load_long(path), rows


def score_table(stored: dict[str, Any], long_runs: dict[str, Any],
                rows: dict[str, Any]) -> list[str]:
    """Per budget and half: how many labels are known, GradDoctor's and the anchors' scores
    (:func:`bench.trainability.score.scores` on the stored calls with each budget's labels)."""
    lines = ["| budget | half | models labelled | SGD labels h/v/e/a | Adam labels h/v/e/a | "
             + " | ".join(f"{p} (SGD / Adam / agreed)" for p in PREDICTORS) + " |",
             "|---|---|---|---|---|" + "---|" * len(PREDICTORS)]
    for budget in BUDGETS:
        labels = labels_at(stored, long_runs, budget)
        known = [{**rows[ident], "labels": {**both, "agreed": agreed_label(both)}}
                 for ident, both in sorted(labels.items()) if None not in both.values()]
        found = scores(known)
        for half in (*HALVES, "all"):
            chosen = [row for row in known if half in (row["split"], "all")]
            total = sum(half in (entry["split"], "all") for entry in stored.values())
            cells = [" / ".join(f"{percent(result.accuracy)} ({result.correct}/{result.n})"
                                for result in (found[(half, label_set, predictor)]
                                               for label_set in LABEL_SETS))
                     for predictor in PREDICTORS]
            counts = {o: "/".join(str(sum(row["labels"][o] == c for row in chosen))
                                  for c in ("healthy", "vanishing", "exploding", "ambiguous"))
                      for o in ("sgd", "adam")}
            lines.append(f"| {budget} | {half} | {len(chosen)}/{total} | {counts['sgd']} "
                         f"| {counts['adam']} | " + " | ".join(cells) + " |")
    return lines


def changes(stored: dict[str, Any], long_runs: dict[str, Any], rows: dict[str, Any],
            budget: int) -> list[str]:
    """The labels that differ from the stored ones at ``budget``, with GradDoctor's call."""
    labels = labels_at(stored, long_runs, budget)
    out = []
    for ident in sorted(stored):
        for optimizer in ("sgd", "adam"):
            now, before = labels[ident][optimizer], stored[ident]["labels"][optimizer]
            if now != before and now is not None:
                call = rows[ident]["calls"][optimizer]["graddoctor"]
                right = "right" if call == now else ("unscored" if now == "ambiguous"
                                                     else "wrong")
                out.append(f"| `{ident}` | {stored[ident]['split']} | {optimizer} | {before} "
                           f"| {now} | {call} ({right}) |")
    return out


def misses(stored: dict[str, Any], long_runs: dict[str, Any], rows: dict[str, Any],
           budget: int) -> list[str]:
    """GradDoctor's calls that disagree with an unambiguous label at ``budget``."""
    labels = labels_at(stored, long_runs, budget)
    out = []
    for ident in sorted(stored, key=lambda i: (stored[i]["split"] != "held-out", i)):
        for optimizer in ("sgd", "adam"):
            label, call = labels[ident][optimizer], rows[ident]["calls"][optimizer]["graddoctor"]
            if label not in (None, "ambiguous") and label != call:
                out.append(f"| `{ident}` | {stored[ident]['split']} | {optimizer} | {label} "
                           f"| {call} |")
    return out


def render(path: Path) -> str:
    """The generated docs section: scores per budget, the labels that move, the checks."""
    stored, long_runs, rows = _inputs(path)
    lines = score_table(stored, long_runs, rows)
    for budget in BUDGETS[1:]:
        lines += ["", f"Labels that differ at {budget} steps from the 300-step ones (models whose "
                  "long runs are all made):", "",
                  "| model | half | optimizer | 300 steps | " + f"{budget} steps | GradDoctor |",
                  "|---|---|---|---|---|---|", *changes(stored, long_runs, rows, budget)]
    lines += ["", f"GradDoctor's calls that disagree with an unambiguous label at {BUDGETS[-1]} "
              "steps:", "", "| model | half | optimizer | label | GradDoctor |",
              "|---|---|---|---|---|", *misses(stored, long_runs, rows, BUDGETS[-1])]
    worst, where = prefix_difference(stored, long_runs)
    again = labels_at(stored, long_runs, STORED_STEPS, recompute=True)
    moved = [f"`{ident}` {o}: {stored[ident]['labels'][o]} -> {label}"
             for ident, labels in sorted(again.items()) for o, label in labels.items()
             if label is not None and label != stored[ident]["labels"][o]]
    lines += ["", f"Reproduction: {len(long_runs)} long runs; the largest relative difference "
              f"between a stored run's best window and the long run's within the first 300 steps "
              f"is {worst:.2g}{f' (`{where}`)' if where else ''}; 300-step labels recomputed "
              f"from the long runs that differ from the stored ones: {', '.join(moved) or 'none'}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="make the missing long runs")
    parser.add_argument("--half", choices=HALVES, help="only this half's models")
    parser.add_argument("--shard", default="0/1", metavar="K/N",
                        help="train only every N-th model from the K-th")
    parser.add_argument("--reverse", action="store_true", help="start from the last model")
    parser.add_argument("--path", type=Path, default=LONG_PATH,
                        help="long runs file (two processes side by side need one each)")
    parser.add_argument("--merge", action="store_true",
                        help="write the shard files beside PATH into PATH itself")
    parser.add_argument("--docs", action="store_true",
                        help="write the section into docs/trainability.md instead of printing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.train:
        k, _, n = args.shard.partition("/")
        train(args.half, args.path, (int(k), int(n)), args.reverse)
        return 0
    if args.merge:
        save_long(load_long(args.path), args.path)
        return 0
    if args.docs:
        write_docs(render(args.path), markers=(BEGIN, END))
    else:
        print(render(args.path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
