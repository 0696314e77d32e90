"""Score GradDoctor's verdict and the anchors' one-batch rules against the training labels.

    python -m bench.trainability.score            # tables per half; writes results + docs
    python -m bench.trainability.score --details  # also one line per model
    make bench-trainability

Reads ``bench/trainability/labels.json`` (made by ``python -m bench.trainability.label``, never
retrained here), diagnoses every model with GradDoctor's default config (one sample, no remedy
verification) once per optimizer — ``optimizer: sgd`` against the SGD labels, ``optimizer: adam``
against the Adam labels, the default (sgd) against the agreed ones — and applies the anchors'
rules to one batch of its training loss. Writes the
per-model rows to ``bench/trainability/results.json`` and the generated section of
``docs/trainability.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.trainability.label import LABELS_PATH, load_labels
from bench.trainability.metrics import Score, percent, score
from bench.trainability.models import BenchModel
from bench.trainability.predictors import predict
from bench.trainability.split import HALVES

PREDICTORS = ("graddoctor", "autotrainer", "deepdiagnosis", "thedeepchecker")
OPTIMIZERS = ("sgd", "adam")
# "agreed": the SGD label where SGD and Adam agree, else ambiguous: the models whose
# trainability does not depend on the optimizer, scored with the default config. The SGD and
# Adam label sets are each scored with GradDoctor told that optimizer (predictors.py).
LABEL_SETS = (*OPTIMIZERS, "agreed")
_TITLES = {"sgd": "SGD", "adam": "Adam", "agreed": "agreed"}


def agreed_label(labels: dict[str, str]) -> str:
    """The label both optimizers give, or ``ambiguous`` where they differ."""
    return labels["sgd"] if labels["sgd"] == labels["adam"] else "ambiguous"
RESULTS_PATH = Path(__file__).with_name("results.json")
DOCS_PATH = Path(__file__).resolve().parents[2] / "docs" / "trainability.md"
BEGIN, END = "<!-- BEGIN GENERATED: score.py -->", "<!-- END GENERATED: score.py -->"


def bench_model(ident: str, entry: dict[str, Any]) -> BenchModel:
    """The model as it was labelled (its spec is stored with its labels)."""
    return BenchModel(ident, entry["family"], entry["task"], entry["spec"], entry["knobs"])


def collect_rows(labels: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per labelled model: labels, split, every predictor's call and the evidence."""
    rows = []
    for ident, entry in sorted(labels["models"].items()):
        calls, evidence = predict(bench_model(ident, entry))
        rows.append({"id": ident, "family": entry["family"], "split": entry["split"],
                     "labels": {**entry["labels"], "agreed": agreed_label(entry["labels"])},
                     "calls": calls, "evidence": evidence})
    return rows


def scores(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], Score]:
    """``(half, optimizer, predictor) -> Score``; half ``all`` pools both."""
    out = {}
    for half in (*HALVES, "all"):
        chosen = [row for row in rows if half == "all" or row["split"] == half]
        for optimizer in LABEL_SETS:
            for predictor in PREDICTORS:
                out[(half, optimizer, predictor)] = score(
                    [(row["labels"][optimizer], row["calls"][optimizer][predictor])
                     for row in chosen])
    return out


def summary_table(found: dict[tuple[str, str, str], Score], half: str) -> list[str]:
    """Markdown: accuracy and per-class precision/recall of each predictor on one half."""
    lines = ["| predictor | SGD accuracy | Adam accuracy | agreed accuracy | SGD P/R healthy "
             "| SGD P/R vanishing | SGD P/R exploding | Adam P/R healthy | Adam P/R vanishing "
             "| Adam P/R exploding |", "|---|---|---|---|---|---|---|---|---|---|"]
    for predictor in PREDICTORS:
        results = [found[(half, name, predictor)] for name in LABEL_SETS]
        cells = [f"{percent(s.accuracy)} ({s.correct}/{s.n})" for s in results]
        for s in results[:2]:
            cells += [f"{percent(s.precision(c))} / {percent(s.recall(c))}"
                      for c in ("healthy", "vanishing", "exploding")]
        lines.append(f"| {predictor} | " + " | ".join(cells) + " |")
    return lines


def confusion_table(result: Score) -> list[str]:
    """Markdown confusion matrix: rows are training labels, columns predictions."""
    lines = ["| label \\ predicted | " + " | ".join(result.columns) + " |",
             "|---" * (len(result.columns) + 1) + "|"]
    for label, row in result.confusion.items():
        lines.append(f"| {label} | " + " | ".join(str(row[c]) for c in result.columns) + " |")
    return lines


