"""How right a classifier is: accuracy, log-loss, per-class precision, recall and F1, confusion counts.

The one implementation behind ``batchclf evaluate``, the metrics ``batchclf train`` records and
``batchclf report --truth``: pure functions of labels and probabilities, no I/O.

Undefined is not zero. The precision of a class that was never predicted, and the recall and F1 of a
class with no true image, are ``None`` (JSON ``null``, shown as a dash): a class the model never
guesses is not listed as "precision 0" beside the classes it guesses wrongly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

EPSILON = 1e-15  # probabilities are clipped to [EPSILON, 1] before the logarithm
FULL_REPORT_CLASSES = 100  # larger models report only the classes seen in the truth or the predictions


def log_losses(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """−ln p(true class) of each image (rows of ``probabilities``, ``targets`` the true columns).

    Clipping to ``EPSILON`` bounds what one confident mistake costs: ln 10¹⁵ ≈ 34.5.
    """
    chosen = probabilities[np.arange(len(targets)), targets]
    return -np.log(np.clip(chosen, EPSILON, 1.0))


def log_loss(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The mean of ``log_losses``: 0 is perfect, ln K a uniform guess over K classes."""
    return float(log_losses(probabilities, targets).mean())


@dataclass(frozen=True)
class ClassScores:
    label: str
    support: int  # images whose true label this is
    predicted: int  # images predicted as this label
    correct: int

    @property
    def precision(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.correct / self.support if self.support else None

    @property
    def f1(self) -> float | None:
        """The harmonic mean of precision and recall, 2·correct / (support + predicted): 0 for a class with
        images none of which was found (even if it was never predicted), undefined for a class with none."""
        return 2 * self.correct / (self.support + self.predicted) if self.support else None


def confusion_counts(truth: Iterable[str], predicted: Iterable[str]) -> Counter[tuple[str, str]]:
    """Images for each (true label, predicted label) pair."""
    return Counter(zip(truth, predicted, strict=True))


def class_scores(counts: Counter[tuple[str, str]], classes: Iterable[str]) -> list[ClassScores]:
    """Support, predictions and hits of each of ``classes``, in that order."""
    support: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    for (actual, guess), images in counts.items():
        support[actual] += images
        predicted[guess] += images
    return [ClassScores(c, support[c], predicted[c], counts[(c, c)]) for c in classes]


def accuracy(counts: Counter[tuple[str, str]]) -> float | None:
    """The share of images predicted right; undefined for no images."""
    total = counts.total()
    return sum(n for (actual, guess), n in counts.items() if actual == guess) / total if total else None


def macro_average(values: Iterable[float | None]) -> float | None:
    """The mean of the defined values: every class counts the same, however many images it has."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def confusion_matrix(counts: Counter[tuple[str, str]], rows: Sequence[str], columns: Sequence[str]) -> list[list[int]]:
    """Counts with the true label down and the predicted label across."""
    return [[counts[(actual, guess)] for guess in columns] for actual in rows]


def compute_metrics(truth: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]) -> dict:
    """Metrics of ``probabilities`` (images × classes, rows summing to 1) against ``truth`` labels."""
    classes = list(classes)
    index = {label: i for i, label in enumerate(classes)}
    targets = np.array([index[label] for label in truth], dtype=int)
    losses = log_losses(probabilities, targets)
    counts = confusion_counts(truth, [classes[i] for i in probabilities.argmax(axis=1)])
    shown = classes
    if len(classes) > FULL_REPORT_CLASSES:
        seen = {label for pair in counts for label in pair}
        shown = [label for label in classes if label in seen]
    scores = class_scores(counts, shown)
    per_class = {
        s.label: {
            "support": s.support,
            "precision": s.precision,
            "recall": s.recall,
            "f1": s.f1,
            "log_loss": float(losses[targets == index[s.label]].mean()) if s.support else None,
        }
        for s in scores
    }
    return {
        "images": int(len(targets)),
        "micro_accuracy": accuracy(counts),
        "macro_accuracy": macro_average(s.recall for s in scores),
        "log_loss": float(losses.mean()),
        "log_loss_epsilon": EPSILON,
        "per_class": per_class,
        "confusion": {"labels": shown, "matrix": confusion_matrix(counts, shown, shown)},
    }
