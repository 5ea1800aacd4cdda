"""Backends: LiteRT agrees with TensorFlow, conversions are cached, int8 works, bombs are error rows."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_CACHE
from PIL import Image

from batchclf import backends, worker
from batchclf.config import RunConfig
from batchclf.decode import ImageDecodeError, Preprocessing, decode_image
from batchclf.errors import UsageError
from batchclf.models.registry import load_keras_model, resolve_model
from batchclf.shard import Shard

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private conversion cache for this module (the user's cache is never touched)."""
    folder = tmp_path_factory.mktemp("cache")
    saved = os.environ.get("BATCHCLF_CACHE")
    os.environ["BATCHCLF_CACHE"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("BATCHCLF_CACHE")
    else:
        os.environ["BATCHCLF_CACHE"] = saved


@pytest.fixture(scope="module")
def spec():
    return resolve_model()


@pytest.fixture(scope="module")
def decoded(datasets, spec):
    """Every image of the shared datasets, decoded once: both backends get the very same tensors."""
    paths = sorted(p for p in datasets.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    pixels = np.stack([decode_image(str(p), spec.preprocessing).pixels for p in paths])
    return paths, pixels


def predict_all(predict, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([predict(pixels[i : i + batch_size])[0] for i in range(0, len(pixels), batch_size)])


@pytest.fixture(scope="module")
def litert_scorer(cache, spec):
    """Built here, into this module's cache, even if an earlier test in this process built the same scorer."""
    earlier = dict(worker._SCORERS)
    worker._SCORERS.clear()
    yield worker.get_scorer(spec, worker.ScoringOptions(backend="litert", threads=2, decode_threads=1))
    worker._SCORERS.clear()
    worker._SCORERS.update(earlier)


def test_litert_and_tensorflow_agree_on_the_same_tensors(litert_scorer, spec, decoded, record_property):
    paths, pixels = decoded
    assert len(paths) > 200
    tf_backend = backends.TensorFlowBackend(load_keras_model(spec), with_features=False)
    expected = predict_all(tf_backend.predict, pixels)
    got = predict_all(litert_scorer.backend.predict, pixels)
    assert litert_scorer.backend.name == "litert"
    assert got.shape == expected.shape == (len(paths), 1000)
    disagree = [str(paths[i].name) for i in np.flatnonzero(got.argmax(1) != expected.argmax(1))]
    assert disagree == [], f"top-1 differs on {len(disagree)} images: {disagree[:5]}"
    max_difference = float(np.abs(got - expected).max())
    record_property("max_abs_probability_difference", max_difference)
    print(f"LiteRT vs TensorFlow on {len(paths)} images: top-1 identical, max |p diff| = {max_difference:.2e}")
    assert max_difference < 1e-2


def test_second_scorer_reuses_the_cached_file(litert_scorer, spec, monkeypatch):
    """A new worker process (here: a new scorer) neither builds nor writes the model again."""
    cached = sorted((backends.cache_dir() / "litert").glob("*.tflite"))
    assert len(cached) == 1
    modified = cached[0].stat().st_mtime_ns

    def forbidden(*args, **kwargs):
        raise AssertionError("the cached .tflite file should have been reused")

    monkeypatch.setattr(backends, "_converter", forbidden)
    monkeypatch.setattr(worker, "load_keras_model", forbidden)
    monkeypatch.setattr(worker, "builtin_tflite", forbidden)
    builds = worker.model_build_count()
    other = worker.get_scorer(spec, worker.ScoringOptions(backend="litert", threads=1, decode_threads=1))
    assert worker.model_build_count() == builds + 1  # a new scorer was built...
    assert other is not litert_scorer
    assert cached[0].stat().st_mtime_ns == modified  # ...from the same file
    assert sorted((backends.cache_dir() / "litert").glob("*.tflite")) == cached


def tiny_model():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4)(x)
    outputs = keras.layers.Activation("softmax")(x)
    return keras.Model(inputs, outputs)


def test_a_model_with_as_many_classes_as_features_gives_its_classes_as_scores(cache):
    """The converter lists this model's features before its probabilities; both are 6 wide."""
    import keras

    def build():
        inputs = keras.Input((8, 8, 3))
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(keras.layers.Conv2D(6, 3)(inputs))
        logits = keras.layers.Dense(6)(pooled)
        return keras.Model(inputs, [keras.layers.Activation("softmax")(logits), pooled])

    model = build()
    path = backends.convert_to_tflite(lambda: model, "six-classes-six-features")
    litert = backends.LiteRTBackend(path, 2, 1, 6, True)
    pixels = np.random.default_rng(0).random((2, 8, 8, 3), np.float32)
    probabilities, features = litert.predict(pixels)
    expected_probabilities, expected_features = (np.asarray(t) for t in model(pixels))
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-5)
    np.testing.assert_allclose(features, expected_features, atol=1e-5)


def test_conversion_runs_once_per_key(cache, monkeypatch):
    calls = []
    original = backends._converter
    monkeypatch.setattr(backends, "_converter", lambda *a: calls.append(a) or original(*a))
    first = backends.convert_to_tflite(tiny_model, "tiny-test-key")
    modified = first.stat().st_mtime_ns
    again = backends.convert_to_tflite(tiny_model, "tiny-test-key")
    assert (again, len(calls), again.stat().st_mtime_ns) == (first, 1, modified)
    other = backends.convert_to_tflite(tiny_model, "tiny-test-key-2")
    assert other != first and len(calls) == 2
    assert not list(first.parent.glob("*.tmp*"))  # written atomically


def test_conversion_key_separates_what_changes_the_file():
    plain = backends.conversion_key("m", False)
    assert plain == backends.conversion_key("m", False)
    assert (
        len(
            {
                plain,
                backends.conversion_key("m", True),
                backends.conversion_key("other", False),
                backends.conversion_key("m", False, "int8", "a"),
                backends.conversion_key("m", False, "int8", "b"),
            }
        )
        == 5
    )


def test_conversion_key_changes_with_the_builder_source(tmp_path, monkeypatch):
    """An edit to the code that builds or converts the model, unreleased or not, never reuses an old .tflite."""
    copies = []
    for source in backends.BUILDER_SOURCES:
        copy = tmp_path / source.name
        copy.write_bytes(source.read_bytes())
        copies.append(copy)
    assert {s.name for s in backends.BUILDER_SOURCES} >= {"efficientnet_lite.py", "torch_weights.py", "backends.py"}
    monkeypatch.setattr(backends, "BUILDER_SOURCES", tuple(copies))
    before = backends.conversion_key("m", False)
    assert before == backends.conversion_key("m", False)
    for copy in copies:
        original = copy.read_bytes()
        copy.write_bytes(original + b"\n# an edit\n")
        assert backends.conversion_key("m", False) != before, copy.name
        copy.write_bytes(original)
    assert backends.conversion_key("m", False) == before


def test_int8_model_takes_uint8_and_mostly_agrees_with_fp32(
    litert_scorer, spec, decoded, datasets, record_property, monkeypatch
):
    """Calibrated on the shipped calibration set; the ImageNet-class images keep most of their top-1 predictions.

    Converted into the test run's shared cache: test_int8_rows.py uses the same file, so it is made once.
    """
    paths, pixels = decoded
    monkeypatch.setenv("BATCHCLF_CACHE", TEST_CACHE)
    options = worker.ScoringOptions(backend="auto", threads=2, decode_threads=1, quantize="int8")
    quantized = worker.get_scorer(spec, options)
    assert quantized.backend.name == "litert" and quantized.backend.quantized
    assert quantized.backend.input["dtype"] == np.uint8
    objects = np.array([p.parent.name == "imagenet_objects" for p in paths])
    got = predict_all(quantized.backend.predict, pixels[objects])
    expected = predict_all(litert_scorer.backend.predict, pixels[objects])
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-4)
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    record_property("int8_top1_agreement_imagenet_objects", agreement)
    assert agreement >= 0.75, agreement
    assert quantized.backend.path != litert_scorer.backend.path  # cached apart from the fp32 file
    assert Path(quantized.backend.path).is_file() and Path(litert_scorer.backend.path).is_file()


