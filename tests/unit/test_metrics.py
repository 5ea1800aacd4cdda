"""The one metrics implementation, on canned labels and probabilities worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from batchclf.report.sections import truth_section
from batchclf.report.truth import TruthResult
from batchclf.training.metrics import (
    EPSILON,
    ClassScores,
    accuracy,
    class_scores,
    compute_metrics,
    confusion_counts,
    confusion_matrix,
    log_loss,
    log_losses,
    macro_average,
)

# Six images. cat: 2 right, 1 taken for dog. dog: 1 right, 1 taken for cat. fox: 1 image, taken for cat,
# never predicted. owl: no image, predicted once (for a dog).
TRUTH = ["cat", "cat", "cat", "dog", "dog", "fox", "dog"]
PREDICTED = ["cat", "cat", "dog", "dog", "cat", "cat", "owl"]
CLASSES = ["cat", "dog", "fox", "owl"]


def _scores() -> dict[str, ClassScores]:
    return {s.label: s for s in class_scores(confusion_counts(TRUTH, PREDICTED), CLASSES)}


def test_counts_and_matrix():
    counts = confusion_counts(TRUTH, PREDICTED)
    assert counts == {("cat", "cat"): 2, ("cat", "dog"): 1, ("dog", "dog"): 1, ("dog", "cat"): 1,
                      ("fox", "cat"): 1, ("dog", "owl"): 1}  # fmt: skip
    assert confusion_matrix(counts, CLASSES, CLASSES) == [[2, 1, 0, 0], [1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert confusion_matrix(counts, ["dog"], ["owl", "cat"]) == [[1, 1]]
    with pytest.raises(ValueError):
        confusion_counts(["cat"], ["cat", "dog"])


def test_per_class_scores_on_a_canned_confusion():
    scores = _scores()
    cat, dog, fox, owl = (scores[c] for c in CLASSES)
    # cat: 3 images, predicted 4 times (2 cats, 1 dog, 1 fox), 2 right.
    assert (cat.support, cat.predicted, cat.correct) == (3, 4, 2)
    assert (cat.precision, cat.recall, cat.f1) == (0.5, pytest.approx(2 / 3), pytest.approx(4 / 7))
    # dog: 3 images, predicted twice, 1 right: precision 1/2, recall 1/3, F1 2·1/(3+2).
    assert (dog.precision, dog.recall, dog.f1) == (0.5, pytest.approx(1 / 3), pytest.approx(0.4))


def test_a_class_never_predicted_has_no_precision():
    fox = _scores()["fox"]
    assert (fox.support, fox.predicted, fox.correct) == (1, 0, 0)
    assert fox.precision is None  # undefined, not 0: the model never said "fox"
    assert fox.recall == 0.0 and fox.f1 == 0.0  # its one image was missed


def test_a_class_with_no_image_has_no_recall_and_no_f1():
    owl = _scores()["owl"]
    assert (owl.support, owl.predicted, owl.correct) == (0, 1, 0)
    assert owl.precision == 0.0 and owl.recall is None and owl.f1 is None


def test_perfect_predictions():
    truth = ["a", "b", "b", "c"]
    counts = confusion_counts(truth, truth)
    assert accuracy(counts) == 1.0
    for s in class_scores(counts, ["a", "b", "c"]):
        assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)
    assert confusion_matrix(counts, ["a", "b", "c"], ["a", "b", "c"]) == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    metrics = compute_metrics(truth, np.eye(3)[[0, 1, 1, 2]], ("a", "b", "c"))
    assert metrics["micro_accuracy"] == 1.0 and metrics["macro_accuracy"] == 1.0 and metrics["log_loss"] == 0.0


def test_all_wrong():
    counts = confusion_counts(["a", "a", "b"], ["b", "b", "a"])
    assert accuracy(counts) == 0.0
    a, b = class_scores(counts, ["a", "b"])
    assert (a.precision, a.recall, a.f1) == (0.0, 0.0, 0.0)
    assert (b.precision, b.recall, b.f1) == (0.0, 0.0, 0.0)
    assert macro_average(s.recall for s in (a, b)) == 0.0


def test_accuracy_and_macro_average_of_nothing_are_undefined():
    assert accuracy(confusion_counts([], [])) is None
    assert macro_average([None, None]) is None
    assert macro_average([0.5, None, 1.0]) == 0.75  # an undefined value is left out, not counted as 0


def test_log_loss_on_known_probabilities():
    probabilities = np.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]])
    targets = np.array([0, 1, 1])
    assert log_losses(probabilities, targets) == pytest.approx([math.log(2), math.log(4 / 3), math.log(10)])
    assert log_loss(probabilities, targets) == pytest.approx((math.log(2) + math.log(4 / 3) + math.log(10)) / 3)
    # A zero probability of the truth is clipped: it costs ln 10^15, not infinity.
    assert EPSILON == 1e-15
    assert log_loss(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(15 * math.log(10))


def test_compute_metrics_json_says_null_for_undefined():
    probabilities = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    metrics = json.loads(json.dumps(compute_metrics(["a", "c", "b"], probabilities, ("a", "b", "c"))))
    assert metrics["per_class"]["c"] == {
        "support": 1,
        "precision": None,
        "recall": 0.0,
        "f1": 0.0,
        "log_loss": pytest.approx(math.log(10)),
    }
    assert metrics["per_class"]["a"]["precision"] == 0.5
    assert metrics["macro_accuracy"] == pytest.approx(2 / 3)
    assert metrics["confusion"] == {"labels": ["a", "b", "c"], "matrix": [[1, 0, 0], [0, 1, 0], [1, 0, 0]]}


def _truth_result(classes: list[ClassScores], accuracy_value: float | None) -> TruthResult:
    return TruthResult(
        matched=sum(c.support for c in classes),
        unmatched_truth=[],
        unlabelled_rows=0,
        accuracy=accuracy_value,
        classes=classes,
        matrix_rows=[c.label for c in classes],
        matrix_columns=[c.label for c in classes],
        matrix=[[0] * len(classes) for _ in classes],
        aliased={},
    )


def test_the_report_shows_an_undefined_precision_as_a_dash_and_null():
    result = _truth_result([ClassScores("cat", 2, 3, 2), ClassScores("fox", 1, 0, 0)], 2 / 3)
    document = result.to_json()
    fox = next(c for c in document["classes"] if c["label"] == "fox")
    assert (fox["precision"], fox["recall"], fox["f1"]) == (None, 0.0, 0.0)
    assert document["macro_f1"] == pytest.approx((0.8 + 0.0) / 2)
    html = truth_section(result, pairs=30)
    assert '<td>fox</td><td class="n">1</td><td class="n">0</td><td class="n">—</td><td class="n">0.000</td>' in html
    assert '<td class="n">0.667</td><td class="n">1.000</td><td class="n">0.800</td>' in html


def test_the_report_with_no_labelled_image_found_has_no_accuracy():
    result = _truth_result([], None)
    assert result.to_json()["accuracy"] is None and result.to_json()["macro_f1"] is None
    assert "<b>—</b><span>accuracy</span>" in truth_section(result, pairs=30)
