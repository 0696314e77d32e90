"""Blind test of a threshold change for ``forward_scale_exploding`` at the calibrated budget.

    python -m bench.trainability.forward_scale --screen            # which models it selects
    python -m bench.trainability.forward_scale --label [--shard 1/2 --path /tmp/fs.1.json]
    python -m bench.trainability.forward_scale --merge /tmp/fs.0.json /tmp/fs.1.json
    python -m bench.trainability.forward_scale [--docs]            # score (seconds)

Written down, with the model set, before any selected model was trained (two pilot models were
trained first to time the runs; :data:`PILOT`, reported apart):

- *Why*: at the 3,000-step budget calibrated on library nets (:mod:`long_budget`), the tune half
  says that an output scale alone does not predict a failure to train. Under SGD every tune model
  labelled ``exploding`` at 3,000 steps is also caught by ``relative_update`` (its first step at
  the configured rate overwrites a weight), and the one call that only
  ``forward_scale_exploding`` makes (``mlp-sigmoid-d20-ln-res-init10x``, growth 114) is a net
  that trains. Under Adam the two tune models labelled ``exploding`` have growth 8e8 and 1.2e10
  (and ``backward_signal_exploding`` fires on both) while four that train have 15, 29, 114 and
  636 (``mlp-relu-d20-res-init1x``: an unnormalized residual ReLU MLP at He init). A large
  initial loss is a slow start when no step overwrites a weight: cross-entropy's gradient at the
  logits is bounded, so the output is shrunk step by step, not thrown further out.
- *The change*: ``forward_growth_ratio`` 100 -> 1,000 and ``adam_forward_growth_ratio``
  10 -> 1,000 (:data:`OLD`, :data:`NEW`; 1,000 is the lowest round value above every tune net
  that trains, and the backward signal's ``exploding_ratio``). Chosen on the tune half's
  3,000-step labels; the held-out half's were also on view (docs/trainability.md), so the
  held-out half cannot test it.
- *The test*: new models from the benchmark's own builders (:func:`candidates`: shallow MLPs
  and CNNs at 3-30x init, wider MLPs, unnormalized and LayerNorm residual MLPs of other depths),
  none in the benchmark; *selected* are those whose status differs between the old and the new
  thresholds under SGD or Adam (:func:`selected`) — exactly the calls the change moves. Each is
  labelled by training it as the benchmark's models are (same task, grids and labelling rule)
  for 3,000 steps with its loss curve, so its labels at 300 and 1,000 steps are read too.
- *Decision*: the new thresholds are kept if, on the selected models' unambiguous 3,000-step
  labels, they are right at least as often as the old ones under the SGD labels and under the
  Adam labels (each scored with that optimizer), and more often under at least one; otherwise
  the old thresholds stay. The 300- and 1,000-step scores are reported, not decided on.

Results: ``forward_scale.json`` beside this file; what they said: docs/trainability.md
("A blind test of the forward-scale threshold").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from bench.trainability.label import label_model
from bench.trainability.labelling import LABELS, label_runs
from bench.trainability.long_budget import BUDGETS, LONG_STEPS, at_budget
from bench.trainability.models import BenchModel, by_id, cnn, mlp
from bench.trainability.predictors import config_for
from bench.trainability.score import write_docs

FORWARD_SCALE_PATH = Path(__file__).with_name("forward_scale.json")
BEGIN = "<!-- BEGIN GENERATED: forward_scale.py -->"
END = "<!-- END GENERATED: forward_scale.py -->"
OLD = {"forward_growth_ratio": 100.0, "adam_forward_growth_ratio": 10.0}
NEW = {"forward_growth_ratio": 1000.0, "adam_forward_growth_ratio": 1000.0}
THRESHOLDS = {"old": OLD, "new": NEW}
OPTIMIZERS = ("sgd", "adam")
# Trained (at 3,000 steps, every rate) to time the runs before the set was written down.
PILOT = ("mlp-relu-d3-init10x", "cnn-relu-d3-init10x")
_ACTIVATIONS = ("relu", "gelu", "selu", "tanh", "sigmoid")


def candidates() -> list[BenchModel]:
    """The grid the test draws from (none of it in the benchmark)."""
    out: list[BenchModel] = []
    for act in _ACTIVATIONS:
        for depth, init in ((2, 10.0), (2, 30.0), (3, 3.0), (3, 10.0), (4, 3.0), (5, 3.0)):
            out += [mlp(act, depth, init), mlp(act, depth, init, width=128)]
        out += [mlp(act, depth, 1.0, residual=True) for depth in (10, 15, 30)]
        out += [mlp(act, depth, 10.0, residual=True, norm="ln") for depth in (10, 30)]
        out += [cnn(act, depth, init) for depth, init in ((3, 3.0), (4, 3.0), (2, 30.0),
                                                          (3, 10.0))]
    known = set(by_id())
    return [model for model in out if model.id not in known]


def calls(model: BenchModel) -> dict[str, Any]:
    """The model's forward growth and GradDoctor's status under each optimizer and threshold."""
    from diagnostics import diagnose

    out: dict[str, Any] = {}
    for optimizer in OPTIMIZERS:
        for name, thresholds in THRESHOLDS.items():
            report = diagnose(model.spec, config={**config_for(model, optimizer),
                                                  "thresholds": thresholds})
            growth = report.verdict.evidence.forward_growth
            out["growth"] = growth.median if growth else None
            out[f"{optimizer}_{name}"] = str(report.verdict.status)
    return out


def selected() -> list[tuple[BenchModel, dict[str, Any]]]:
    """The candidates whose status the change moves under either optimizer, with their calls."""
    chosen = []
    for model in candidates():
        found = calls(model)
        if any(found[f"{o}_old"] != found[f"{o}_new"] for o in OPTIMIZERS):
            chosen.append((model, found))
    return chosen


def label(path: Path, shard: tuple[int, int]) -> None:
    """Train the selected models not yet in ``path`` (every ``shard[1]``-th from ``shard[0]``)."""
    data = json.loads(path.read_text()) if path.exists() else {"models": {}}
    for model, found in selected()[shard[0]::shard[1]]:
        if model.id in data["models"]:
            continue
        entry = label_model(model, steps=LONG_STEPS, keep_curve=True)
        data["models"][model.id] = {
            "pilot": model.id in PILOT, "family": model.family, "task": model.task,
            "knobs": model.knobs, "spec": model.spec, "calls": found,
            "baseline": entry["baseline"], "steps": entry["steps"], "runs": entry["runs"]}
        path.write_text(json.dumps(data) + "\n")
        print(model.id, found, {o: label_runs(r, entry["baseline"], model.task)
                                for o, r in entry["runs"].items()}, flush=True)


def labels_at(entry: dict[str, Any], budget: int) -> dict[str, str]:
    """The model's SGD and Adam labels with every run cut at ``budget``."""
    return {optimizer: label_runs([at_budget(run, budget) for run in runs], entry["baseline"],
                                  entry["task"])
            for optimizer, runs in entry["runs"].items()}