def test_int8_softmax_outputs_are_renormalised_not_taken_for_logits():
    coarse = np.zeros((1, 1000), np.float32)
    coarse[0, :3] = [0.5, 0.3, 0.16]  # sums to 0.96, as an int8 softmax may
    probabilities = backends.to_probabilities(coarse)
    assert probabilities[0, 0] == pytest.approx(0.5 / 0.96)
    logits = np.array([[2.0, 1.0, -1.0]], np.float32)
    assert backends.to_probabilities(logits).sum() == pytest.approx(1.0)
    assert backends.to_probabilities(logits)[0, 0] == pytest.approx(np.exp(2) / np.exp([2, 1, -1]).sum())


def test_quantize_settings_are_validated(tmp_path):
    base = {"input": tmp_path, "output": tmp_path / "out.parquet"}
    RunConfig(**base, quantize="int8").check()
    with pytest.raises(UsageError, match="--quantize must be one of int8"):
        RunConfig(**base, quantize="int4").check()
    with pytest.raises(UsageError, match="not tf"):
        RunConfig(**base, quantize="int8", backend="tf").check()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` pixels; only its header is real."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def jpeg_claiming(path: Path, width: int, height: int) -> None:
    """A small real JPEG whose frame header is rewritten to claim a huge size."""
    Image.new("RGB", (16, 16), (90, 120, 30)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))


def test_decompression_bombs_are_refused_with_pillow_limit_on(tmp_path, spec):
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 30000 * 30000
    (tmp_path / "bomb.png").write_bytes(png_header(30000, 30000))
    jpeg_claiming(tmp_path / "bomb.jpg", 60000, 60000)
    for name in ("bomb.png", "bomb.jpg"):
        with pytest.raises(ImageDecodeError, match="decompression bomb"):
            decode_image(str(tmp_path / name), Preprocessing(224))


def test_bomb_is_an_error_row_beside_good_images(tmp_path, spec, litert_scorer, datasets):
    (tmp_path / "bomb.png").write_bytes(png_header(40000, 40000))
    jpeg_claiming(tmp_path / "huge.jpg", 65000, 65000)
    good = (datasets / "imagenet_objects" / "pizza.jpg").read_bytes()
    (tmp_path / "pizza.jpg").write_bytes(good)
    shard = Shard(0, str(tmp_path), ("bomb.png", "huge.jpg", "pizza.jpg"))
    options = worker.ScoringOptions(backend="litert", threads=2, decode_threads=1)
    table, timings = worker.score_shard(shard, spec, options)
    rows = {row["path"]: row for row in table.to_pylist()}
    assert rows["bomb.png"]["status"] == rows["huge.jpg"]["status"] == "error"
    assert "decompression bomb" in rows["bomb.png"]["error"] and "decompression bomb" in rows["huge.jpg"]["error"]
    assert rows["pizza.jpg"]["status"] == "ok" and rows["pizza.jpg"]["label"] == "pizza"
    assert timings["backend"] == "litert"


def test_large_images_that_cannot_be_drafted_are_reduced_first_and_look_the_same(tmp_path, datasets, monkeypatch):
    """A 12 MP PNG is shrunk by a whole factor before resampling (faster, within 3 of 255 of the fair
    resampling); a drafted JPEG and a small image are resampled as they are, pixel for pixel."""
    photo = Image.open(datasets / "imagenet_objects" / "pizza.jpg").convert("RGB")
    photo.resize((4000, 3000)).save(tmp_path / "large.png")
    photo.save(tmp_path / "small.png")
    photo.resize((4000, 3000)).save(tmp_path / "large.jpg", quality=90)
    reduced = []
    reduce = Image.Image.reduce
    monkeypatch.setattr(Image.Image, "reduce", lambda self, *a, **k: reduced.append(self.size) or reduce(self, *a, **k))

    def fair(path: Path, draft: bool = False) -> np.ndarray:
        with Image.open(path) as image:
            if draft:
                image.draft("RGB", (256, 256))
            image = image.convert("RGB")
            w, h = image.size
            crop = min(w, h) * 0.875
            box = ((w - crop) / 2, (h - crop) / 2, (w + crop) / 2, (h + crop) / 2)
            return np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC, box=box), dtype=np.int16)

    large = decode_image(str(tmp_path / "large.png"), Preprocessing(224)).pixels.astype(np.int16)
    assert reduced == [(4000, 3000)]
    assert np.abs(large - fair(tmp_path / "large.png")).max() <= 3
    reduced.clear()
    for name, draft in (("small.png", False), ("large.jpg", True)):
        pixels = decode_image(str(tmp_path / name), Preprocessing(224)).pixels
        assert np.array_equal(pixels, fair(tmp_path / name, draft)), name
    assert reduced == []
