"""Crafted weights and models: refused with one line before they can read memory, run code or waste a run."""

from __future__ import annotations

import collections
import dataclasses
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from batchclf.models.torch_weights import LEGACY_MAGIC_NUMBER, UnsafeCheckpointError, load_legacy_state_dict


class _Storage:
    def __init__(self, key: str, values: np.ndarray):
        self.key, self.values = key, values.astype("<f4")


class _Tensor:
    def __init__(self, storage: _Storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict())


class _CheckpointPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", sys.modules["torch"].FloatStorage, obj.key, "cpu", len(obj.values))
        return None


def write_checkpoint(path: Path, tensors: dict[str, _Tensor], counts: dict[str, int] | None = None) -> Path:
    """A legacy PyTorch checkpoint written the way ``torch.save`` writes one, without torch.

    The pickle names ``torch.FloatStorage`` and ``torch._utils._rebuild_tensor_v2`` as torch's does;
    stand-in modules exist only while it is written.
    """
    torch_module, utils_module = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_module.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    torch_module._utils = utils_module
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch_module, "torch._utils": utils_module})
    try:
        storages = {t.storage.key: t.storage for t in tensors.values()}
        with open(path, "wb") as stream:
            for header in (LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
                pickle.dump(header, stream, protocol=2)
            _CheckpointPickler(stream, protocol=2).dump(collections.OrderedDict(tensors))
            pickle.dump(list(storages), stream, protocol=2)
            for key, storage in storages.items():
                count = len(storage.values) if counts is None else counts.get(key, len(storage.values))
                stream.write(np.int64(count).astype("<i8").tobytes())
                stream.write(storage.values.tobytes())
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path


STORAGE = _Storage("0", np.arange(6, dtype=np.float32))


def test_a_well_formed_checkpoint_loads(tmp_path):
    """The crafted-file writer makes real checkpoints: a plain and a transposed view come back right."""
    path = write_checkpoint(
        tmp_path / "ok.pth",
        {
            "w": _Tensor(STORAGE, 0, (2, 3), (3, 1)),
            "t": _Tensor(STORAGE, 0, (3, 2), (1, 3)),
            "s": _Tensor(STORAGE, 5, (), ()),
        },
    )
    weights = load_legacy_state_dict(path)
    np.testing.assert_array_equal(weights["w"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(weights["t"], np.arange(6).reshape(2, 3).T)
    assert weights["s"] == 5.0


@pytest.mark.parametrize(
    ("offset", "shape", "stride", "message"),
    [
        (0, (8,), (1,), "reaches element 7 of a storage of 6"),  # reads 8 floats from a storage of 6
        (4, (2, 2), (2, 1), "reaches element 7"),
        (6, (1,), (1,), "reaches element 6"),
        (7, (), (), "reaches element 7"),
        (0, (2, 3), (100, 1), "reaches element 102"),
        (-4, (2,), (1,), "negative"),
        (0, (-1, 3), (3, 1), "negative"),
        (5, (2,), (-1,), "negative"),
        (0, (2, 3), (3,), "2 sizes but 1 strides"),
        (0, (1 << 62, 1 << 62), (0, 0), "larger than"),  # stride 0 would expand 6 floats without bound
        (0, (2,), (1 << 70,), "reaches element"),  # past int64: no overflow into a small number
        (0, (2.5,), (1,), "non-integer"),
    ],
)
def test_tensor_outside_its_storage_is_refused(tmp_path, offset, shape, stride, message):
    path = write_checkpoint(tmp_path / "crafted.pth", {"w": _Tensor(STORAGE, offset, shape, stride)})
    with pytest.raises(UnsafeCheckpointError, match=message) as caught:
        load_legacy_state_dict(path)
    assert "\n" not in str(caught.value)


def test_storage_with_fewer_bytes_than_it_declares_is_refused(tmp_path):
    path = write_checkpoint(tmp_path / "short.pth", {"w": _Tensor(STORAGE, 0, (6,), (1,))}, counts={"0": 2})
    with pytest.raises(UnsafeCheckpointError, match="2 elements for a storage of 6"):
        load_legacy_state_dict(path)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_file_with_code_is_refused_unless_trusted(tmp_path, suffix, datasets):
    """A Lambda layer's stored Python runs on load: refused up front (exit 2) unless --trust-model."""
    import subprocess

    import keras

    from batchclf.errors import UsageError
    from batchclf.models import registry

    marker = tmp_path / "lambda-ran"
    inputs = keras.Input((4,))
    touch = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")  # the path in its code
    touched = keras.layers.Lambda(touch)(inputs)
    keras.Model(inputs, keras.layers.Dense(2)(touched)).save(tmp_path / f"m{suffix}")
    marker.unlink()  # building the model ran it once
    (tmp_path / "labels.txt").write_text("a\nb\n")
    output = tmp_path / "out.parquet"
    args = [sys.executable, "-m", "batchclf", "run", str(datasets / "imagenet_objects"), str(output)]
    result = subprocess.run([*args, "--model", str(tmp_path / f"m{suffix}")], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds a Lambda layer" in lines[0] and "--trust-model" in lines[0]
    assert not marker.exists() and not output.exists()
    spec = registry.resolve_model(str(tmp_path / f"m{suffix}"), trust_model=True)
    assert spec.trusted and not marker.exists()  # the driver read the class count from the config
    registry.load_keras_model(spec)
    assert marker.exists()  # what trusting a model means
    with pytest.raises(UsageError, match="Lambda"):
        registry.resolve_model(str(tmp_path / f"m{suffix}"))
    with pytest.raises(ValueError, match="safe_mode|Lambda|lambda"):
        registry.load_keras_model(dataclasses.replace(spec, trusted=False))  # and Keras itself refuses


def test_cli_refuses_a_two_class_keras_model_with_one_label(tmp_path, datasets):
    """The class names must match the outputs: checked in the driver, before a cluster starts."""
    import keras

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "tiny.keras")
    (tmp_path / "labels.txt").write_text("cat\n")
    output = tmp_path / "out.parquet"
    result = run_cli("run", str(datasets / "imagenet_objects"), str(output), "--model", str(tmp_path / "tiny.keras"))
    assert result.returncode == 2, result.stderr  # not every shard failing with IndexError, then exit 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchclf: error: model ") and "outputs 2 classes but" in lines[0]
    assert "names 1; give one class name a line, 2 in all" in lines[0]
    assert not output.exists() and not output.with_name(output.name + ".parts").exists()
