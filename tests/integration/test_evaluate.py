"""Evaluation metrics against values worked out by hand, and ``evaluate`` with the built-in ImageNet model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import run_cli

from batchclf.errors import UsageError
from batchclf.training.dataset import read_dataset
from batchclf.training.evaluate import format_report, truth_labels
from batchclf.training.metrics import EPSILON, compute_metrics

CLASSES = ("cat", "dog", "fox")
# Five images. Rows: probabilities of cat, dog, fox. Predicted: cat, cat, dog, dog, fox.
PROBABILITIES = np.array(
    [
        [0.7, 0.2, 0.1],  # truth cat -> cat
        [0.5, 0.4, 0.1],  # truth dog -> cat
        [0.2, 0.6, 0.2],  # truth dog -> dog
        [0.1, 0.8, 0.1],  # truth dog -> dog
        [0.3, 0.3, 0.4],  # truth cat -> fox
    ]
)
TRUTH = ["cat", "dog", "dog", "dog", "cat"]


def test_metrics_match_hand_computed_values():
    metrics = compute_metrics(TRUTH, PROBABILITIES, CLASSES)
    assert metrics["images"] == 5
    # 3 of 5 right (images 1, 3, 4).
    assert metrics["micro_accuracy"] == pytest.approx(0.6)
    # Recall cat 1/2, dog 2/3; fox has no image and is left out of the mean: (1/2 + 2/3) / 2 = 7/12.
    assert metrics["macro_accuracy"] == pytest.approx(7 / 12)
    # Probabilities of the true class: 0.7, 0.4, 0.6, 0.8, 0.3.
    cat_loss = (-math.log(0.7) - math.log(0.3)) / 2
    dog_loss = (-math.log(0.4) - math.log(0.6) - math.log(0.8)) / 3
    assert metrics["log_loss"] == pytest.approx((2 * cat_loss + 3 * dog_loss) / 5)
    assert metrics["log_loss"] == pytest.approx(0.6422, abs=1e-4)
    cat, dog, fox = (metrics["per_class"][c] for c in CLASSES)
    assert cat["log_loss"] == pytest.approx(0.7803, abs=1e-4) and dog["log_loss"] == pytest.approx(0.5501, abs=1e-4)
    # cat: predicted twice (images 0, 1), right once -> precision 1/2; recall 1/2; F1 1/2.
    assert (cat["support"], cat["precision"], cat["recall"], cat["f1"]) == (2, 0.5, 0.5, pytest.approx(0.5))
    # dog: predicted twice, both right -> precision 1; recall 2/3; F1 = 2 * 1 * 2/3 / (5/3) = 0.8.
    assert (dog["support"], dog["precision"], dog["recall"]) == (3, 1.0, pytest.approx(2 / 3))
    assert dog["f1"] == pytest.approx(0.8)
    # fox: predicted once, wrongly, and never the truth: precision 0, recall and F1 undefined.
    assert (fox["support"], fox["precision"], fox["recall"], fox["f1"], fox["log_loss"]) == (0, 0.0, None, None, None)
    assert metrics["confusion"] == {"labels": ["cat", "dog", "fox"], "matrix": [[1, 0, 1], [1, 2, 0], [0, 0, 0]]}


def test_a_class_never_predicted_has_undefined_precision_and_zero_f1():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2]])
    metrics = compute_metrics(["a", "b"], probabilities, ("a", "b"))
    assert metrics["per_class"]["b"] == {
        "support": 1,
        "precision": None,
        "recall": 0.0,
        "f1": 0.0,
        "log_loss": pytest.approx(-math.log(0.2)),
    }
    assert metrics["macro_accuracy"] == pytest.approx(0.5)


def test_log_loss_clips_a_zero_probability():
    metrics = compute_metrics(["a", "b"], np.array([[1.0, 0.0], [1.0, 0.0]]), ("a", "b"))
    assert EPSILON == 1e-15
    assert metrics["log_loss"] == pytest.approx(-math.log(1e-15) / 2)  # 34.539 / 2
    assert metrics["per_class"]["b"]["log_loss"] == pytest.approx(34.5388, abs=1e-4)


def test_many_classes_report_only_those_seen():
    classes = tuple(f"c{i}" for i in range(1000))
    probabilities = np.full((2, 1000), 0.5 / 998)
    probabilities[0, 7], probabilities[0, 3] = 0.3, 0.2
    probabilities[1, 9], probabilities[1, 3] = 0.4, 0.1
    metrics = compute_metrics(["c3", "c9"], probabilities, classes)
    assert metrics["confusion"]["labels"] == ["c3", "c7", "c9"]
    assert metrics["confusion"]["matrix"] == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert metrics["micro_accuracy"] == 0.5


def test_report_text_is_labelled():
    text = format_report(
        {
            "model": "m",
            "data": "d",
            "unreadable": {"x.jpg": "empty file"},
            "predictions": [],
            **compute_metrics(TRUTH, PROBABILITIES, CLASSES),
        },
        verbose=True,
    )
    assert "images: 5 (1 unreadable, skipped)" in text
    assert "micro accuracy: 0.6000" in text and "macro accuracy: 0.5833" in text and "log-loss: 0.6422" in text
    assert "confusion matrix (rows: truth, columns: predicted)" in text
    lines = text.splitlines()
    header = lines.index("confusion matrix (rows: truth, columns: predicted)")
    assert [line.split() for line in lines[header + 1 : header + 5]] == [
        ["cat", "dog", "fox"],
        ["cat", "1", "0", "1"],
        ["dog", "1", "2", "0"],
        ["fox", "0", "0", "0"],
    ]
    assert "unreadable x.jpg: empty file" in text


def test_truth_labels_accept_imagenet_synonyms(datasets, tmp_path):
    from batchclf.models.registry import imagenet_labels

    data = read_dataset(datasets / "imagenet_objects" / "tags.tsv")
    mapped = truth_labels(data, imagenet_labels(), builtin=True)
    assert mapped[data.labels.index("canoe")] == "kayak"
    assert set(mapped) <= set(imagenet_labels())
    with pytest.raises(UsageError, match=r"tags\.tsv line 3: label 'canoe' is not a class of the model"):
        truth_labels(data, imagenet_labels(), builtin=False)


@pytest.mark.slow
def test_evaluate_command_with_the_builtin_model(datasets, tmp_path):
    report_file = tmp_path / "report.json"
    result = run_cli(
        "evaluate",
        str(datasets / "imagenet_objects" / "tags.tsv"),
        "--json",
        str(report_file),
        "--workers",
        "1",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_file.read_text())
    assert report["images"] == 19 and report["model"] == "efficientnet-lite0"
    assert report["micro_accuracy"] >= 0.8
    assert 0 < report["log_loss"] < 1.0
    assert "kayak" in report["per_class"] and "teddy bear" in report["confusion"]["labels"]
    assert f"micro accuracy: {report['micro_accuracy']:.4f}" in result.stdout
    assert len(report["predictions"]) == 19
