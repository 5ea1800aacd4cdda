"""Score a run against known labels: a ``tags.tsv`` matched to the run's rows, and the confusion-matrix metrics.

The metrics are computed here, from the matched rows, with no other dependency; they are the usual
definitions (precision = TP / predicted, recall = TP / actual, F1 their harmonic mean).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..discover import path_text
from ..training.dataset import read_tags
from .run import Run

MATRIX_CLASSES = 30  # classes drawn in the heat map; the rest of the predictions go to "(other)"
OTHER = "(other)"


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
class ClassMetrics:
    label: str
    support: int  # images whose true label this is
    predicted: int  # images predicted as this label
    correct: int

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.correct / self.support if self.support else 0.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


@dataclass(frozen=True)
class TruthResult:
    matched: int
    unmatched_truth: list[str]  # truth paths not in the run (sorted)
    unlabelled_rows: int  # run rows without a truth label
    accuracy: float
    classes: list[ClassMetrics]  # every true class, by name
    matrix_rows: list[str]  # true classes drawn (most supported first)
    matrix_columns: list[str]  # predicted classes drawn: the rows' classes, then OTHER when needed
    matrix: list[list[int]]
    aliased: dict[str, str]  # truth label → model label, where a synonym was translated

    @property
    def macro_f1(self) -> float:
        return sum(c.f1 for c in self.classes) / len(self.classes) if self.classes else 0.0

    def to_json(self) -> dict:
        return {
            "matched": self.matched,
            "unmatched_truth": len(self.unmatched_truth),
            "unlabelled_rows": self.unlabelled_rows,
            "accuracy": round(self.accuracy, 6),
            "macro_f1": round(self.macro_f1, 6),
            "classes": [
                {
                    "label": c.label,
                    "support": c.support,
                    "predicted": c.predicted,
                    "correct": c.correct,
                    "precision": round(c.precision, 6),
                    "recall": round(c.recall, 6),
                    "f1": round(c.f1, 6),
                }
                for c in self.classes
            ],
            "confusion": {"rows": self.matrix_rows, "columns": self.matrix_columns, "counts": self.matrix},
            "aliases": self.aliased,
        }


def _aliases(run: Run) -> dict[str, str]:
    """WordNet synonyms → class names for the built-in ImageNet models (a tags.tsv may say "canoe")."""
    from ..models.registry import BUILTIN_MODELS, imagenet_aliases

    return imagenet_aliases() if run.metadata.get("model") in BUILTIN_MODELS else {}


def confusion(pairs: list[tuple[str, str]]) -> tuple[Counter, list[ClassMetrics]]:
    """Counts of (true, predicted) and the per-class metrics of every true class."""
    counts = Counter(pairs)
    support = Counter(t for t, _ in pairs)
    predicted = Counter(p for _, p in pairs)
    metrics = [ClassMetrics(c, support[c], predicted[c], counts[(c, c)]) for c in sorted(support)]
    return counts, metrics


def score_run(run: Run, truth: dict[str, str]) -> TruthResult:
    aliases = _aliases(run)
    mapped = {label: aliases.get(label, label) for label in set(truth.values())}
    aliased = {k: v for k, v in sorted(mapped.items()) if k != v}
    outcomes = run.outcomes()
    outcomes = outcomes.filter(pc.is_in(outcomes["path"], value_set=pa.array(list(truth), type=pa.string())))
    pairs = [(mapped[truth[p]], o) for p, o in zip(outcomes["path"].to_pylist(), outcomes["outcome"].to_pylist())]
    found = set(outcomes["path"].to_pylist())
    counts, metrics = confusion(pairs)
    rows = [m.label for m in sorted(metrics, key=lambda m: (-m.support, m.label))][:MATRIX_CLASSES]
    columns = list(rows)
    if any(p not in rows for _, p in counts.elements()):
        columns.append(OTHER)
    matrix = [[0] * len(columns) for _ in rows]
    index = {c: i for i, c in enumerate(columns)}
    for (actual, predicted), n in counts.items():
        if actual in rows:
            matrix[rows.index(actual)][index.get(predicted, index.get(OTHER, 0))] += n
    correct = sum(n for (a, p), n in counts.items() if a == p)
    return TruthResult(
        matched=len(pairs),
        unmatched_truth=sorted(p for p in truth if p not in found),
        unlabelled_rows=run.files - len(pairs),
        accuracy=correct / len(pairs) if pairs else 0.0,
        classes=metrics,
        matrix_rows=rows,
        matrix_columns=columns,
        matrix=matrix,
        aliased=aliased,
    )
