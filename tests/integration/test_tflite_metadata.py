"""A ``.tflite`` with Task Library metadata: its NormalizationOptions say how pixels become the input.

The model here is built to show what it is fed: it averages its input into ``m`` and answers the
logits ``[k m, -k m]`` for the classes ``positive`` and ``negative`` (``k`` small enough that 0-255
does not saturate the softmax), so the score of ``positive`` is ``sigmoid(2 k m)`` and tells ``m``
back. A grey of 51 fed as [-1, 1] (mean 127.5, std 127.5) is ``m = -0.6``; fed as 0-255 it is 51.
The metadata is written with flatbuffers' Builder, by the field ids of tflite-support's
metadata_schema.fbs, and attached to the model as the metadata populator does.
"""

from __future__ import annotations

import json
import logging
import math

import flatbuffers
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, save_image

from batchclf import worker
from batchclf.decode import decode_image
from batchclf.errors import UsageError
from batchclf.models import registry
from batchclf.models.tflite_metadata import MalformedMetadata, read_input_metadata

GREY = 51
SIZE = 8
K = 1 / 64


def _float_vector(builder: flatbuffers.Builder, values) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(value)
    return builder.EndVector()


def _offset_vector(builder: flatbuffers.Builder, offsets) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def metadata_buffer(mean, std, default_size: int | None = None, identifier: bytes = b"M001") -> bytes:
    """A ModelMetadata flatbuffer: subgraph 0, input 0, a NormalizationOptions process unit and an image size."""
    builder = flatbuffers.Builder(256)
    mean_vector, std_vector = _float_vector(builder, mean), _float_vector(builder, std)
    builder.StartObject(2)  # NormalizationOptions
    builder.PrependUOffsetTRelativeSlot(0, mean_vector, 0)
    builder.PrependUOffsetTRelativeSlot(1, std_vector, 0)
    normalization = builder.EndObject()
    builder.StartObject(2)  # ProcessUnit
    builder.PrependUint8Slot(0, 1, 0)  # options_type: NormalizationOptions
    builder.PrependUOffsetTRelativeSlot(1, normalization, 0)
    units = _offset_vector(builder, [builder.EndObject()])
    content = None
    if default_size:
        builder.StartObject(2)  # ImageSize
        builder.PrependUint32Slot(0, default_size, 0)
        builder.PrependUint32Slot(1, default_size, 0)
        size = builder.EndObject()
        builder.StartObject(2)  # ImageProperties
        builder.PrependInt8Slot(0, 1, 0)  # color_space: RGB
        builder.PrependUOffsetTRelativeSlot(1, size, 0)
        properties = builder.EndObject()
        builder.StartObject(3)  # Content
        builder.PrependUint8Slot(0, 2, 0)  # content_properties_type: ImageProperties
        builder.PrependUOffsetTRelativeSlot(1, properties, 0)
        content = builder.EndObject()
    name = builder.CreateString("image")
    builder.StartObject(7)  # TensorMetadata
    builder.PrependUOffsetTRelativeSlot(0, name, 0)
    if content is not None:
        builder.PrependUOffsetTRelativeSlot(3, content, 0)
    builder.PrependUOffsetTRelativeSlot(4, units, 0)
    inputs = _offset_vector(builder, [builder.EndObject()])
    builder.StartObject(7)  # SubGraphMetadata
    builder.PrependUOffsetTRelativeSlot(2, inputs, 0)
    subgraphs = _offset_vector(builder, [builder.EndObject()])
    model_name = builder.CreateString("range probe")
    builder.StartObject(8)  # ModelMetadata
    builder.PrependUOffsetTRelativeSlot(0, model_name, 0)
    builder.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    builder.Finish(builder.EndObject(), file_identifier=identifier)
    return bytes(builder.Output())


