"""How good a model is on labelled images: accuracy, log-loss, per-class scores and the confusion matrix.

``evaluate`` scores the images through the same job as ``run``, so what it reports is what ``run``
predicts; the numbers come from ``metrics.compute_metrics``, as the trainer's do.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..fsutil import can_create_files_in
from .dataset import LabelledImages, read_dataset
from .metrics import compute_metrics


@dataclass(frozen=True)
class EvaluateConfig:
    data: Path
    model: str
    images: Path | None = None
    backend: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    scheduler: str | None = None
    progress: bool = True
    trust_model: bool = False

    def validate(self) -> None:
        """The numeric options, before the model or the data are read."""
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be a positive number, got {self.workers}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be a positive number, got {self.batch_size}")


def check_json_target(path: Path) -> None:
    """Refuse, before any work, a ``--json`` file that could not be written once the images are scored."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"--json {path} is a folder; give the name of a file to write the report to")
    if not folder.is_dir():
        raise UsageError(f"--json {path}: folder {folder} does not exist; create it or choose another file")
    if not can_create_files_in(folder):
        raise UsageError(f"--json {path}: folder {folder} is not writable; choose another file")


def truth_labels(data: LabelledImages, labels: tuple[str, ...], builtin: bool) -> list[str]:
    """The truth labels in the model's vocabulary; ImageNet synonyms are accepted for the built-in model."""
    from ..models.registry import imagenet_class

    known = set(labels)
    mapped = []
    for label, where in zip(data.labels, data.lines):
        name = label if label in known else (imagenet_class(label) if builtin else None)
        if name not in known:
            shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
            raise UsageError(f"{where}: label {label!r} is not a class of the model ({shown})")
        mapped.append(name)
    return mapped


def predict_files(paths: list[str], config: EvaluateConfig, labels: tuple[str, ...]) -> tuple[np.ndarray, dict]:
    """Class probabilities for each readable path (rows in order), and path → error for the others."""
    from .features import score_files

    rows = score_files(
        paths,
        ["status", "error", "topk"],
        model=config.model,
        backend=config.backend,
        batch_size=config.batch_size,
        top_k=len(labels),
        workers=config.workers,
        scheduler=config.scheduler,
        progress=config.progress,
        trust_model=config.trust_model,
    )
    index = {label: i for i, label in enumerate(labels)}
    probabilities, errors = [], {}
    for path, row in zip(paths, rows):
        if row["status"] != "ok":
            errors[path] = row["error"]
            continue
        vector = np.zeros(len(labels))
        for entry in row["topk"]:
            vector[index[entry["label"]]] = entry["score"]
        probabilities.append(vector)
    return np.array(probabilities).reshape(-1, len(labels)), errors


def evaluate(config: EvaluateConfig, log=print) -> dict:
    """Score the labelled images of ``config.data`` with ``config.model`` and return the report."""
    from ..models.registry import resolve_model

    config.validate()
    spec = resolve_model(config.model, trust_model=config.trust_model)
    data = read_dataset(config.data, config.images)
    truth = truth_labels(data, spec.labels, spec.kind == "builtin")
    probabilities, errors = predict_files(list(data.paths), config, spec.labels)
    if errors:
        log(f"skipped {len(errors)} unreadable images", file=sys.stderr)
    kept = [i for i, path in enumerate(data.paths) if path not in errors]
    if not kept:
        raise UsageError(f"no image of {config.data} could be read; nothing to evaluate")
    report = {
        "model": spec.id,
        "data": str(config.data),
        **compute_metrics([truth[i] for i in kept], probabilities, spec.labels),
    }
    root = Path(config.data if config.data.is_dir() else (config.images or config.data.resolve().parent)).resolve()
    report["unreadable"] = {_relative(p, root): e for p, e in errors.items()}
    report["predictions"] = [
        {
            "path": _relative(data.paths[i], root),
            "truth": truth[i],
            "predicted": spec.labels[int(row.argmax())],
            "score": float(row.max()),
        }
        for i, row in zip(kept, probabilities)
    ]
    return report


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def format_report(report: dict, verbose: bool = False) -> str:
    """The report as text: the headline numbers, a per-class table and the confusion matrix."""
    lines = [
        f"model: {report['model']}",
        f"data: {report['data']}",
        f"images: {report['images']}"
        + (f" ({len(report['unreadable'])} unreadable, skipped)" if report.get("unreadable") else ""),
        f"micro accuracy: {report['micro_accuracy']:.4f}",
        f"macro accuracy: {report['macro_accuracy']:.4f}",
        f"log-loss: {report['log_loss']:.4f}",
        "",
    ]
    width = max(len("class"), *(len(c) for c in report["per_class"]))

    def number(value):
        return "     -" if value is None else f"{value:6.3f}"

    lines.append(f"{'class':<{width}}  support  precision  recall      f1  log-loss")
    for label, row in report["per_class"].items():
        lines.append(
            f"{label:<{width}}  {row['support']:7d}     {number(row['precision'])}  {number(row['recall'])}"
            f"  {number(row['f1'])}    {number(row['log_loss'])}"
        )
    labels, matrix = report["confusion"]["labels"], report["confusion"]["matrix"]
    cell = max(5, *(len(label) for label in labels))
    lines += [
        "",
        "confusion matrix (rows: truth, columns: predicted)",
        " " * width + "  " + " ".join(f"{label:>{cell}}" for label in labels),
    ]
    for label, row in zip(labels, matrix):
        lines.append(f"{label:<{width}}  " + " ".join(f"{count:>{cell}d}" for count in row))
    if verbose:
        lines += ["", "predictions:"]
        lines += [
            f"  {p['path']}: {p['predicted']} ({p['score']:.3f}), truth {p['truth']}" for p in report["predictions"]
        ]
        lines += [f"  unreadable {path}: {error}" for path, error in report.get("unreadable", {}).items()]
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    """Write the report so that a reader never sees half of it."""
    from ..fsutil import write_atomically

    write_atomically(path, json.dumps(report, indent=2) + "\n")
