"""`batchclf predict` and `batchclf.Classifier` end to end: one image at a time, the same answer as `run`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from PIL import Image

import batchclf
from batchclf.worker import model_build_count

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
SCORE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def classifier():
    return batchclf.Classifier()


@pytest.fixture(scope="module")
def tree(tmp_path_factory, datasets):
    """Every shared test image (the folder linked in), and three files `run` records as error rows."""
    root = tmp_path_factory.mktemp("predict-tree")
    (root / "data").symlink_to(datasets, target_is_directory=True)
    broken = root / "broken"
    broken.mkdir()
    good = (datasets / "imagenet_objects" / "canoe3.jpg").read_bytes()
    (broken / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "notes.jpg").write_text("this is text, not a picture\n")
    return root


@pytest.fixture(scope="module")
def run_rows(tree, tmp_path_factory):
    """`batchclf run` over the tree, once: path → row."""
    output = tmp_path_factory.mktemp("predict-run") / "predictions.parquet"
    result = run_cli("run", str(tree), str(output), "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(output).to_pylist()
    assert sum(row["status"] == "ok" for row in rows) > 200  # every shared image, not a handful
    return {row["path"]: row for row in rows}


def test_classifier_agrees_with_run_on_every_test_image(classifier, tree, run_rows):
    ok = sorted(path for path, row in run_rows.items() if row["status"] == "ok")
    predictions = classifier.predict([tree / path for path in ok])
    assert len(predictions) == len(ok)
    for path, prediction in zip(ok, predictions):
        row = run_rows[path]
        assert prediction.image == str(tree / path)
        assert prediction.label == row["label"], path
        assert [c.label for c in prediction.categories] == [t["label"] for t in row["topk"]], path
        assert np.allclose([c.score for c in prediction.categories], [t["score"] for t in row["topk"]], atol=1e-5)
        assert prediction.score == pytest.approx(row["score"], abs=SCORE_TOLERANCE)


def test_undecodable_files_raise_the_reason_run_records(classifier, tree, run_rows):
    errors = {path: row["error"] for path, row in run_rows.items() if row["status"] == "error"}
    assert sorted(errors) == ["broken/empty.jpg", "broken/notes.jpg", "broken/truncated.jpg"]
    for path, reason in errors.items():
        with pytest.raises(batchclf.ImageDecodeError) as raised:
            classifier.predict(tree / path)
        assert str(raised.value) == reason
        assert raised.value.image == str(tree / path)
        with pytest.raises(batchclf.ImageDecodeError, match=f"^{re.escape(reason)}$"):  # the same from the file's bytes
            classifier.predict((tree / path).read_bytes())


def test_every_input_type_gives_the_same_answer(classifier):
    path = EXAMPLES / "pizza.jpg"  # 640×404: decoded in full, so every route sees the same pixels
    pixels = np.asarray(Image.open(path).convert("RGB"))
    expected = classifier.predict(str(path))
    assert expected.label == "pizza"
    answers = {
        "Path": classifier.predict(path),
        "list": classifier.predict([str(path)])[0],
        "PIL": classifier.predict(Image.open(path)),
        "bytes": classifier.predict(path.read_bytes()),
        "numpy": classifier.predict(pixels),
        "numpy batch": classifier.predict(np.stack([pixels, pixels]))[1],
    }
    for kind, answer in answers.items():
        assert [c.label for c in answer.categories] == [c.label for c in expected.categories], kind
        assert np.allclose([c.score for c in answer.categories], [c.score for c in expected.categories], atol=1e-5)
    assert answers["Path"].image == str(path) and answers["bytes"].image is None


def test_a_large_jpeg_in_memory_scores_close_to_its_file(classifier, datasets):
    """A path (or its bytes) is reduced in the DCT domain as `run` reduces it; a PIL image is decoded in full."""
    path = datasets / "imagenet_objects" / "broccoli.jpg"  # 800×600: drafted to 400×300 from the file
    from_file = classifier.predict(path)
    in_memory = classifier.predict(Image.open(path))
    assert from_file.label == in_memory.label == "broccoli"
    assert in_memory.score == pytest.approx(from_file.score, abs=0.01)
    assert in_memory.score != from_file.score  # two decodes, not one
    assert classifier.predict(path.read_bytes()).score == pytest.approx(from_file.score, abs=SCORE_TOLERANCE)


def test_the_model_is_built_once(classifier):
    classifier.predict(EXAMPLES / "pizza.jpg")
    built = model_build_count()
    for name in ("broccoli.jpg", "canoe3.jpg", "toaster2.png"):
        classifier.predict(EXAMPLES / name)
    classifier.predict([EXAMPLES / "teddy1.jpg", EXAMPLES / "coffeepot.jpg"])
    assert model_build_count() == built


def test_bad_inputs_raise_clear_errors(classifier, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image file"):
        classifier.predict(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match=r"H×W×3 uint8.*shape \(32, 32\)"):
        classifier.predict(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="dtype float32"):
        classifier.predict(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(TypeError, match="cannot classify a int"):
        classifier.predict(3)
    with pytest.raises(TypeError, match="cannot classify a NoneType"):
        classifier.predict([EXAMPLES / "pizza.jpg", None])
    (tmp_path / "bad.jpg").write_text("not a picture")
    with pytest.raises(batchclf.ImageDecodeError) as raised:
        classifier.predict([EXAMPLES / "pizza.jpg", tmp_path / "bad.jpg"])
    assert raised.value.image == str(tmp_path / "bad.jpg")


def test_cli_prints_pizza_first():
    result = run_cli("predict", str(EXAMPLES / "pizza.jpg"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "pizza"
    assert len(lines) == 5  # the default top 5, best first
    scores = [float(line.split()[-1]) for line in lines]
    assert scores == sorted(scores, reverse=True)


def test_cli_json_lines_parse_and_a_bad_image_fails_alone(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    images = [EXAMPLES / "pizza.jpg", bad, EXAMPLES / "broccoli.jpg"]
    result = run_cli("predict", *map(str, images), "--json", "--top-k", "3")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in images]
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert records[0]["label"] == "pizza" and len(records[0]["topk"]) == 3
    assert records[2]["topk"][0] == {"label": "broccoli", "score": records[2]["score"]}
    assert records[1]["error"].startswith("not a recognised image format")

    plain = run_cli("predict", *map(str, images), "--top-k", "2")
    assert plain.returncode == 3
    assert plain.stdout.splitlines()[:2] == [f"{images[0]}:", plain.stdout.splitlines()[1]]
    assert plain.stdout.splitlines()[1].split()[0] == "pizza"
    assert f"{images[2]}:" in plain.stdout
    assert plain.stderr.strip() == f"batchclf: {bad}: {records[1]['error']}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jpg"], "image not found: missing.jpg"),
        ([".", "--top-k", "1"], "is a folder"),
        (["PIZZA", "--top-k", "0"], "--top-k must be a positive number, got 0"),
        (["PIZZA", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    ],
)
def test_cli_usage_errors_are_one_line(args, message):
    args = [str(EXAMPLES / "pizza.jpg") if a == "PIZZA" else a for a in args]
    result = run_cli("predict", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


HEAVY = ("dask", "distributed", "pyarrow", "tensorflow")


def test_one_image_loads_no_cluster_no_arrow_no_tensorflow():
    """`import batchclf` stays light; a prediction, in Python or on the command line, needs no Dask, Arrow or TF."""
    code = f"""
import sys, batchclf
print("classifier" in dir(batchclf) or "batchclf.classifier" in sys.modules)
print(batchclf.Classifier(top_k=1).predict(sys.argv[1]).label)
from batchclf.cli import main
main(["predict", sys.argv[1]])
print(*[m for m in {HEAVY!r} if m in sys.modules])
"""
    result = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "pizza.jpg")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["False", "pizza", lines[2]] and lines[2].startswith("pizza")
    assert lines[-1] == ""  # none of them