def with_metadata(model: bytes, metadata: bytes) -> bytes:
    """``model`` with ``metadata`` in a new buffer named TFLITE_METADATA."""
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(model, 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(tree.buffers) - 1
    tree.metadata = [*(tree.metadata or []), entry]
    builder = flatbuffers.Builder(len(model) + len(metadata) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _probe(size: int | None) -> bytes:
    import keras
    import tensorflow as tf

    inputs = keras.Input((size, size, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(2, use_bias=False)(mean)
    model = keras.Model(inputs, logits)
    model.layers[-1].set_weights([np.array([[K, -K]] * 3, np.float32) / 3])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


@pytest.fixture(scope="module")
def probe_model() -> bytes:
    """A float .tflite taking 8x8 RGB whose logits are [k m, -k m], m the mean of its input."""
    return _probe(SIZE)


@pytest.fixture(scope="module")
def any_size_model() -> bytes:
    """The same, taking images of any size."""
    return _probe(None)


def _model(folder, probe_model, metadata: bytes | None, sidecar: dict | None = None):
    folder.mkdir(exist_ok=True)
    path = folder / "probe.tflite"
    path.write_bytes(with_metadata(probe_model, metadata) if metadata else probe_model)
    (folder / "labels.txt").write_text("positive\nnegative\n")
    if sidecar is not None:
        (folder / "probe.tflite.json").write_text(json.dumps(sidecar))
    return path


def _fed_mean(path, image, size: int = SIZE) -> float:
    """The mean of what batchclf fed the model, read back from its top-1 score."""
    spec = registry.resolve_model(str(path))
    scorer = worker.get_scorer(spec, worker.ScoringOptions(backend="litert", threads=1, decode_threads=1))
    assert spec.preprocessing.image_size == scorer.backend.image_size == size
    probabilities, _ = scorer.backend.predict(decode_image(str(image), scorer.preprocessing).pixels[None])
    positive = float(probabilities[0, 0])
    return math.log(positive / (1 - positive)) / (2 * K)


@pytest.fixture
def grey(tmp_path):
    return save_image(tmp_path / "images" / "grey.png", (32, 32), (GREY, GREY, GREY))


def test_the_metadata_is_read_back_as_written(tmp_path, probe_model):
    path = _model(tmp_path / "m", probe_model, metadata_buffer([127.5], [127.5], default_size=SIZE))
    found = read_input_metadata(path)
    assert (found.mean, found.std, found.image_size) == ((127.5,) * 3, (127.5,) * 3, SIZE)
    per_channel = _model(tmp_path / "c", probe_model, metadata_buffer([1, 2, 3], [4, 5, 6]))
    assert read_input_metadata(per_channel).mean == (1, 2, 3) and read_input_metadata(per_channel).image_size is None
    assert read_input_metadata(_model(tmp_path / "none", probe_model, None)) is None


def test_metadata_normalisation_feeds_minus_one_to_one(tmp_path, probe_model, grey):
    plain = _model(tmp_path / "plain", probe_model, None)
    assert _fed_mean(plain, grey) == pytest.approx(GREY, abs=0.01)  # without metadata: 0-255, as before
    path = _model(tmp_path / "meta", probe_model, metadata_buffer([127.5], [127.5]))
    assert registry.resolve_model(str(path)).input_format.mean == (127.5,) * 3
    assert _fed_mean(path, grey) == pytest.approx((GREY - 127.5) / 127.5, abs=1e-3)


def test_a_sidecar_overrides_the_metadata(tmp_path, probe_model, grey):
    scaled = _model(tmp_path / "s", probe_model, metadata_buffer([127.5], [127.5]), {"scale": 1 / 255})
    assert _fed_mean(scaled, grey) == pytest.approx(GREY / 255, abs=1e-3)  # its scale, and no metadata mean/std
    centred = _model(tmp_path / "c", probe_model, metadata_buffer([127.5], [127.5]), {"mean": [1, 1, 1]})
    assert _fed_mean(centred, grey) == pytest.approx(GREY - 1, abs=0.01)
    cropped = _model(tmp_path / "k", probe_model, metadata_buffer([127.5], [127.5]), {"crop_fraction": 1.0})
    assert _fed_mean(cropped, grey) == pytest.approx((GREY - 127.5) / 127.5, abs=1e-3)  # other keys keep it


@pytest.mark.parametrize(
    "metadata, reason",
    [
        (metadata_buffer([127.5], [127.5], identifier=b"XXXX"), "no M001 identifier"),
        (metadata_buffer([127.5, 1], [127.5]), "mean has 2 values"),
        (metadata_buffer([127.5], [0]), "std [0.0, 0.0, 0.0] is not positive"),
        (b"\xff" * 40, "no M001 identifier"),
        (metadata_buffer([127.5], [127.5])[:8] + b"\xff" * 32, "a damaged flatbuffer"),
    ],
)
def test_malformed_metadata_is_ignored_with_one_warning(
    tmp_path, probe_model, grey, caplog, monkeypatch, metadata, reason
):
    # A run's logging (runlog.configure, called by earlier tests in this process) stops the batchclf logger
    # from propagating to the root, where caplog listens.
    monkeypatch.setattr(logging.getLogger("batchclf"), "propagate", True)
    path = _model(tmp_path / "bad", probe_model, metadata)
    with pytest.raises(MalformedMetadata, match=reason.replace("[", r"\[")):
        read_input_metadata(path)
    with caplog.at_level(logging.WARNING):
        spec = registry.resolve_model(str(path))
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith(f"{path}: ignoring its TFLite metadata, which cannot be read: ") and reason in warning
    assert "\n" not in warning
    assert spec.input_format.mean == (0.0, 0.0, 0.0)
    assert _fed_mean(path, grey) == pytest.approx(GREY, abs=0.01)


def test_a_run_feeds_the_metadata_normalisation(tmp_path, probe_model, grey):
    path = _model(tmp_path / "meta", probe_model, metadata_buffer([127.5], [127.5]))
    output = tmp_path / "out.parquet"
    result = run_cli("run", str(grey.parent), str(output), "--model", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr
    [row] = pq.read_table(output).to_pylist()
    assert row["label"] == "negative"  # 0-255 would have been "positive", with a score of 1
    assert row["score"] == pytest.approx(1 / (1 + math.exp(-2 * K * (127.5 - GREY) / 127.5)), abs=1e-5)


def test_a_model_of_any_size_takes_the_size_its_metadata_names(tmp_path, any_size_model, grey):
    path = _model(tmp_path / "meta", any_size_model, metadata_buffer([127.5], [127.5], default_size=12))
    assert _fed_mean(path, grey, size=12) == pytest.approx((GREY - 127.5) / 127.5, abs=1e-3)
    sized = _model(tmp_path / "sidecar", any_size_model, metadata_buffer([127.5], [127.5], 12), {"image_size": 16})
    assert _fed_mean(sized, grey, size=16) == pytest.approx((GREY - 127.5) / 127.5, abs=1e-3)
    unsized = _model(tmp_path / "plain", any_size_model, None)
    with pytest.raises(UsageError, match=r"takes images of any size and its metadata names none; say which in"):
        registry.resolve_model(str(unsized))
