"""The parts of one-image prediction that need no model: option checks, the result type, the printed lines,
and the command's refusals before any model is read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from batchclf.classifier import Category, Classifier, Prediction, check_options
from batchclf.cli import build_parser
from batchclf.cli.predict import format_prediction
from batchclf.errors import UsageError

PREDICTION = Prediction((Category("pizza", 0.93), Category("pot pie", 0.005)), "food/pizza.jpg")


@pytest.mark.parametrize(
    "top_k, backend, threads, message",
    [
        (0, "auto", None, "top_k must be a positive whole number, got 0"),
        (True, "auto", None, "top_k must be a positive whole number, got True"),
        ("5", "auto", None, "top_k must be a positive whole number, got '5'"),
        (5, "gpu", None, "backend must be one of auto, tf, litert, got 'gpu'"),
        (5, "auto", 0, "threads must be a positive whole number, got 0"),
    ],
)
def test_bad_options_name_the_argument(top_k, backend, threads, message):
    with pytest.raises(UsageError, match=f"^{message}$"):
        check_options(top_k, backend, threads)
    with pytest.raises(UsageError, match=f"^{message}$"):
        Classifier(top_k=top_k, backend=backend, threads=threads)


def test_a_classifier_checks_its_model_when_made_and_builds_it_later():
    with pytest.raises(UsageError, match="unknown model 'no-such-model'"):
        Classifier("no-such-model")
    classifier = Classifier(top_k=3, threads=1)
    assert len(classifier.labels) == 1000 and classifier.labels[963] == "pizza"
    assert classifier._scorer is None  # nothing built until the first predict


def test_prediction_is_its_best_class_and_serialises_like_the_topk_column():
    assert (PREDICTION.label, PREDICTION.score) == ("pizza", 0.93)
    assert json.loads(json.dumps(PREDICTION.to_dict())) == {
        "image": "food/pizza.jpg",
        "label": "pizza",
        "score": 0.93,
        "topk": [{"label": "pizza", "score": 0.93}, {"label": "pot pie", "score": 0.005}],
    }


def test_printed_lines_are_aligned_best_first():
    assert format_prediction(PREDICTION, heading=False).splitlines() == ["pizza    0.9300", "pot pie  0.0050"]
    assert format_prediction(PREDICTION, heading=True).splitlines() == [
        "food/pizza.jpg:",
        "  pizza    0.9300",
        "  pot pie  0.0050",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "MISSING"], "image not found: "),
        (["predict", "FOLDER"], "is a folder: give image files"),
        (["predict", "IMAGE", "--top-k", "0"], "--top-k must be a positive number, got 0"),
    ],
)
def test_predict_refuses_before_reading_any_model(argv, message, tmp_path, monkeypatch):
    import batchclf.classifier

    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    places = {"MISSING": str(tmp_path / "missing.jpg"), "FOLDER": str(tmp_path), "IMAGE": str(image)}
    monkeypatch.setattr(batchclf.classifier, "Classifier", None)  # reaching it would fail the test differently
    args = build_parser().parse_args([places.get(a, a) for a in argv])
    with pytest.raises(UsageError, match=message):
        args.handler(args)


def test_a_batch_is_a_list_a_tuple_or_a_four_dimensional_array():
    from batchclf.classifier import _is_batch

    assert _is_batch([]) and _is_batch(("a.jpg",)) and _is_batch(np.zeros((2, 8, 8, 3), np.uint8))
    assert not _is_batch("a.jpg") and not _is_batch(np.zeros((8, 8, 3), np.uint8)) and not _is_batch(b"")