def score(data: dict[str, Any], budget: int, *, pilot: bool = False
          ) -> dict[tuple[str, str], tuple[int, int]]:
    """(optimizer, thresholds) -> (right, unambiguous labels) at ``budget``."""
    out = {}
    entries = [e for e in data["models"].values() if e["pilot"] == pilot]
    for optimizer in OPTIMIZERS:
        judged = [(labels_at(e, budget)[optimizer], e["calls"]) for e in entries]
        judged = [(label, found) for label, found in judged if label in LABELS]
        for name in THRESHOLDS:
            right = sum(found[f"{optimizer}_{name}"] == label for label, found in judged)
            out[(optimizer, name)] = (right, len(judged))
    return out


def decision(data: dict[str, Any]) -> bool:
    """The written-down rule: not worse under either optimizer, better under one."""
    found = score(data, LONG_STEPS)
    new = [found[(o, "new")][0] for o in OPTIMIZERS]
    old = [found[(o, "old")][0] for o in OPTIMIZERS]
    pairs = list(zip(new, old, strict=True))
    return all(n >= o for n, o in pairs) and any(n > o for n, o in pairs)


def render(data: dict[str, Any]) -> str:
    lines = ["| model | forward growth | SGD label 300 / 1,000 / 3,000 | Adam label 300 / 1,000 / "
             "3,000 | old thresholds (SGD / Adam) | new thresholds (SGD / Adam) |",
             "|---|---|---|---|---|---|"]
    for ident, entry in sorted(data["models"].items(), key=lambda kv: kv[1]["calls"]["growth"]):
        by_budget = [labels_at(entry, budget) for budget in BUDGETS]
        found = entry["calls"]
        lines.append(
            f"| `{ident}`{' (pilot)' if entry['pilot'] else ''} | {found['growth']:.3g} | "
            + " | ".join(" / ".join(labels[o] for labels in by_budget) for o in OPTIMIZERS)
            + f" | {found['sgd_old']} / {found['adam_old']} | {found['sgd_new']} / "
            f"{found['adam_new']} |")
    lines.append("")
    for budget in BUDGETS:
        found = score(data, budget)
        cells = "; ".join(f"{o.upper()} labels: old {found[(o, 'old')][0]}/{found[(o, 'old')][1]}"
                          f", new {found[(o, 'new')][0]}/{found[(o, 'new')][1]}"
                          for o in OPTIMIZERS)
        lines.append(f"- {budget} steps, selected models (pilot apart): {cells}.")
    lines.append(f"- Decision (3,000 steps, written down before training): "
                 f"{'keep the new thresholds' if decision(data) else 'keep the old thresholds'}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screen", action="store_true", help="list the selected models")
    parser.add_argument("--label", action="store_true", help="train the unlabelled ones")
    parser.add_argument("--shard", default="0/1", help="K/N: every N-th selected model from K")
    parser.add_argument("--path", type=Path, default=FORWARD_SCALE_PATH)
    parser.add_argument("--merge", nargs="+", type=Path, help="shard files -> --path")
    parser.add_argument("--docs", action="store_true", help="rewrite docs/trainability.md's part")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.screen:
        for model, found in selected():
            print(model.id, json.dumps(found))
        return 0
    if args.label:
        k, n = (int(x) for x in args.shard.split("/"))
        label(args.path, (k, n))
        return 0
    if args.merge:
        merged: dict[str, Any] = {"models": {}}
        for part in args.merge:
            merged["models"].update(json.loads(part.read_text())["models"])
        args.path.write_text(json.dumps(merged) + "\n")
        return 0
    data = json.loads(args.path.read_text())
    text = render(data)
    print(text)
    if args.docs:
        write_docs(text, markers=(BEGIN, END))
    return 0


if __name__ == "__main__":
    sys.exit(main())
