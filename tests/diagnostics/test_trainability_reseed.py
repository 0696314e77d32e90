"""The trainability benchmark's seed check (bench/trainability/reseed.py): a run's batches come
from ``data_seed`` and nothing else, and the comparison counts what a verdict fixed at
initialization can get right when a label moves with the batches."""

from __future__ import annotations

from bench.trainability.models import mlp
from bench.trainability.reseed import compare, validation_moves
from bench.trainability.tasks import make_task
from bench.trainability.train import DATA_SEED, build_module, train_run
from diagnostics.loading.spec.loader import build_spec, parse_spec


def _without_time(record: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in record.items() if key != "seconds"}


def test_the_data_seed_changes_the_batches_and_nothing_else():
    model = mlp("relu", 3, 1.0)
    task = make_task(model)
    stored = train_run(model, task, "sgd", 1e-2, 3).to_dict()
    again = train_run(model, task, "sgd", 1e-2, 3, data_seed=DATA_SEED).to_dict()
    other = train_run(model, task, "sgd", 1e-2, 3, data_seed=DATA_SEED + 1).to_dict()
    assert _without_time(again) == _without_time(stored)
    assert other["first_loss"] != stored["first_loss"]
    # the initial weights are the probed ones whatever the seed: a fresh build is identical
    first = build_module(model).state_dict()
    second = build_module(model).state_dict()
    assert all((first[name] == second[name]).all() for name in first)


def _entry(split: str, sgd: str, adam: str) -> dict[str, object]:
    return {"split": split, "labels": {"sgd": sgd, "adam": adam}}


def _calls(sgd: str) -> dict[str, dict[str, str]]:
    return {name: {"graddoctor": sgd} for name in ("sgd", "adam", "agreed")}


def test_compare_bounds_what_a_fixed_call_can_get_right():
    stored = {"steady": _entry("held-out", "healthy", "healthy"),
              "edge": _entry("held-out", "healthy", "healthy"),
              "late": _entry("held-out", "ambiguous", "healthy")}
    calls = {"steady": _calls("healthy"), "edge": _calls("vanishing"), "late": _calls("vanishing")}
    other = {8: {"steady": {"labels": {"sgd": "healthy", "adam": "healthy"}},
                 "edge": {"labels": {"sgd": "vanishing", "adam": "healthy"}},
                 "late": {"labels": {"sgd": "vanishing", "adam": "healthy"}}},
             9: {"steady": {"labels": {"sgd": "healthy", "adam": "healthy"}},
                 "edge": {"labels": {"sgd": "vanishing", "adam": "healthy"}},
                 "late": {"labels": {"sgd": "vanishing", "adam": "healthy"}}}}
    report = compare(stored, calls, other)
    sgd = report["rows"]["held-out/sgd"]
    # stored seed: two unambiguous labels (late is ambiguous), the steady one repeats
    assert (sgd["scored"], sgd["same_every_seed"], sgd["right"]) == (2, 1, 1)
    assert sgd["stable_right"] == 1  # steady
    # every seed: steady 3 cases, edge 3 (h, v, v), late 2 (v, v): 8 cases
    assert sgd["seed_cases"] == 8
    assert sgd["seed_right"] == 3 + 2 + 2  # steady healthy; edge and late vanishing
    assert sgd["seed_best"] == 3 + 2 + 2  # edge's best fixed call is vanishing (2 of 3)
    flipped = {(flip["id"], flip["labels"]) for flip in report["flips"]}
    # late: ambiguous agreed label under every seed (SGD and Adam differ), so no flip there
    assert flipped == {("edge", "sgd"), ("late", "sgd"), ("edge", "agreed")}
    assert report["rows"]["held-out/adam"]["seed_best"] == 9


def test_validation_moves_tell_a_repeated_label_from_one_that_crosses_classes():
    stored = {"kept": {"sgd": "vanishing", "adam": "healthy"},
              "crossed": {"sgd": "healthy", "adam": "ambiguous"}}
    other = {8: {"kept": {"labels": {"sgd": "vanishing", "adam": "ambiguous"}},
                 "crossed": {"labels": {"sgd": "vanishing", "adam": "healthy"}}}}
    rows = {row["id"]: row for row in validation_moves(stored, other)}
    assert rows["kept"]["sgd_repeated"]
    assert not rows["kept"]["sgd_crossed"]
    # a move to ambiguous is neither repeated nor crossed
    assert not rows["kept"]["adam_repeated"]
    assert not rows["kept"]["adam_crossed"]
    assert rows["crossed"]["sgd_crossed"]
    assert not rows["crossed"]["sgd_repeated"]
    # an ambiguous stored label is not scored: it can neither repeat nor cross
    assert not rows["crossed"]["adam_repeated"]
    assert not rows["crossed"]["adam_crossed"]


def test_the_init_seed_draws_the_weights_diagnose_draws_with_that_config_seed():
    model = mlp("relu", 3, 1.0)
    drawn = build_module(model, seed=1).state_dict()
    probed = build_spec(parse_spec(model.spec), seed=1).module.state_dict()
    default = build_module(model).state_dict()
    assert all((drawn[name] == probed[name]).all() for name in drawn)
    assert any((drawn[name] != default[name]).any() for name in drawn)
    task = make_task(model)
    assert (train_run(model, task, "sgd", 1e-2, 2, init_seed=1).first_loss
            != train_run(model, task, "sgd", 1e-2, 2).first_loss)
