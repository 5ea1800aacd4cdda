"""Models people already have: the built-in network exported to .tflite and .onnx, run as user models.

The exports are real conversions of EfficientNet-Lite0 (the TFLite converter, tf2onnx), made once per
session; each must agree with the built-in model on the shared images. Mismatched label counts and
untrusted SavedModels are refused before any work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from batchclf import worker
from batchclf.decode import decode_image
from batchclf.errors import UsageError
from batchclf.models import registry
from batchclf.models.sidecar import IMAGENET_MEAN, IMAGENET_STD, InputFormat

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SHARED_SETS = ("imagenet_objects", "food_toy_appliance", "flowers_small")
RAW_PIXELS = {"interpolation": "bicubic", "scale": 1, "mean": [0, 0, 0], "std": [1, 1, 1]}

# The tests of the exports share them: one pytest-xdist worker converts them once; the quantized exports
# are made on another, and the tests that need neither may run on any worker.
EXPORTS = pytest.mark.xdist_group("test_user_models-exports")
QUANTIZED = pytest.mark.xdist_group("test_user_models-quantized")


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """The built-in Lite0 as a .tflite with its labels packed in, an NHWC .onnx taking 0-255 pixels, and an
    NCHW .onnx taking ImageNet-normalised input (the usual torchvision export), each in its own folder."""
    import keras
    import tensorflow as tf
    import tf2onnx

    folder = tmp_path_factory.mktemp("exports")
    spec = registry.resolve_model()
    model = registry.load_keras_model(spec)
    labels = "\n".join(spec.labels) + "\n"

    tflite = folder / "tflite" / "lite0.tflite"
    tflite.parent.mkdir()
    tflite.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    with zipfile.ZipFile(tflite, "a") as archive:  # how the TFLite Task Library packs associated files
        archive.writestr("labels.txt", labels)

    nhwc = folder / "onnx-nhwc" / "lite0.onnx"
    nhwc.parent.mkdir()
    signature = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="pixels"),)
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=17, output_path=str(nhwc))
    (nhwc.parent / "labels.txt").write_text(labels)
    (nhwc.parent / "lite0.onnx.json").write_text(json.dumps(RAW_PIXELS))

    # NCHW, normalised with ImageNet mean/std: the wrapper undoes both, so the network sees what it always sees.
    nchw = folder / "onnx-nchw" / "lite0.onnx"
    nchw.parent.mkdir()
    inputs = keras.Input((3, 224, 224))
    channels_last = keras.layers.Permute((2, 3, 1))(inputs)
    std, mean = np.array(IMAGENET_STD, np.float32), np.array(IMAGENET_MEAN, np.float32)
    pixels = keras.layers.Rescaling(scale=std * 255, offset=mean * 255)(channels_last)
    wrapped = keras.Model(inputs, model(pixels))
    signature = (tf.TensorSpec((None, 3, 224, 224), tf.float32, name="input"),)
    tf2onnx.convert.from_keras(wrapped, input_signature=signature, opset=17, output_path=str(nchw))
    (nchw.parent / "labels.txt").write_text(labels)
    (nchw.parent / "lite0.onnx.json").write_text(json.dumps({"interpolation": "bicubic"}))  # other keys: defaults
    return {"tflite": tflite, "onnx-nhwc": nhwc, "onnx-nchw": nchw}


@pytest.fixture(scope="session")
def shared_images(datasets):
    paths = [
        p for name in SHARED_SETS for p in sorted((datasets / name).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    assert len(paths) > 200
    return paths


@pytest.fixture(scope="session")
def builtin_top1(shared_images, tmp_path_factory):
    """The built-in model's top-1 class of every shared image (LiteRT, in a private cache)."""
    saved = os.environ.get("BATCHCLF_CACHE")
    os.environ["BATCHCLF_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return _top1(registry.resolve_model(), shared_images)
    finally:
        if saved is None:
            os.environ.pop("BATCHCLF_CACHE")
        else:
            os.environ["BATCHCLF_CACHE"] = saved


def _top1(spec: registry.ModelSpec, paths: list[Path]) -> list[str]:
    scorer = worker.get_scorer(spec, worker.ScoringOptions(backend="litert", threads=2, decode_threads=1))
    found = []
    for start in range(0, len(paths), 32):
        pixels = np.stack([decode_image(str(p), scorer.preprocessing).pixels for p in paths[start : start + 32]])
        probabilities, _ = scorer.backend.predict(pixels)
        assert probabilities.shape == (len(pixels), 1000)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
        found.extend(spec.labels[i] for i in probabilities.argmax(axis=1))
    return found


@EXPORTS
@pytest.mark.parametrize("name", ["tflite", "onnx-nhwc", "onnx-nchw"])
def test_exported_model_agrees_with_the_builtin(name, exports, shared_images, builtin_top1, record_property):
    spec = registry.resolve_model(str(exports[name]))
    assert spec.kind == name.split("-")[0] and spec.preprocessing.image_size == 224
    assert spec.labels == registry.imagenet_labels()  # packed in the .tflite, labels.txt beside the .onnx
    found = _top1(spec, shared_images)
    agreement = float(np.mean([a == b for a, b in zip(found, builtin_top1)]))
    record_property("top1_agreement", agreement)
    assert agreement >= 0.99, f"{name}: {agreement:.3f} of {len(shared_images)} images"


@pytest.fixture(scope="session")
def quantized_exports(tmp_path_factory, shared_images):
    """Full-integer .tflite exports of the built-in Lite0 with uint8 and with int8 input, labels packed in."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("quantized")
    spec = registry.resolve_model()
    model = registry.load_keras_model(spec)
    calibration = [decode_image(str(p), spec.preprocessing).pixels for p in shared_images[::32]]
    exports = {}
    for dtype in (tf.uint8, tf.int8):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([p[None].astype(np.float32)] for p in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = dtype
        path = folder / f"lite0-{dtype.name}.tflite"
        path.write_bytes(converter.convert())
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("labels.txt", "\n".join(spec.labels))
        exports[dtype.name] = path
    return exports


@QUANTIZED
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantized_tflite_input_is_fed_right(dtype, quantized_exports, shared_images, builtin_top1, record_property):
    """Integer inputs: uint8 takes the raw pixels, int8 the pixels quantized with the input's scale and zero point.

    Full-integer quantization itself costs some agreement (docs/performance.md); a wrongly fed input costs
    nearly all of it.
    """
    spec = registry.resolve_model(str(quantized_exports[dtype]))
    found = _top1(spec, shared_images)
    agreement = float(np.mean([a == b for a, b in zip(found, builtin_top1)]))
    record_property("top1_agreement", agreement)
    assert agreement >= 0.8, f"{dtype}: {agreement:.3f}"


@EXPORTS
def test_resolved_preprocessing_comes_from_model_and_sidecar(exports):
    tflite = registry.resolve_model(str(exports["tflite"]))
    assert (tflite.preprocessing.interpolation, tflite.input_format) == ("bicubic", InputFormat("NHWC"))
    nhwc = registry.resolve_model(str(exports["onnx-nhwc"]))
    assert nhwc.input_format == InputFormat("NHWC", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    nchw = registry.resolve_model(str(exports["onnx-nchw"]))
    assert nchw.input_format == InputFormat("NCHW", 1 / 255, IMAGENET_MEAN, IMAGENET_STD)
    assert nchw.preprocessing.crop_fraction == 0.875 and nchw.preprocessing.interpolation == "bicubic"
    assert nchw.id != nhwc.id


@EXPORTS
def test_onnx_defaults_are_a_torchvision_export(tmp_path, exports):
    """Without a sidecar: 224 px, crop 0.875, bilinear, ImageNet mean/std on 0-1."""
    model = tmp_path / "plain.onnx"
    model.write_bytes(exports["onnx-nchw"].read_bytes())
    (tmp_path / "labels.txt").write_text("\n".join(registry.imagenet_labels()))
    spec = registry.resolve_model(str(model))
    assert spec.preprocessing.crop_fraction == 0.875 and spec.preprocessing.interpolation == "bilinear"
    assert spec.input_format == InputFormat("NCHW", 1 / 255, IMAGENET_MEAN, IMAGENET_STD)


def test_normalisation_and_layout():
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)  # one 1x1 image, NHWC
    tensor = InputFormat("NCHW", 1 / 255, IMAGENET_MEAN, IMAGENET_STD).apply(pixels)
    assert tensor.shape == (1, 3, 1, 1) and tensor.dtype == np.float32
    expected = (np.array([0, 128, 255]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(tensor[0, :, 0, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(InputFormat().apply(pixels), pixels.astype(np.float32))


@EXPORTS
def test_packed_labels_win_over_a_labels_file_beside_and_lose_to_labels_option(tmp_path, exports):
    model = tmp_path / "lite0.tflite"
    model.write_bytes(exports["tflite"].read_bytes())
    (tmp_path / "labels.txt").write_text("only one\n")
    assert registry.resolve_model(str(model)).labels == registry.imagenet_labels()
    with pytest.raises(UsageError, match="outputs 1000 classes but .*names 1"):
        registry.resolve_model(str(model), tmp_path / "labels.txt")


def test_a_tflite_model_with_a_features_output_is_labelled_by_its_class_output(tmp_path, datasets):
    """A file with 3 class scores and 8 features: the labels name the scores, whichever output is wider
    or listed first; a label list that fits neither output is refused, naming both widths."""
    import keras
    import pyarrow.parquet as pq
    import tensorflow as tf

    inputs = keras.Input((16, 16, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
    model = keras.Model(inputs, [keras.layers.Dense(3, activation="softmax")(features), features])
    path = tmp_path / "two-outputs.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    (tmp_path / "labels.txt").write_text("cat\ndog\nfox\n")
    assert registry.resolve_model(str(path)).labels == ("cat", "dog", "fox")

    output = tmp_path / "out.parquet"
    result = run_cli("run", str(datasets / "imagenet_objects"), str(output), "--model", str(path), "--top-k", "3")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(output, columns=["label", "topk"]).to_pylist()
    assert len(rows) == 19
    for row in rows:
        assert sorted(entry["label"] for entry in row["topk"]) == ["cat", "dog", "fox"]
        assert row["label"] == row["topk"][0]["label"]
        assert sum(entry["score"] for entry in row["topk"]) == pytest.approx(1, abs=1e-4)

    (tmp_path / "labels.txt").write_text("cat\ndog\nfox\nowl\n")
    with pytest.raises(UsageError, match=r"has outputs (3 and 8|8 and 3) wide but .*names 4 classes"):
        registry.resolve_model(str(path))


def test_a_tflite_model_without_a_class_vector_is_refused_in_one_line(tmp_path):
    import keras
    import tensorflow as tf

    inputs = keras.Input((16, 16, 3))
    path = tmp_path / "feature-map.tflite"
    path.write_bytes(
        tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))).convert()
    )
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(
        UsageError, match=r"has no output of shape \[batch, classes\] \(its outputs: \[\[1, 14, 14, 4\]\]\)"
    ):
        registry.resolve_model(str(path))


@EXPORTS
def test_bad_sidecar_is_refused(tmp_path, exports):
    model = tmp_path / "m.onnx"
    model.write_bytes(exports["onnx-nhwc"].read_bytes())
    (tmp_path / "labels.txt").write_text("\n".join(registry.imagenet_labels()))
    for settings, message in (
        ({"interpolaton": "bicubic"}, "unknown setting interpolaton"),
        ({"interpolation": "cubic"}, "interpolation must be one of"),
        ({"mean": [0.5]}, "mean must be three numbers"),
        ({"std": [1, 0, 1]}, "std must be positive"),
        ({"crop_fraction": 1.5}, "crop_fraction"),
    ):
        (tmp_path / "m.onnx.json").write_text(json.dumps(settings))
        with pytest.raises(UsageError, match=message):
            registry.resolve_model(str(model))


@EXPORTS
def test_tflite_run_needs_no_tensorflow(exports, datasets):
    """A worker scoring a .tflite user model never imports TensorFlow, nor does the driver resolving it."""
    code = f"""
import sys
from batchclf import worker
from batchclf.decode import decode_image
from batchclf.models.registry import resolve_model
spec = resolve_model({str(exports["tflite"])!r})
scorer = worker.get_scorer(spec, worker.ScoringOptions(threads=1, decode_threads=1))
image = decode_image({str(datasets / "imagenet_objects" / "pizza.jpg")!r}, scorer.preprocessing).pixels
probabilities, _ = scorer.backend.predict(image[None])
print(spec.labels[int(probabilities.argmax())], "tensorflow" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "pizza False"


@EXPORTS
def test_cli_runs_a_tflite_model_with_packed_labels(exports, datasets, tmp_path, builtin_top1, shared_images):
    import pyarrow.parquet as pq

    output = tmp_path / "out.parquet"
    result = run_cli(
        "run", str(datasets / "imagenet_objects"), str(output), "--model", str(exports["tflite"]), "--workers", "1"
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(output).to_pylist()
    expected = {p.name: label for p, label in zip(shared_images, builtin_top1) if p.parent.name == "imagenet_objects"}
    assert len(table) == 19 and {row["path"]: row["label"] for row in table} == expected
    assert table[0]["model"].startswith("lite0.tflite@")


def _assert_refused_before_work(result, output: Path, message: str):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchclf: error: ") and message in lines[0], result.stderr
    assert not output.exists() and not output.with_name(output.name + ".parts").exists()
    assert "dashboard" not in result.stderr.lower()


@EXPORTS
@pytest.mark.parametrize("name", ["tflite", "onnx-nhwc"])
def test_cli_refuses_a_label_count_that_does_not_match(name, exports, datasets, tmp_path):
    labels = tmp_path / "two.txt"
    labels.write_text("cat\ndog\n")
    output = tmp_path / "out.parquet"
    args = ("run", str(datasets / "imagenet_objects"), str(output), "--model", str(exports[name]))
    result = run_cli(*args, "--labels", str(labels))
    _assert_refused_before_work(result, output, "outputs 1000 classes but")


def test_label_count_of_a_model_whose_config_does_not_say_is_probed(tmp_path):
    """A last layer the config walk does not know (Reshape) is measured by loading it in a subprocess."""
    import keras

    inputs = keras.Input((8,))
    outputs = keras.layers.Reshape((3,))(keras.layers.Dense(3)(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "odd.keras")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(UsageError, match="outputs 3 classes but"):
        registry.resolve_model(str(tmp_path / "odd.keras"))
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    assert registry.resolve_model(str(tmp_path / "odd.keras")).labels == ("a", "b", "c")


def test_savedmodel_needs_trust(tmp_path, datasets):
    import keras

    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    folder = tmp_path / "saved"
    keras.Model(inputs, outputs).export(str(folder), verbose=False)
    (folder / "labels.txt").write_text("cat\n")
    output = tmp_path / "out.parquet"
    result = run_cli("run", str(datasets / "imagenet_objects"), str(output), "--model", str(folder))
    _assert_refused_before_work(result, output, "--trust-model")
    with pytest.raises(UsageError, match="outputs 2 classes but"):
        registry.resolve_model(str(folder), trust_model=True)
    (folder / "labels.txt").write_text("cat\ndog\n")
    assert registry.resolve_model(str(folder), trust_model=True).kind == "savedmodel"
    result = run_cli("run", str(datasets / "imagenet_objects"), str(output), "--model", str(folder), "--trust-model")
    assert result.returncode == 0, result.stderr
    import pyarrow.parquet as pq

    rows = pq.read_table(output).to_pylist()
    assert len(rows) == 19 and {row["label"] for row in rows} <= {"cat", "dog"}

    tags = tmp_path / "tags.tsv"  # evaluate takes the same flag, for the same reason
    images = sorted((datasets / "imagenet_objects").glob("*.jpg"))[:4]
    tags.write_text("".join(f"{path}\t{label}\n" for path, label in zip(images, ["cat", "dog"] * 2)))
    refused = run_cli("evaluate", str(tags), "--model", str(folder), "--no-progress")
    assert refused.returncode == 2 and "--trust-model" in refused.stderr, refused.stderr
    trusted = run_cli("evaluate", str(tags), "--model", str(folder), "--trust-model", "--no-progress")
    assert trusted.returncode == 0, trusted.stderr
    assert "accuracy" in trusted.stdout


@EXPORTS
def test_onnx_without_onnxruntime_says_how_to_install(tmp_path, exports, monkeypatch):
    model = tmp_path / "m.onnx"
    model.write_bytes(exports["onnx-nhwc"].read_bytes())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'batchclf\[onnx\]'"):
        registry.resolve_model(str(model))


def test_driver_checks_label_counts_without_tensorflow(tmp_path):
    """Built-in, .keras and .h5 models are resolved (outputs counted) with neither TensorFlow nor Keras imported."""
    import keras

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Activation("softmax")(keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    for name in ("m.keras", "m.h5"):
        keras.Model(inputs, outputs).save(tmp_path / name)
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n")
    models = ["efficientnet-lite0", str(tmp_path / "m.keras"), str(tmp_path / "m.h5")]
    code = f"""
import sys
from batchclf.models.registry import resolve_model
counts = [len(resolve_model(m).labels) for m in {models!r}]
print(counts, "tensorflow" in sys.modules, "keras" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1000, 4, 4] False False"


@EXPORTS
def test_options_a_model_cannot_honour_are_refused(exports, tmp_path, datasets):
    tflite = registry.resolve_model(str(exports["tflite"]))
    onnx = registry.resolve_model(str(exports["onnx-nhwc"]))
    registry.check_scoring_options(tflite, "auto", None, False)
    registry.check_scoring_options(tflite, "litert", None, False)
    registry.check_scoring_options(onnx, "auto", None, False)
    for spec, backend, quantize, embeddings, message in (
        (tflite, "auto", None, True, "--embeddings needs a model with a known feature layer"),
        (tflite, "tf", None, False, "runs on LiteRT"),
        (onnx, "litert", None, False, "runs on onnxruntime"),
        (onnx, "auto", "int8", False, "--quantize converts a Keras model"),
    ):
        with pytest.raises(UsageError, match=message):
            registry.check_scoring_options(spec, backend, quantize, embeddings)
    output = tmp_path / "out.parquet"
    result = run_cli(
        "run", str(datasets / "imagenet_objects"), str(output), "--model", str(exports["tflite"]), "--embeddings"
    )
    _assert_refused_before_work(result, output, "--embeddings needs a model with a known feature layer")


def _onnx_with_external_weights(folder: Path, weights, **save_options) -> Path:
    """A tiny NCHW classifier (mean colour → 2 classes) whose tensors onnx keeps in files beside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bias = numpy_helper.from_array(np.array([0.5, -0.5], np.float32), "bias")
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weights"], ["product"]),
        helper.make_node("Constant", [], ["bias"], value=bias),  # a tensor in a node attribute
        helper.make_node("Add", ["product", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.asarray(weights, np.float32), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.onnx"
    onnx.save_model(model, path, save_as_external_data=True, size_threshold=0, **save_options)
    (folder / "labels.txt").write_text("warm\ncool\n")
    return path


def test_onnx_external_weights_are_part_of_the_model_id(tmp_path):
    """New weights in the external-data file are another model: its id (and so the reuse key) changes."""
    path = _onnx_with_external_weights(tmp_path, np.eye(3, 2), location="weights.bin")
    before = registry.resolve_model(str(path))
    graph = path.read_bytes()
    retrained = _onnx_with_external_weights(tmp_path / "retrained", np.eye(3, 2)[::-1], location="weights.bin")
    (tmp_path / "weights.bin").write_bytes((retrained.parent / "weights.bin").read_bytes())
    assert path.read_bytes() == graph  # only the weights changed
    after = registry.resolve_model(str(path))
    assert after.id != before.id and after.id.startswith("tiny.onnx@")
    (tmp_path / "tiny.onnx.json").write_text(json.dumps({"crop_fraction": 1.0}))  # other preprocessing too
    assert registry.resolve_model(str(path)).id.startswith(f"{after.id}+")
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(UsageError, match=r"tiny\.onnx keeps weights in weights\.bin, which is not in ") as refused:
        registry.resolve_model(str(path))
    assert "\n" not in str(refused.value)


def test_onnx_external_data_is_found_in_initializers_and_node_attributes(tmp_path):
    """One file a tensor (the initializer's and the Constant node's), named in sorted order; a model
    without external data keeps the id of its file alone."""
    from batchclf.fsutil import sha256_tree
    from batchclf.models import onnx as onnx_models

    path = _onnx_with_external_weights(tmp_path, np.eye(3, 2), all_tensors_to_one_file=False, convert_attribute=True)
    assert onnx_models.external_data(path) == ("bias", "weights")
    inline = tmp_path / "inline" / "tiny.onnx"
    inline.parent.mkdir()
    import onnx

    onnx.save_model(onnx.load(path), inline)  # loaded with its data, saved in one file
    (inline.parent / "labels.txt").write_text("warm\ncool\n")
    assert onnx_models.external_data(inline) == ()
    assert registry.resolve_model(str(inline)).id == f"tiny.onnx@{sha256_tree(inline)[:16]}"
