"""The blind test of forward_scale_exploding's thresholds (bench/trainability/forward_scale.py):
the product's defaults are the thresholds it kept, its models are new to the benchmark, its
decision rule is the one written down, and the docs quote what the committed runs give."""

from __future__ import annotations

import json

from bench.trainability.forward_scale import (
    BEGIN,
    END,
    FORWARD_SCALE_PATH,
    NEW,
    OLD,
    PILOT,
    decision,
    labels_at,
    render,
)
from bench.trainability.models import by_id
from bench.trainability.score import DOCS_PATH
from diagnostics.config import Thresholds

DATA = json.loads(FORWARD_SCALE_PATH.read_text())


def test_the_product_defaults_are_the_thresholds_the_blind_test_kept():
    assert decision(DATA)
    defaults = Thresholds()
    assert {name: getattr(defaults, name) for name in NEW} == NEW != OLD


def test_every_model_is_new_to_the_benchmark_and_the_change_moves_its_call():
    assert set(DATA["models"]).isdisjoint(by_id())
    assert {ident for ident, entry in DATA["models"].items() if entry["pilot"]} == set(PILOT)
    for entry in DATA["models"].values():
        calls = entry["calls"]
        assert any(calls[f"{o}_old"] != calls[f"{o}_new"] for o in ("sgd", "adam"))
        assert all(run["steps"] == 3000 and run["curve"] for runs in entry["runs"].values()
                   for run in runs)


def _entry(sgd_label_loss: float, calls: dict[str, str]) -> dict:
    # one run per optimizer whose every window has ``loss`` (baseline 1): 0.5 trains,
    # 1.0 stalls
    def run(loss: float) -> dict:
        return {"lr": 0.01, "steps": 3000, "steps_run": 3000, "nan_step": None,
                "best_loss": loss, "final_loss": loss, "curve": [loss] * 150}
    return {"pilot": False, "task": "teacher-vector", "baseline": 1.0, "calls": calls,
            "runs": {"sgd": [run(sgd_label_loss)], "adam": [run(0.5)]}}


def test_the_decision_needs_no_loss_under_either_optimizer_and_a_gain_under_one():
    right_new = {"growth": 50.0, "sgd_old": "exploding", "sgd_new": "healthy",
                 "adam_old": "exploding", "adam_new": "healthy"}
    assert labels_at(_entry(0.5, right_new), 3000) == {"sgd": "healthy", "adam": "healthy"}
    assert decision({"models": {"a": _entry(0.5, right_new)}})
    # the SGD label is a stall: the new call is wrong there, the old one right; under Adam the
    # new call is right and the old one wrong. Better under one, worse under the other: no.
    mixed = {"growth": 50.0, "sgd_old": "vanishing", "sgd_new": "healthy",
             "adam_old": "exploding", "adam_new": "healthy"}
    assert labels_at(_entry(1.0, mixed), 3000) == {"sgd": "vanishing", "adam": "healthy"}
    assert not decision({"models": {"a": _entry(1.0, mixed)}})
    # a tie under both: no gain, no change
    tie = {**mixed, "adam_old": "healthy"}
    assert not decision({"models": {"a": _entry(0.5, {**tie, "sgd_old": "healthy"})}})


def test_the_docs_section_is_what_the_committed_runs_give():
    section = DOCS_PATH.read_text().split(BEGIN, 1)[1].split(END, 1)[0]
    assert section == f"\n{render(DATA)}\n"
