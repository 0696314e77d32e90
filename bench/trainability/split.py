"""The fixed, seeded tune / held-out split, stratified by family and labels.

Models are grouped by (family, SGD label, Adam label); each group is shuffled with a fixed seed
and dealt alternately to ``tune`` and ``held-out``, the first card of each group going to
whichever half is currently smaller, so both halves see every family and label mix.

The split is made once, when a model is first labelled, and stored with its labels
(``labels.json``, ``models.<id>.split``); relabelling a model keeps its half, so rules tuned on
``tune`` never meet a tuned-on model in ``held-out``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

SPLIT_SEED = 2026
HALVES = ("tune", "held-out")


def stratified_split(models: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Map each model id to ``tune`` or ``held-out``.

    Args:
        models: By id, each with ``family`` and ``labels`` ({"sgd": ..., "adam": ...}).
    """
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for ident, entry in models.items():
        labels = entry["labels"]
        groups[(entry["family"], labels["sgd"], labels["adam"])].append(ident)
    rng = random.Random(SPLIT_SEED)
    assignment: dict[str, str] = {}
    sizes = dict.fromkeys(HALVES, 0)
    for key in sorted(groups):
        members = sorted(groups[key])
        rng.shuffle(members)
        start = 0 if sizes["tune"] <= sizes["held-out"] else 1
        for index, ident in enumerate(members):
            half = HALVES[(start + index) % 2]
            assignment[ident] = half
            sizes[half] += 1
    return assignment
