"""Reading labelled images (TSV or class folders), refusing bad input, and the stratified split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, save_image

from batchclf.errors import UsageError
from batchclf.training.dataset import (
    LabelledImages,
    check_known_labels,
    check_trainable,
    data_fingerprint,
    read_dataset,
    stratified_folds,
    stratified_split,
)


def _images(folder: Path, *names: str) -> None:
    for i, name in enumerate(names):
        save_image(folder / name, color=(20 * i, 100, 200))


def _tsv(folder: Path, text: str, name: str = "tags.tsv") -> Path:
    path = folder / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_tsv_tolerates_trailing_whitespace_blank_lines_crlf_and_bom(tmp_path):
    _images(tmp_path, "a.jpg", "b.jpg", "sub/c.png", "d.jpg")
    tsv = _tsv(tmp_path, "\ufeffa.jpg\tcat \t \r\n\r\n  \t \r\nb.jpg\tcat\t\r\nsub/c.png\tdog   \r\nd.jpg\tdog")
    data = read_dataset(tsv)
    assert [Path(p).name for p in data.paths] == ["a.jpg", "b.jpg", "c.png", "d.jpg"]
    assert data.labels == ("cat", "cat", "dog", "dog")
    assert data.classes == ("cat", "dog")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in data.paths)
    assert data.lines[2] == f"{tsv} line 5"


def test_the_tutorial_test_set_with_its_trailing_whitespace(datasets):
    data = read_dataset(datasets / "food_toy_appliance" / "test-tags.tsv")
    assert [Path(p).name for p in data.paths] == ["broccoli2.jpg", "pizza3.jpg", "teddy6.jpg"]
    assert data.labels == ("food", "food", "toy")


def test_images_option_sets_the_folder_paths_are_relative_to(tmp_path):
    _images(tmp_path / "pictures", "a.jpg", "b.jpg")
    (tmp_path / "labels").mkdir()
    tsv = _tsv(tmp_path / "labels", "a.jpg\tx\nb.jpg\ty\n")
    with pytest.raises(UsageError, match="--images"):
        read_dataset(tsv)
    data = read_dataset(tsv, images=tmp_path / "pictures")
    assert [Path(p).parent for p in data.paths] == [(tmp_path / "pictures").resolve()] * 2


def test_class_folders(datasets):
    data = read_dataset(datasets / "flowers_small")
    assert data.classes == ("daisy", "dandelion", "roses", "sunflowers", "tulips")
    assert Counter(data.labels) == {label: 40 for label in data.classes}
    assert all(Path(p).parent.name == label for p, label in zip(data.paths, data.labels))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a.jpg\tcat\nb.jpg cat\n", r"tags\.tsv line 2: expected 'image_path<TAB>label'"),
        # a line splits at its last tab: "b.jpg<TAB>cat" is read as the path, and is not found
        ("a.jpg\tcat\nb.jpg\tcat\textra\n", r"tags\.tsv line 2: image 'b\.jpg\\tcat' not found .*last tab"),
        ("a.jpg\tcat\n\tcat\n", r"tags\.tsv line 2: expected"),
        ("a.jpg\tcat\nb.jpg\tcat\nmissing.jpg\tdog\nb.jpg\tdog\n", r"tags\.tsv line 3: image missing\.jpg not found"),
        ("a.jpg\tcat\nb.jpg\tcat\na.jpg\tdog\n", r"tags\.tsv line 3: a\.jpg is labelled 'dog' here but 'cat'"),
        ("\n\n", r"lists no images"),
    ],
)
def test_structural_problems_name_the_file_and_line(tmp_path, text, expected):
    _images(tmp_path, "a.jpg", "b.jpg")
    with pytest.raises(UsageError, match=expected):
        read_dataset(_tsv(tmp_path, text))


def test_missing_tsv_and_empty_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        read_dataset(tmp_path / "nope.tsv")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(UsageError, match="no class folders with images"):
        read_dataset(tmp_path)


def test_a_label_with_a_single_image_and_a_single_class_are_refused(tmp_path):
    _images(tmp_path, "a.jpg", "b.jpg", "c.jpg", "d.jpg")
    data = read_dataset(_tsv(tmp_path, "a.jpg\tcat\nb.jpg\tcat\nc.jpg\tdog\n"))
    with pytest.raises(UsageError, match=r"tags\.tsv line 3: label 'dog' has a single image"):
        check_trainable(data)
    data = read_dataset(_tsv(tmp_path, "a.jpg\tcat\nb.jpg\tcat\n"))
    with pytest.raises(UsageError, match=r"has only the class 'cat'; a classifier needs at least two classes"):
        check_trainable(data)
    check_trainable(read_dataset(_tsv(tmp_path, "a.jpg\tcat\nb.jpg\tcat\nc.jpg\tdog\nd.jpg\tdog\na.jpg\tcat\n")))


def test_test_labels_must_be_trained_classes(tmp_path):
    _images(tmp_path, "a.jpg")
    test = read_dataset(_tsv(tmp_path, "a.jpg\tbird\n"))
    with pytest.raises(UsageError, match=r"line 1: label 'bird' is not one of the trained classes \(cat, dog\)"):
        check_known_labels(test, ("cat", "dog"))


def _synthetic(counts: dict[str, int]) -> LabelledImages:
    labels = tuple(label for label, count in counts.items() for _ in range(count))
    paths = tuple(f"/data/{label}/{i}.jpg" for i, label in enumerate(labels))
    return LabelledImages(Path("/data"), paths, labels, paths)


def test_stratified_split_keeps_class_proportions_and_is_reproducible():
    data = _synthetic({"a": 40, "b": 40, "c": 20, "d": 2})
    train, test = stratified_split(data, 0.2, seed=3)
    assert Counter(test.labels) == {"a": 8, "b": 8, "c": 4}  # d: round(0.4) = 0, and it keeps a training image
    assert Counter(train.labels) == {"a": 32, "b": 32, "c": 16, "d": 2}
    assert set(train.paths).isdisjoint(test.paths) and len(train) + len(test) == len(data)
    again_train, again_test = stratified_split(data, 0.2, seed=3)
    assert again_test.paths == test.paths and again_train.paths == train.paths
    assert stratified_split(data, 0.2, seed=4)[1].paths != test.paths


def test_a_class_of_two_always_keeps_one_training_image():
    train, test = stratified_split(_synthetic({"a": 2, "b": 2}), 0.9, seed=0)
    assert Counter(train.labels) == {"a": 1, "b": 1} and Counter(test.labels) == {"a": 1, "b": 1}


def test_stratified_folds_deal_every_class_to_every_fold():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3)
    folds = stratified_folds(labels, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(labels)))
    for fold in folds:
        assert set(labels[fold]) == {0, 1, 2}
    assert [f.tolist() for f in folds] == [f.tolist() for f in stratified_folds(labels, 3, seed=0)]


def test_data_fingerprint_depends_on_content_and_labels_not_order():
    first = data_fingerprint(["h1", "h2"], ["cat", "dog"])
    assert first == data_fingerprint(["h2", "h1"], ["dog", "cat"])
    assert first != data_fingerprint(["h1", "h2"], ["dog", "cat"])


def test_cli_stops_on_a_malformed_line_before_any_work(tmp_path):
    _images(tmp_path, "a.jpg", "b.jpg")
    tsv = _tsv(tmp_path, "a.jpg\tcat\nb.jpg;dog\n")
    result = run_cli("train", str(tsv), str(tmp_path / "model"), "--no-progress", timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"batchclf: error: {tsv} line 2: expected 'image_path<TAB>label'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists()
    result = run_cli("train", str(tsv), str(tmp_path / "model"), "--test", str(tsv), "--test-fraction", "0.3")
    assert result.returncode == 2 and "give --test or --test-fraction, not both" in result.stderr
