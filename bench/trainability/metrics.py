"""Scores of one predictor against one set of labels: accuracy, precision/recall, confusion.

Only unambiguous cases count (label ∈ healthy / vanishing / exploding). A prediction outside
those three (``inconclusive``, or anything a later verdict adds) is a class of its own: it is a
column of the confusion matrix and is always wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.trainability.labelling import LABELS


@dataclass
class Score:
    """How one predictor did on a set of unambiguous cases.

    Attributes:
        n: Cases scored.
        correct: Cases predicted right.
        confusion: ``confusion[label][prediction]`` counts.
        columns: Prediction classes in display order (the three labels, then any others).
    """

    n: int = 0
    correct: int = 0
    confusion: dict[str, Counter[str]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=lambda: list(LABELS))

    @property
    def accuracy(self) -> float | None:
        """Fraction right (None on no cases)."""
        return self.correct / self.n if self.n else None

    def precision(self, label: str) -> float | None:
        """Of the cases predicted ``label``, the fraction that are ``label``."""
        predicted = sum(row[label] for row in self.confusion.values())
        return self.confusion.get(label, Counter())[label] / predicted if predicted else None

    def recall(self, label: str) -> float | None:
        """Of the cases labelled ``label``, the fraction predicted ``label``."""
        row = self.confusion.get(label, Counter())
        total = sum(row.values())
        return row[label] / total if total else None


def score(pairs: Sequence[tuple[str, str]]) -> Score:
    """Score ``(label, prediction)`` pairs, skipping ambiguous labels."""
    result = Score(confusion={label: Counter() for label in LABELS})
    for label, prediction in pairs:
        if label not in LABELS:
            continue
        result.n += 1
        result.correct += label == prediction
        result.confusion[label][prediction] += 1
        if prediction not in result.columns:
            result.columns.append(prediction)
    return result


def percent(value: float | None) -> str:
    """``86 %`` style, or ``—`` for no value."""
    return "—" if value is None else f"{100 * value:.0f} %"
