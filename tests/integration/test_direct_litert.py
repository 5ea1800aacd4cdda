"""The built-in models' LiteRT files, written from the weights without TensorFlow, agree with the converter's.

The reference is what TensorFlow's converter makes of the Keras model (the file every run used to
convert on a machine's first run): same top-1 on every shared test image, log-probabilities (the
logits up to a constant per image) and pooled features within 1e-4. Then ``batchclf run`` with an
empty cache: no process of the run imports TensorFlow or Keras, and nothing is converted.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from batchclf import backends
from batchclf.decode import decode_image
from batchclf.models import registry

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", re.MULTILINE)


def _run(path, pixels: np.ndarray, with_features: bool) -> tuple[np.ndarray, np.ndarray | None]:
    backend = backends.LiteRTBackend(path, 32, 2, 1000, with_features)
    batches = [backend.predict(pixels[i : i + 32]) for i in range(0, len(pixels), 32)]
    features = np.concatenate([b[1] for b in batches]) if with_features else None
    return np.concatenate([b[0] for b in batches]), features


@pytest.fixture(scope="module", params=["efficientnet-lite0", "efficientnet-lite2"])
def model(request, datasets, tmp_path_factory):
    """The converter's file (with features: it holds both outputs), the images decoded for the model, and what
    the converter's file makes of them (probabilities and features)."""
    builtin = registry.BUILTIN_MODELS[request.param]
    if importlib.util.find_spec(builtin.module) is None:
        pytest.skip(f"{builtin.package} is not installed (the test extra installs it)")
    spec = registry.resolve_model(request.param)
    keras_model = backends.scoring_model(registry.load_keras_model(spec), spec.feature_layer, with_features=True)
    converted = tmp_path_factory.mktemp("converted") / f"{request.param}.tflite"
    with contextlib.redirect_stdout(io.StringIO()):
        converted.write_bytes(backends._converter(keras_model, None).convert())
    paths = sorted(p for p in datasets.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    pixels = np.stack([decode_image(str(p), spec.preprocessing).pixels for p in paths])
    return spec, paths, pixels, _run(converted, pixels, True)


@pytest.mark.parametrize("with_features", [False, True], ids=["probabilities", "with-features"])
def test_the_direct_file_agrees_with_the_converted_one(model, with_features, tmp_path, record_property):
    spec, paths, pixels, (expected, expected_features) = model
    direct = tmp_path / "direct.tflite"
    direct.write_bytes(registry.builtin_tflite(spec, with_features))
    got, got_features = _run(direct, pixels, with_features)
    assert len(paths) > 200 and got.shape == expected.shape == (len(paths), 1000)
    disagree = [paths[i].name for i in np.flatnonzero(got.argmax(1) != expected.argmax(1))]
    assert disagree == [], f"top-1 differs on {len(disagree)} images: {disagree[:5]}"
    log_difference = float(np.abs(np.log(got) - np.log(expected)).max())
    record_property("max_abs_log_probability_difference", log_difference)
    assert log_difference < 1e-4
    assert float(np.abs(got - expected).max()) < 1e-5
    if with_features:
        assert got_features.shape == expected_features.shape == (len(paths), 1280)
        assert float(np.abs(got_features - expected_features).max()) < 1e-4


def _imports(stderr: str) -> list[str]:
    return IMPORT_LINE.findall(stderr)


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["plan", "worker-process"])
def test_a_first_run_imports_no_tensorflow_in_any_process(datasets, tmp_path, workers):
    """With an empty cache, the driver and every worker run the built-in model with LiteRT alone."""
    cache, output = tmp_path / "cache", tmp_path / "out.parquet"
    # Every process of the run lists its imports on stderr; BATCHCLF_DEBUG keeps stderr open while
    # LiteRT (or TensorFlow) loads, where it is otherwise silenced.
    environment = {"BATCHCLF_CACHE": str(cache), "PYTHONPROFILEIMPORTTIME": "1", "BATCHCLF_DEBUG": "1"}
    images = str(datasets / "imagenet_objects")
    result = run_cli("run", images, str(output), "--no-progress", *workers, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = _imports(result.stderr)
    assert "ai_edge_litert.interpreter" in imported  # the log covers the process that scores
    if workers:
        assert imported.count("batchclf.worker") >= 2  # ... and the worker process's imports too
    assert not {"tensorflow", "keras", "tf_keras"} & set(imported)
    assert "converting" not in result.stderr
    key = backends.conversion_key("efficientnet-lite0", False, direct=True)
    assert sorted(p.name for p in (cache / "litert").glob("*.tflite")) == [f"{key}.tflite"]
    assert set(pq.read_table(output)["status"].to_pylist()) == {"ok"}
