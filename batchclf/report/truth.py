"""Score a run against known labels: a ``tags.tsv`` matched to the run's rows, the most confused pairs
and the confusion matrix.

The metrics are those of ``batchclf evaluate`` (``training.metrics``), over the matched rows; a failed
file counts as predicted ``(error)``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..paths import path_text
from ..training.dataset import read_tags
from ..training.metrics import ClassScores, accuracy, class_scores, confusion_counts, confusion_matrix, macro_average
from .run import Run

MATRIX_CLASSES = 30  # classes drawn in the heat map; the rest of the predictions go to "(other)"
OTHER = "(other)"
LISTED_PAIRS = 1000  # confused pairs listed in the JSON; their count is always exact


def read_truth(tsv: Path, root: Path) -> tuple[dict[str, str], list[str]]:
    """``path relative to root → label`` from a tags.tsv, and the paths outside ``root``.

    The lines are read by ``training.dataset.read_tags`` (the format is the trainer's); paths are
    relative to the TSV's folder, and need not exist on disk: they are matched to the run's rows.
    """
    folder = tsv.resolve().parent
    root_text = os.path.realpath(root)  # resolved like the TSV's folder, so a linked root still matches
    labels: dict[str, str] = {}
    outside: list[str] = []
    for tag in read_tags(tsv, f"--truth {tsv}"):
        absolute = os.path.normpath(os.path.join(folder, tag.path))
        relative = os.path.relpath(absolute, root_text)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            outside.append(tag.path)
            continue
        labels[path_text(relative.replace(os.sep, "/"))] = tag.label  # the run's spelling of the name
    return labels, outside


@dataclass(frozen=True)
class ConfusedPair:
    actual: str  # the true label
    predicted: str
    count: int  # images of ``actual`` predicted as ``predicted``
    share: float  # of the images of ``actual``


def confused_pairs(counts: Counter[tuple[str, str]]) -> list[ConfusedPair]:
    """Every (true, predicted) pair that differs, most images first, then the larger share of the true
    label, then by name: with a thousand classes these are the mistakes worth reading, where a
    confusion matrix could show only a corner."""
    support: Counter[str] = Counter()
    for (actual, _), images in counts.items():
        support[actual] += images
    pairs = [ConfusedPair(a, g, n, n / support[a]) for (a, g), n in counts.items() if a != g and n]
    return sorted(pairs, key=lambda p: (-p.count, -p.share, p.actual, p.predicted))


@dataclass(frozen=True)
class TruthResult:
    matched: int
    unmatched_truth: list[str]  # truth paths not in the run (sorted)
    unlabelled_rows: int  # run rows without a truth label
    accuracy: float | None  # None when no labelled image is in the run
    classes: list[ClassScores]  # every true class, by name
    matrix_rows: list[str]  # true classes drawn (most supported first)
    matrix_columns: list[str]  # predicted classes drawn: the rows' classes, then OTHER when needed
    matrix: list[list[int]]
    aliased: dict[str, str]  # truth label → model label, where a synonym was translated
    confused: list[ConfusedPair] = field(default_factory=list)  # every confused pair, most images first

    @property
    def matrix_complete(self) -> bool:
        """Whether the matrix has a row for every true label (else the page lists confused pairs only)."""
        return len(self.matrix_rows) == len(self.classes)

    @property
    def macro_f1(self) -> float | None:
        return macro_average(c.f1 for c in self.classes)

    def to_json(self) -> dict:
        return {
            "matched": self.matched,
            "unmatched_truth": len(self.unmatched_truth),
            "unlabelled_rows": self.unlabelled_rows,
            "accuracy": _rounded(self.accuracy),
            "macro_f1": _rounded(self.macro_f1),
            "classes": [
                {
                    "label": c.label,
                    "support": c.support,
                    "predicted": c.predicted,
                    "correct": c.correct,
                    "precision": _rounded(c.precision),
                    "recall": _rounded(c.recall),
                    "f1": _rounded(c.f1),
                }
                for c in self.classes
            ],
            "confusion": {"rows": self.matrix_rows, "columns": self.matrix_columns, "counts": self.matrix},
            "confused": {
                "count": len(self.confused),
                "pairs": [
                    {"actual": p.actual, "predicted": p.predicted, "count": p.count, "share": round(p.share, 6)}
                    for p in self.confused[:LISTED_PAIRS]
                ],
            },
            "aliases": self.aliased,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _model_labels(run: Run, labels: set[str]) -> dict[str, str]:
    """Each truth label → the class it is scored as: for the built-in ImageNet models, the class it or
    its WordNet synonym names (a tags.tsv may say "canoe" for "kayak"); otherwise itself."""
    from ..models.registry import BUILTIN_MODELS, imagenet_class

    if run.metadata.get("model") not in BUILTIN_MODELS:
        return {label: label for label in labels}
    return {label: imagenet_class(label) or label for label in labels}


def score_run(run: Run, truth: dict[str, str]) -> TruthResult:
    mapped = _model_labels(run, set(truth.values()))
    aliased = {k: v for k, v in sorted(mapped.items()) if k != v}
    outcomes = run.outcomes()
    outcomes = outcomes.filter(pc.is_in(outcomes["path"], value_set=pa.array(list(truth), type=pa.string())))
    paths = outcomes["path"].to_pylist()
    counts = confusion_counts([mapped[truth[p]] for p in paths], outcomes["outcome"].to_pylist())
    scores = class_scores(counts, sorted({actual for actual, _ in counts}))
    rows = [c.label for c in sorted(scores, key=lambda c: (-c.support, c.label))][:MATRIX_CLASSES]
    columns = list(rows)
    matrix = confusion_matrix(counts, rows, columns)
    if any(guess not in rows for _, guess in counts):
        columns.append(OTHER)
        support = {c.label: c.support for c in scores}
        for label, counts_row in zip(rows, matrix):
            counts_row.append(support[label] - sum(counts_row))
    return TruthResult(
        matched=len(paths),
        unmatched_truth=sorted(set(truth) - set(paths)),
        unlabelled_rows=run.files - len(paths),
        accuracy=accuracy(counts),
        classes=scores,
        matrix_rows=rows,
        matrix_columns=columns,
        matrix=matrix,
        aliased=aliased,
        confused=confused_pairs(counts),
    )
