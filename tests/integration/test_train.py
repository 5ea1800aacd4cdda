"""``batchclf train``: the ML.NET tutorial reproduced, flowers, the model folder with ``run``, caching, fine-tuning."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from batchclf.training.dataset import read_dataset, stratified_split
from batchclf.training.evaluate import EvaluateConfig, evaluate
from batchclf.training.features import ExtractionConfig, extract_features
from batchclf.training.logistic import choose_l2, fit_logistic
from batchclf.training.train import FineTuneSettings, TrainConfig, train

pytestmark = pytest.mark.slow

# The tests of the tutorial model share it: one pytest-xdist worker trains it once for them; the others
# may run on any worker, each with its own single-worker cluster.
FOOD_MODEL = pytest.mark.xdist_group("test_train-food")


@pytest.fixture(scope="module")
def scheduler():
    """One single-worker cluster for the module: every job attaches to it instead of starting its own."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster):
            yield cluster.scheduler_address


@pytest.fixture(scope="module")
def food(datasets) -> Path:
    return datasets / "food_toy_appliance"


@pytest.fixture(scope="module")
def food_model(food, scheduler, tmp_path_factory) -> tuple[Path, str]:
    """The tutorial: train on tags.tsv, test on test-tags.tsv; trained once for the module."""
    model_dir = tmp_path_factory.mktemp("food") / "model"
    result = run_cli(
        "train",
        str(food / "tags.tsv"),
        str(model_dir),
        "--test",
        str(food / "test-tags.tsv"),
        "--scheduler",
        scheduler,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    return model_dir, result.stdout


@pytest.fixture(scope="module")
def food_report(food, food_model, scheduler) -> dict:
    return evaluate(
        EvaluateConfig(food / "test-tags.tsv", str(food_model[0]), scheduler=scheduler, progress=False),
        log=lambda *a, **k: None,
    )


def _quiet(*args, **kwargs):
    pass


@FOOD_MODEL
def test_the_tutorial_is_reproduced(food_model, food_report):
    model_dir, stdout = food_model
    predictions = {p["path"]: p["predicted"] for p in food_report["predictions"]}
    assert predictions == {"broccoli2.jpg": "food", "pizza3.jpg": "food", "teddy6.jpg": "toy"}
    print(f"test log-loss {food_report['log_loss']:.4f} (the ML.NET tutorial: 0.065)")
    assert food_report["log_loss"] <= 0.15
    assert food_report["micro_accuracy"] == 1.0 and food_report["images"] == 3
    metadata = json.loads((model_dir / "metadata.json").read_text())
    # Training scored the test images with the fitted head on cached features; evaluate ran the saved
    # model through the run job. The two must agree, or the exported head is not the fitted one.
    assert metadata["metrics"]["test"]["log_loss"] == pytest.approx(food_report["log_loss"], rel=0.05, abs=1e-4)
    assert "test: 3 images, micro accuracy 1.0000" in stdout


@FOOD_MODEL
def test_model_folder_contents(food_model):
    model_dir, _ = food_model
    assert (model_dir / "labels.txt").read_text().split("\n") == ["appliance", "food", "toy", ""]
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["classes"] == ["appliance", "food", "toy"]
    assert (metadata["image_size"], metadata["crop_fraction"], metadata["feature_layer"]) == (224, 0.875, "avg_pool")
    assert metadata["featurizer"].startswith("efficientnet-lite0:avg_pool:224px")
    assert metadata["method"] == "logistic-regression"
    assert metadata["hyperparameters"]["converged"] is True and metadata["hyperparameters"]["l2"] > 0
    assert metadata["hyperparameters"]["l2_chosen_by"] == "2-fold cross-validation"  # appliance has two images
    assert metadata["data"]["train"]["per_class"] == {"appliance": 2, "food": 3, "toy": 3}
    assert len(metadata["data"]["train"]["fingerprint"]) == 24
    assert metadata["data"]["train"]["fingerprint"] != metadata["data"]["test"]["fingerprint"]


@FOOD_MODEL
def test_saved_model_loads_in_safe_mode_and_agrees_with_evaluate(food, food_model, food_report):
    import keras

    from batchclf.training.finetune import decode_all

    model = keras.saving.load_model(food_model[0] / "model.keras", safe_mode=True, compile=False)
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)
    assert tuple(model.get_layer("avg_pool").output.shape) == (None, 1280)
    assert tuple(model.outputs[0].shape) == (None, 3)
    test = read_dataset(food / "test-tags.tsv")
    pixels, errors = decode_all(list(test.paths), 224)
    probabilities = model.predict(pixels.astype(np.float32), verbose=0)
    assert not errors
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    classes = ["appliance", "food", "toy"]
    assert [classes[i] for i in probabilities.argmax(axis=1)] == [p["predicted"] for p in food_report["predictions"]]


