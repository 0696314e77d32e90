"""How much does a benchmark label depend on the luck of the training batches?

    python -m bench.trainability.reseed --label --seed 8     # train every model on seed 8's batches
    python -m bench.trainability.reseed                      # compare the seeds; print the report

Every benchmark model is trained again exactly as :mod:`bench.trainability.label` trains it —
same initial weights (the ones ``diagnose`` probes), task, teacher, grids, steps and labelling
rule — with only the stream of training batches drawn from another seed. GradDoctor's verdict
sees the architecture and the initial weights, never the batches a user's training will draw, so
a model whose label changes with the batches' seed is one no verdict at initialization can be
right about under every seed: each model's most frequent unambiguous label across the seeds
bounds the accuracy any such verdict can reach on this benchmark, and a label that flips says
training sits on the edge.

Results: ``reseed/seed-<n>.json`` beside this file (one per seed, so seeds can be trained side
by side on separate cores): per model its labels and a one-line summary of every run. The stored
labels (``labels.json``) are seed ``DATA_SEED``'s; GradDoctor's calls are read from
``results.json`` (the scorer's output), so the report never re-diagnoses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from bench.trainability.label import LABELS_PATH, label_model, load_labels
from bench.trainability.labelling import LABELS as UNAMBIGUOUS
from bench.trainability.models import BenchModel
from bench.trainability.score import RESULTS_PATH, agreed_label, bench_model, write_docs
from bench.trainability.train import DATA_SEED
from bench.trainability.validation import ROUNDS, VALIDATION_PATH, summarize_runs

RESEED_DIR = Path(__file__).with_name("reseed")
BEGIN, END = "<!-- BEGIN GENERATED: reseed.py -->", "<!-- END GENERATED: reseed.py -->"
LABEL_SETS = ("sgd", "adam", "agreed")


def seed_path(seed: int, validation: bool = False) -> Path:
    return RESEED_DIR / f"{'validation-' if validation else ''}seed-{seed}.json"


def stored_models(validation: bool) -> dict[str, tuple[BenchModel, dict[str, str]]]:
    """Per model id, the model and its stored labels: the benchmark's (``labels.json``) or the
    validation set's (``validation.json``, the 20 BatchNorm stacks trained beside it)."""
    if not validation:
        return {ident: (bench_model(ident, entry), entry["labels"])
                for ident, entry in load_labels(LABELS_PATH)["models"].items()}
    entries = json.loads(VALIDATION_PATH.read_text())["models"]
    return {model.id: (model, entries[model.id]["labels"])
            for models in ROUNDS.values() for model in models if model.id in entries}


def label(seed: int, only: list[str] | None, validation: bool = False) -> None:
    """Train every model of the set (or ``only`` those) on ``seed``'s batches; resumable."""
    if seed == DATA_SEED:
        raise SystemExit(f"seed {DATA_SEED} is the stored labels' seed (labels.json)")
    torch.set_num_threads(1)
    path = seed_path(seed, validation)
    data = json.loads(path.read_text()) if path.exists() else {"seed": seed, "models": {}}
    for ident, (model, stored) in stored_models(validation).items():
        if (only and ident not in only) or (not only and ident in data["models"]):
            continue
        entry = label_model(model, data_seed=seed)
        data["models"][ident] = {"labels": entry["labels"],
                                 "runs": summarize_runs(entry, model.task)}
        RESEED_DIR.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
        print(f"seed {seed} {ident}: {entry['labels']} (stored {stored})", flush=True)


def with_agreed(labels: dict[str, str]) -> dict[str, str]:
    return {**labels, "agreed": agreed_label(labels)}


def load_seeds(seeds: list[int], validation: bool = False) -> dict[int, dict[str, Any]]:
    """Each retrained seed's models (``reseed/seed-<n>.json``, or the validation set's)."""
    return {seed: json.loads(seed_path(seed, validation).read_text())["models"]
            for seed in seeds}


