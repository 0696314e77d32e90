"""The benchmark read at longer step budgets (bench/trainability/long_budget.py): a long run cut
at the stored budget is the stored run, a label at a budget follows the labelling rule on the
cut runs, and only what a longer budget can change is retrained."""

from __future__ import annotations

from typing import Any

import pytest

from bench.trainability.labelling import label_runs
from bench.trainability.long_budget import (
    BEGIN,
    END,
    LONG_PATH,
    at_budget,
    labels_at,
    render,
    run_key,
    runs_to_retrain,
)
from bench.trainability.models import mlp
from bench.trainability.score import DOCS_PATH
from bench.trainability.tasks import make_task
from bench.trainability.train import SMOOTHING, train_run


def test_a_long_run_cut_at_the_short_budget_is_the_short_run():
    model = mlp("tanh", 4, 1.0)
    task = make_task(model)
    short = train_run(model, task, "sgd", 1e-3, 300).to_dict()
    long = train_run(model, task, "sgd", 1e-3, 600, keep_curve=True).to_dict()
    assert "curve" not in short
    assert len(long["curve"]) == 600 // SMOOTHING
    cut = at_budget(long, 300)
    for field in ("best_loss", "final_loss", "initial_loss", "first_loss", "nan_step",
                  "steps_run"):
        assert cut[field] == short[field], field
    assert label_runs([cut], task.baseline, model.task) == label_runs([short], task.baseline,
                                                                      model.task)


def _run(lr: float, curve: list[float], nan_step: int | None = None) -> dict[str, Any]:
    steps_run = nan_step if nan_step is not None else len(curve) * SMOOTHING
    return {"lr": lr, "steps": 300, "steps_run": steps_run, "nan_step": nan_step,
            "best_loss": min(curve) if curve else None,
            "final_loss": None if nan_step is not None else curve[-1], "curve": curve}


def _entry(labels: dict[str, str], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"task": "teacher-vector", "steps": 300, "baseline": 1.0, "labels": labels,
            "runs": {o: [{k: v for k, v in r.items() if k != "curve"} for r in group]
                     for o, group in runs.items()}}


def test_a_plateau_that_ends_after_the_short_budget_is_healthy_only_at_the_longer_one():
    flat, late = [1.0] * 15, [1.0] * 30 + [0.7] * 5  # trains between 600 and 700 steps
    sgd = [_run(0.001, flat), _run(0.01, flat), _run(0.1, [2.0, 1e30], nan_step=30)]
    entry = _entry({"sgd": "ambiguous", "adam": "healthy"},
                   {"sgd": sgd, "adam": [_run(0.001, [0.5])]})
    # healthy labels and runs that diverged within the short budget are never retrained
    assert runs_to_retrain(entry) == [("sgd", 0.001), ("sgd", 0.01)]
    long_runs = {run_key("m", "sgd", 0.001): _run(0.001, [1.0] * 150),
                 run_key("m", "sgd", 0.01): {**_run(0.01, late), "steps": 3000}}
    assert labels_at({"m": entry}, long_runs, 300)["m"] == {"sgd": "ambiguous", "adam": "healthy"}
    assert labels_at({"m": entry}, long_runs, 600)["m"]["sgd"] == "ambiguous"
    assert labels_at({"m": entry}, long_runs, 1000)["m"] == {"sgd": "healthy", "adam": "healthy"}


def test_a_label_needing_a_run_not_made_yet_is_unknown_and_recurrent_nets_keep_theirs():
    entry = _entry({"sgd": "vanishing", "adam": "vanishing"},
                   {"sgd": [_run(0.01, [1.0] * 15)], "adam": [_run(0.001, [1.0] * 15)]})
    assert labels_at({"m": entry}, {}, 1000)["m"] == {"sgd": None, "adam": None}
    assert runs_to_retrain({**entry, "task": "adding"}) == []


def test_a_divergence_after_the_short_budget_counts_only_from_its_step():
    run = _run(0.1, [1.0] * 40, nan_step=800)
    assert at_budget(run, 300)["nan_step"] is None
    assert at_budget(run, 1000)["nan_step"] == 800
    assert at_budget(run, 1000)["final_loss"] is None
    assert at_budget(run, 300)["best_loss"] == pytest.approx(1.0)


def test_the_docs_section_is_what_the_committed_long_runs_give():
    # the numbers quoted in docs/trainability.md and the README come from this section
    text = DOCS_PATH.read_text()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert section == f"\n{render(LONG_PATH)}\n"


def test_validation_stacks_are_read_at_a_budget_like_the_benchmark():
    # validation.json keeps run summaries (losses over B); the runs a longer budget can change
    # are the finite ones of a non-healthy label, and the stored labels stand at 300 steps
    from bench.trainability.validation import labels_at as validation_labels_at
    from bench.trainability.validation import long_runs_needed

    def summary(optimizer: str, lr: float, best: float, nan_step: int | None = None) -> dict:
        return {"optimizer": optimizer, "lr": lr, "best_over_B": best, "final_over_B": best,
                "nan_step": nan_step, "outcome": "stalled", "steps_run": 300}

    entry = {"task": "teacher-vector", "baseline": 2.0,
             "labels": {"sgd": "vanishing", "adam": "healthy"},
             "runs": [summary("sgd", 0.01, 0.99), summary("sgd", 0.1, 1.2, nan_step=40),
                      summary("adam", 0.001, 0.5)]}
    assert long_runs_needed(entry) == [("sgd", 0.01)]
    assert validation_labels_at(entry, "m", {}, 300) == entry["labels"]
    assert validation_labels_at(entry, "m", {}, 3000) == {"sgd": None, "adam": "healthy"}
    # the 1e-2 run's plateau ends at step 1,000 (windows of 20 steps); the 1e-1 run diverged, so
    # at 1,000 steps the grid is a stall beside a divergence: ambiguous
    curve = [1.98] * 50 + [1.0] * 100
    long_run = {"lr": 0.01, "steps": 3000, "steps_run": 3000, "nan_step": None,
                "best_loss": 1.0, "final_loss": 1.0, "curve": curve}
    found = {b: validation_labels_at(entry, "m", {"m/sgd/0.01": long_run}, b)["sgd"]
             for b in (1000, 3000)}
    assert found == {1000: "ambiguous", 3000: "healthy"}


def test_the_validation_labels_in_the_docs_are_what_the_committed_long_runs_give():
    import json

    from bench.trainability.validation import (
        LONG_BEGIN,
        LONG_END,
        VALIDATION_LONG_PATH,
        VALIDATION_PATH,
    )
    from bench.trainability.validation import labels_at as validation_labels_at

    models = json.loads(VALIDATION_PATH.read_text())["models"]
    long_runs = json.loads(VALIDATION_LONG_PATH.read_text())
    section = DOCS_PATH.read_text().split(LONG_BEGIN, 1)[1].split(LONG_END, 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:4]]
            for line in section.splitlines() if line.startswith("| `")}
    assert set(rows) == set(models)
    for ident, entry in models.items():
        for column, optimizer in zip(rows[ident], ("sgd", "adam"), strict=True):
            expected = " / ".join(
                str(validation_labels_at(entry, ident, long_runs, budget)[optimizer] or "not run")
                for budget in (300, 1000, 3000))
            assert column == expected, (ident, optimizer)