def label_counts(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: how many models carry each label, per half and optimizer."""
    classes = ("healthy", "vanishing", "exploding", "ambiguous")
    lines = ["| half | labels | " + " | ".join(classes) + " | models |",
             "|---|---|---|---|---|---|---|"]
    for half in (*HALVES, "all"):
        chosen = [row for row in rows if half == "all" or row["split"] == half]
        for optimizer in LABEL_SETS:
            counts = [sum(row["labels"][optimizer] == c for row in chosen) for c in classes]
            lines.append(f"| {half} | {optimizer} | " + " | ".join(map(str, counts))
                         + f" | {len(chosen)} |")
    return lines


def graddoctor_errors(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: the unambiguous cases where GradDoctor's status differs from a label."""
    lines = ["| model | half | labels | GradDoctor | signal ratio | ‖g‖₁ ratio | first-layer "
             "RMS ‖g‖ | forward growth | rules fired | temporal horizon |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for optimizer in OPTIMIZERS:
            call, label = row["calls"][optimizer]["graddoctor"], row["labels"][optimizer]
            if label not in ("healthy", "vanishing", "exploding") or label == call:
                continue
            ev = row["evidence"][f"graddoctor_{optimizer}"]
            temporal = ev.get("temporal")
            horizon = f"{temporal['effective_horizon']}/{temporal['steps']}" if temporal else "—"
            lines.append(f"| {row['id']} | {row['split']} | {_TITLES[optimizer]}: {label} | "
                         f"{call} | {_num(ev['backward_signal_ratio'])} | "
                         f"{_num(ev['weight_grad_l1_ratio'])} | "
                         f"{_num(ev['first_weight_grad_rms'])} | {_num(ev['forward_growth'])} | "
                         f"{', '.join(ev['rules_fired']) or '—'} | {horizon} |")
    return lines


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def render(rows: list[dict[str, Any]], found: dict[tuple[str, str, str], Score]) -> str:
    """The generated markdown section."""
    out = ["### Labels", "", *label_counts(rows), ""]
    for half in (*HALVES, "all"):
        out += [f"### Scores on the `{half}` half" if half != "all" else "### Scores on all "
                "models (for reference; report the held-out half)", "",
                *summary_table(found, half), ""]
    for half in HALVES:
        for optimizer in LABEL_SETS:
            out += [f"#### Confusion matrices, `{half}` half, {_TITLES[optimizer]} labels", ""]
            for predictor in PREDICTORS:
                out += [f"{predictor}:", "", *confusion_table(found[(half, optimizer,
                                                                     predictor)]), ""]
    out += ["### Where GradDoctor disagrees with an unambiguous label", "",
            *graddoctor_errors(rows), ""]
    return "\n".join(out)


def write_docs(section: str, path: Path = DOCS_PATH, markers: tuple[str, str] = (BEGIN, END)
               ) -> None:
    """Replace a generated section of ``docs/trainability.md`` (kept hand-written around): the
    text between ``markers``, score.py's by default."""
    begin, end = markers
    text = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{section}\n{end}{tail}")


def print_details(rows: list[dict[str, Any]]) -> None:
    """One line per model: labels, calls and GradDoctor's key numbers."""
    for row in rows:
        for optimizer in OPTIMIZERS:
            ev = row["evidence"][f"graddoctor_{optimizer}"]
            calls = " ".join(f"{p}={row['calls'][optimizer][p]}" for p in PREDICTORS)
            print(f"{row['id']:32s} {row['split']:8s} {optimizer:4s} "
                  f"label={row['labels'][optimizer]:9s} {calls} "
                  f"ratio={_num(ev['backward_signal_ratio'])} "
                  f"l1={_num(ev['weight_grad_l1_ratio'])} "
                  f"rms={_num(ev['first_weight_grad_rms'])} "
                  f"rules={','.join(ev['rules_fired']) or '-'}")


def main(argv: list[str] | None = None) -> int:
    """Score every predictor; print the tables; write results.json and the docs section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=LABELS_PATH)
    parser.add_argument("--details", action="store_true", help="print one line per model")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; leave results.json and docs/trainability.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    labels = load_labels(args.labels)
    if not labels["models"]:
        print(f"no labels in {args.labels}: run python -m bench.trainability.label first")
        return 2
    started = time.perf_counter()
    rows = collect_rows(labels)
    found = scores(rows)
    if args.details:
        print_details(rows)
    section = render(rows, found)
    print(section)
    print(f"\nscored {len(rows)} models in {time.perf_counter() - started:.0f}s")
    if not args.no_write:
        RESULTS_PATH.write_text(json.dumps({
            "config": "default + samples=1, verify_remedies=False; optimizer sgd for the SGD "
                      "and agreed labels, optimizer adam for the Adam labels",
            "rows": rows}, indent=1) + "\n")
        write_docs(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