def compare(stored: dict[str, Any], calls: dict[str, Any],
            other: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per label set and half: how many stored unambiguous labels every other seed repeats;
    GradDoctor's accuracy on the stored labels and over every seed's unambiguous labels; and
    the best accuracy over every seed that any call fixed at initialization can reach (it
    cannot follow a label that moves with the batches).

    Args:
        stored: ``labels.json``'s models (seed ``DATA_SEED``, with their halves).
        calls: Per model id, the scorer's calls (``results.json``'s ``calls``).
        other: Per retrained seed, its models' labels.
    """
    seeds = sorted(other)
    idents = [i for i in stored if all(i in other[seed] for seed in seeds)]
    report: dict[str, Any] = {"seeds": [DATA_SEED, *seeds], "models": len(idents), "rows": {},
                              "flips": []}
    for half in ("tune", "held-out", "all"):
        for name in LABEL_SETS:
            counts: Counter[str] = Counter()
            for ident in idents:
                if half != "all" and stored[ident]["split"] != half:
                    continue
                base = with_agreed(stored[ident]["labels"])[name]
                seen = [with_agreed(other[seed][ident]["labels"])[name] for seed in seeds]
                call = calls[ident][name]["graddoctor"]
                if base in UNAMBIGUOUS:
                    counts["scored"] += 1
                    counts["right"] += call == base
                    # a verdict fixed at initialization is right under every seed only where
                    # the label does not move
                    stable = all(label == base for label in seen)
                    counts["same_every_seed"] += stable
                    counts["stable_right"] += stable and call == base
                # Over all seeds (the stored one too): the scored cases, GradDoctor's right
                # calls, and the most any call fixed at initialization can get right — for each
                # model, its most frequent unambiguous label across the seeds.
                every = [label for label in (base, *seen) if label in UNAMBIGUOUS]
                counts["seed_cases"] += len(every)
                counts["seed_right"] += sum(label == call for label in every)
                counts["seed_best"] += max(Counter(every).values(), default=0)
                if half == "all" and any(label != base for label in seen):
                    report["flips"].append({"id": ident, "labels": name, "stored": base,
                                            "other": dict(zip(map(str, seeds), seen, strict=True)),
                                            "graddoctor": call})
            report["rows"][f"{half}/{name}"] = dict(counts)
    return report


def render(report: dict[str, Any]) -> str:
    seeds = ", ".join(map(str, report["seeds"][1:]))
    lines = [f"Data seeds: stored {report['seeds'][0]}, retrained {seeds} "
             f"({report['models']} models).", "",
             "| half | labels | unambiguous (stored seed) | same label under every seed | "
             "GradDoctor right (stored seed) | GradDoctor right on the labels every seed repeats | "
             "GradDoctor right, every seed | best any call at initialization can do, every seed |",
             "|---|---|---|---|---|---|---|---|"]
    for key, counts in report["rows"].items():
        half, name = key.split("/")
        scored, same = counts.get("scored", 0), counts.get("same_every_seed", 0)
        right, cases = counts.get("right", 0), counts.get("seed_cases", 0)
        lines.append(f"| {half} | {name} | {scored} | {same} ({_pct(same, scored)}) | "
                     f"{right} ({_pct(right, scored)}) | "
                     f"{counts.get('stable_right', 0)}/{same} "
                     f"({_pct(counts.get('stable_right', 0), same)}) | "
                     f"{counts.get('seed_right', 0)}/{cases} "
                     f"({_pct(counts.get('seed_right', 0), cases)}) | "
                     f"{counts.get('seed_best', 0)}/{cases} "
                     f"({_pct(counts.get('seed_best', 0), cases)}) |")
    lines += ["", "Labels that move with the batches' seed:", "",
              "| model | labels | stored | other seeds | GradDoctor |", "|---|---|---|---|---|"]
    for flip in sorted(report["flips"], key=lambda f: (f["labels"], f["id"])):
        others = ", ".join(f"{seed}: {label}" for seed, label in flip["other"].items())
        lines.append(f"| `{flip['id']}` | {flip['labels']} | {flip['stored']} | {others} | "
                     f"{flip['graddoctor']} |")
    return "\n".join(lines)


def validation_moves(stored: dict[str, dict[str, str]],
                     other: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per validation model (by id: stored SGD/Adam labels), its labels under every seed and
    whether an unambiguous stored label is repeated by every other seed."""
    rows = []
    for ident, labels in stored.items():
        if not all(ident in other[seed] for seed in other):
            continue
        seen = {seed: other[seed][ident]["labels"] for seed in sorted(other)}
        row: dict[str, Any] = {"id": ident, "stored": labels, "other": seen}
        for name in ("sgd", "adam"):
            row[f"{name}_repeated"] = (labels[name] in UNAMBIGUOUS and all(
                found[name] == labels[name] for found in seen.values()))
            row[f"{name}_crossed"] = labels[name] in UNAMBIGUOUS and any(
                found[name] in UNAMBIGUOUS and found[name] != labels[name]
                for found in seen.values())
        rows.append(row)
    return rows


def render_validation(rows: list[dict[str, Any]]) -> str:
    lines = ["Validation models (`validation.json`, the 20 BatchNorm stacks trained beside the "
             "benchmark):", "", "| model | stored (SGD / Adam) | other seeds (SGD / Adam) |",
             "|---|---|---|"]
    for row in rows:
        others = "; ".join(f"{seed}: {found['sgd']} / {found['adam']}"
                           for seed, found in row["other"].items())
        lines.append(f"| `{row['id']}` | {row['stored']['sgd']} / {row['stored']['adam']} | "
                     f"{others} |")
    lines.append("")
    for name in ("sgd", "adam"):
        scored = sum(row["stored"][name] in UNAMBIGUOUS for row in rows)
        repeated = sum(row[f"{name}_repeated"] for row in rows)
        crossed = sum(row[f"{name}_crossed"] for row in rows)
        lines.append(f"- {name.upper()} labels: {repeated} of the {scored} unambiguous ones "
                     f"repeated by every seed; {crossed} moved to another unambiguous class.")
    return "\n".join(lines)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "—"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", action="store_true", help="train on --seed's batches")
    parser.add_argument("--seed", type=int, action="append", default=None,
                        help="data seed(s); default: every seed with a file in reseed/")
    parser.add_argument("--only", nargs="*", default=None, help="model ids to (re)train")
    parser.add_argument("--validation", action="store_true",
                        help="train validation.json's models instead of the benchmark's")
    parser.add_argument("--no-write", action="store_true",
                        help="print the report without rewriting its section of the docs")
    args = parser.parse_args(argv)
    if args.label:
        for seed in args.seed or []:
            label(seed, args.only, args.validation)
        return 0
    seeds = args.seed or sorted(int(p.stem.split("-")[1]) for p in RESEED_DIR.glob("seed-*.json"))
    calls = {row["id"]: row["calls"] for row in json.loads(RESULTS_PATH.read_text())["rows"]}
    section = render(compare(load_labels(LABELS_PATH)["models"], calls, load_seeds(seeds)))
    checked = [seed for seed in seeds if seed_path(seed, validation=True).exists()]
    if checked:
        stored = {ident: labels for ident, (_, labels) in stored_models(True).items()}
        section += "\n\n" + render_validation(validation_moves(stored, load_seeds(checked, True)))
    print(section)
    if not args.no_write:
        write_docs(section, markers=(BEGIN, END))
    return 0


if __name__ == "__main__":
    sys.exit(main())