@FOOD_MODEL
def test_run_with_the_trained_model(food, food_model, food_report, scheduler, tmp_path):
    """``run --model MODEL_DIR`` needs no other option, classifies an image in neither file, and agrees with
    ``evaluate``; its embeddings are the featurizer's pooled features. It reuses the LiteRT file that
    ``evaluate`` (without embeddings) converted: one conversion per model."""
    output = tmp_path / "food.parquet"
    result = run_cli(
        "run",
        str(food),
        str(output),
        "--model",
        str(food_model[0]),
        "--embeddings",
        "--scheduler",
        scheduler,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "converting" not in result.stderr, result.stderr
    table = pq.read_table(output).to_pydict()
    labels = dict(zip(table["path"], table["label"]))
    assert len(labels) == 12 and set(table["status"]) == {"ok"}
    assert labels["toaster3.jpg"] == "appliance"
    for prediction in food_report["predictions"]:
        assert labels[prediction["path"]] == prediction["predicted"]
    assert all(len(e) == 1280 for e in table["embedding"])
    paths = [str(food / p) for p in table["path"]]
    cached = extract_features(paths, ExtractionConfig(scheduler=scheduler, progress=False), log=_quiet)
    np.testing.assert_allclose(np.array(table["embedding"]), cached.vectors, atol=1e-3)


def test_feature_cache_is_keyed_by_content(food, scheduler, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHCLF_CACHE", str(tmp_path / "cache"))
    shutil.copy(food / "pizza.jpg", tmp_path / "renamed pizza.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    paths = [
        str(food / "pizza.jpg"),
        str(food / "teddy2.jpg"),
        str(tmp_path / "renamed pizza.jpg"),
        str(tmp_path / "broken.jpg"),
    ]
    config = ExtractionConfig(scheduler=scheduler, progress=False)
    first = extract_features(paths, config, log=_quiet)
    assert first.decoded == 3  # the renamed copy has the same content as pizza.jpg
    assert first.paths == paths[:3] and first.vectors.shape == (3, 1280)
    assert list(first.errors) == [str(tmp_path / "broken.jpg")]
    np.testing.assert_array_equal(first.vectors[0], first.vectors[2])
    second = extract_features(paths, config, log=_quiet)
    assert second.decoded == 1  # only the unreadable file is tried again
    np.testing.assert_array_equal(first.vectors, second.vectors)


def test_training_is_deterministic_and_skips_unreadable_images(food, scheduler, tmp_path):
    import keras

    data = tmp_path / "data"
    shutil.copytree(food, data, ignore=shutil.ignore_patterns("test-tags.tsv"))
    (data / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with open(data / "tags.tsv", "a") as tsv:
        tsv.write("broken.jpg\ttoy\n")
    messages = []
    weights = []
    for run in ("a", "b"):
        config = TrainConfig(
            data / "tags.tsv",
            tmp_path / run,
            test_fraction=0,
            seed=7,
            verbose=True,
            extraction=ExtractionConfig(scheduler=scheduler, progress=False),
        )
        result = train(config, log=lambda *args, **kwargs: messages.append(" ".join(map(str, args))))
        assert list(result.unreadable) == [str(data / "broken.jpg")]
        assert result.metadata["data"]["unreadable"] == 1 and result.metadata["data"]["train"]["images"] == 8
        model = keras.saving.load_model(tmp_path / run / "model.keras", safe_mode=True, compile=False)
        weights.append(model.get_layer("predictions").get_weights())
    assert "skipped 1 unreadable images" in messages
    assert any("broken.jpg" in m for m in messages)
    for first, second in zip(*weights):
        np.testing.assert_array_equal(first, second)


@FOOD_MODEL
def test_an_image_of_another_extension_is_scored_or_skipped_by_its_content(
    food, food_model, scheduler, tmp_path, monkeypatch
):
    """A JPEG named ``.jfif`` is trained on and evaluated; an unreadable ``.jfif`` is skipped and named with
    its tags.tsv line. Uncached features, so the scoring job itself reads them. Evaluated with the tutorial's
    model (same classes), already converted for LiteRT."""
    from PIL import Image

    monkeypatch.setenv("BATCHCLF_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(food, data, ignore=shutil.ignore_patterns("test-tags.tsv"))
    Image.open(food / "pizza.jpg").save(data / "pizza4.jfif", "JPEG", quality=80)
    (data / "notes.jfif").write_bytes(b"not an image")
    with open(data / "tags.tsv", "a") as tsv:
        tsv.write("pizza4.jfif\tfood\nnotes.jfif\ttoy\n")
    messages = []
    config = TrainConfig(
        data / "tags.tsv",
        tmp_path / "model",
        test_fraction=0,
        verbose=True,
        extraction=ExtractionConfig(scheduler=scheduler, progress=False),
    )
    result = train(config, log=lambda *args, **kwargs: messages.append(" ".join(map(str, args))))
    assert list(result.unreadable) == [str(data / "notes.jfif")]
    assert result.metadata["data"]["train"]["images"] == 9
    reason = result.unreadable[str(data / "notes.jfif")]
    assert f"  {data / 'notes.jfif'} ({data / 'tags.tsv'} line 10): {reason}" in messages
    assert not any("images.txt" in m for m in messages)
    report = evaluate(
        EvaluateConfig(data / "tags.tsv", str(food_model[0]), scheduler=scheduler, progress=False), log=_quiet
    )
    assert report["images"] == 9 and list(report["unreadable"]) == ["notes.jfif"]
    assert {p["path"]: p["predicted"] for p in report["predictions"]}["pizza4.jfif"] == "food"


@FOOD_MODEL
def test_special_files_among_the_images_are_skipped_and_named(food, food_model, scheduler, tmp_path):
    """A FIFO and a link to /dev/zero named .jpg in class folders: train and evaluate skip and count them,
    name them with what they are, and never wait on them. Evaluated with the tutorial's model (its classes
    include both folders'), already converted for LiteRT."""
    from batchclf.training.evaluate import format_report

    data = tmp_path / "classes"  # four food and four toy images, a folder each
    for tags in ("tags.tsv", "test-tags.tsv"):
        labelled = read_dataset(food / tags)
        for path, label in zip(labelled.paths, labelled.labels):
            folder = data / label
            if label in ("food", "toy") and len(list(folder.glob("*"))) < 4:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, folder / Path(path).name)
    os.mkfifo(data / "food" / "pipe.jpg")
    os.symlink("/dev/zero", data / "toy" / "zero.jpg")
    unreadable = {
        "food/pipe.jpg": "not a regular file: a FIFO (named pipe)",
        "toy/zero.jpg": "not a regular file: a character device",
    }
    messages = []
    config = TrainConfig(
        data,
        tmp_path / "model",
        test_fraction=0,
        verbose=True,
        extraction=ExtractionConfig(scheduler=scheduler, progress=False),
    )
    result = train(config, log=lambda *args, **kwargs: messages.append(" ".join(map(str, args))))
    assert result.unreadable == {str(data / name): reason for name, reason in unreadable.items()}
    assert result.metadata["data"]["unreadable"] == 2 and result.metadata["data"]["train"]["images"] == 8
    assert "skipped 2 unreadable images" in messages
    assert all(f"  {data / name}: {reason}" in messages for name, reason in unreadable.items())
    report = evaluate(EvaluateConfig(data, str(food_model[0]), scheduler=scheduler, progress=False), log=_quiet)
    assert report["images"] == 8 and report["unreadable"] == unreadable
    text = format_report(report, verbose=True)
    assert all(f"unreadable {name}: {reason}" in text for name, reason in unreadable.items())


@pytest.fixture(scope="module")
def flowers(datasets, scheduler):
    """Pooled features of the 200 flowers, extracted once (and cached on disk for later runs)."""
    data = read_dataset(datasets / "flowers_small")
    features = extract_features(list(data.paths), ExtractionConfig(scheduler=scheduler, progress=False), log=_quiet)
    assert not features.errors
    return data, features


def test_flowers_stratified_80_20_five_seeds(flowers):
    data, features = flowers
    row = {path: i for i, path in enumerate(features.paths)}
    classes = data.classes
    accuracies = []
    for seed in range(5):
        train_set, test_set = stratified_split(data, 0.2, seed)
        assert len(train_set) == 160 and len(test_set) == 40
        x = features.vectors[[row[p] for p in train_set.paths]]
        y = np.array([classes.index(label) for label in train_set.labels])
        model, _ = fit_logistic(x, y, len(classes), choose_l2(x, y, len(classes), seed).l2)
        predicted = model.probabilities(features.vectors[[row[p] for p in test_set.paths]]).argmax(axis=1)
        accuracies.append(float(np.mean(predicted == np.array([classes.index(lab) for lab in test_set.labels]))))
    print("flowers test accuracy per seed:", accuracies, "mean", np.mean(accuracies))
    assert np.mean(accuracies) >= 0.87


def test_fine_tuning_writes_a_working_model(food, scheduler, tmp_path):
    import keras

    messages = []
    settings = FineTuneSettings(unfreeze=1, epochs=2, batch_size=4, validation_fraction=0.3)
    config = TrainConfig(
        food / "tags.tsv",
        tmp_path / "tuned",
        test=food / "test-tags.tsv",
        fine_tune=settings,
        extraction=ExtractionConfig(scheduler=scheduler, progress=False),
    )
    result = train(config, log=lambda *args, **kwargs: messages.append(" ".join(map(str, args))))
    epochs = [m for m in messages if m.startswith("epoch ")]
    assert 1 <= len(epochs) <= 2 and "train loss" in epochs[0] and "validation loss" in epochs[0]
    metadata = result.metadata
    assert metadata["method"] == "fine-tune" and metadata["hyperparameters"]["unfreeze"] == 1
    assert len(metadata["hyperparameters"]["history"]) == len(epochs)
    assert metadata["metrics"]["test"]["micro_accuracy"] == 1.0
    model = keras.saving.load_model(tmp_path / "tuned" / "model.keras", safe_mode=True, compile=False)
    assert model.get_layer("avg_pool") is not None and tuple(model.outputs[0].shape) == (None, 3)


def test_two_featurizers_concatenated_then_run(food, scheduler, tmp_path):
    """``--featurizer lite0,lite2``: one model folder whose metadata names both networks, features cached per
    network, and ``run --model`` classifies with the one saved model (2560 concatenated features)."""
    import keras

    from batchclf.fsutil import sha256_file as file_digest
    from batchclf.training.features import _cache_folder, featurizer_id

    model_dir = tmp_path / "two"
    featurizers = ("efficientnet-lite0", "efficientnet-lite2")
    result = run_cli(
        "train",
        str(food / "tags.tsv"),
        str(model_dir),
        "--test",
        str(food / "test-tags.tsv"),
        "--featurizer",
        ",".join(featurizers),
        "--scheduler",
        scheduler,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["featurizers"] == list(featurizers)
    assert metadata["featurizer"].startswith("efficientnet-lite0:avg_pool:224px")
    assert "+efficientnet-lite2:avg_pool:260px" in metadata["featurizer"]
    assert (metadata["image_size"], metadata["feature_size"], metadata["feature_layer"]) == (260, 2560, "features")
    assert metadata["metrics"]["test"]["micro_accuracy"] == 1.0
    for name in featurizers:
        folder = _cache_folder(featurizer_id(ExtractionConfig(model=name)))
        assert (folder / f"{file_digest(str(food / 'pizza3.jpg'))}.npy").is_file()

    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True, compile=False)
    assert len(model.inputs) == 1 and tuple(model.inputs[0].shape) == (None, 260, 260, 3)
    assert {layer.name for layer in model.layers} >= {"efficientnet_lite0", "efficientnet_lite2", "features"}

    output = tmp_path / "two.parquet"
    result = run_cli(
        "run",
        str(food),
        str(output),
        "--model",
        str(model_dir),
        "--embeddings",
        "--scheduler",
        scheduler,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(output).to_pydict()
    labels = dict(zip(table["path"], table["label"]))
    assert len(labels) == 12 and set(table["status"]) == {"ok"}
    assert {path: labels[path] for path in ("broccoli2.jpg", "pizza3.jpg", "teddy6.jpg")} == {
        "broccoli2.jpg": "food",
        "pizza3.jpg": "food",
        "teddy6.jpg": "toy",
    }
    assert labels["toaster3.jpg"] == "appliance"
    assert all(len(e) == 2560 for e in table["embedding"])
