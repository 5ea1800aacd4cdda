"""Inference backends: the same Keras model run by TensorFlow, or converted once and run by LiteRT.

LiteRT with XNNPACK is two to three times faster than TensorFlow on a CPU; TensorFlow is the
choice on a GPU. Both take uint8 RGB batches and return class probabilities (and pooled features
when asked).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import threading
from pathlib import Path

import numpy as np

BACKENDS = ("auto", "tf", "litert")


def cache_dir() -> Path:
    base = os.environ.get("BATCHCLF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "batchclf"
    )
    return Path(base)


def to_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Models may end in a softmax or in logits; return probabilities either way."""
    outputs = outputs.astype(np.float32, copy=False)
    if outputs.size and outputs.min() >= 0 and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
        return outputs
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence what TensorFlow and LiteRT print from C++ while they start (CUDA probing, delegates).

    Python exceptions are unaffected; set BATCHCLF_DEBUG=1 to see the native messages.
    """
    if os.environ.get("BATCHCLF_DEBUG"):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def choose_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "tf" if gpu_count() else "litert"


def scoring_model(keras_model, feature_layer: str | None, with_features: bool):
    """The model whose outputs we run: probabilities, plus pooled features for embeddings."""
    import keras

    if not with_features:
        return keras_model
    if not feature_layer:
        raise ValueError("this model has no known feature layer, so it cannot produce embeddings")
    features = keras_model.get_layer(feature_layer).output
    return keras.Model(keras_model.inputs, [keras_model.outputs[0], features])


class TensorFlowBackend:
    name = "tf"

    def __init__(self, model, with_features: bool):
        self.model = model
        self.with_features = with_features
        self.image_size = int(model.inputs[0].shape[1])

    def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.model.predict_on_batch(pixels.astype(np.float32))
        if self.with_features:
            return to_probabilities(np.asarray(outputs[0])), np.asarray(outputs[1], dtype=np.float32)
        return to_probabilities(np.asarray(outputs)), None


def convert_to_tflite(model, key: str) -> Path:
    """Convert ``model`` to a .tflite file once; later calls (any process) reuse the cached file."""
    folder = cache_dir() / "litert"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}.tflite"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two workers starting together convert once
        if not target.exists():
            import tensorflow as tf

            with contextlib.redirect_stdout(io.StringIO()):
                content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
            partial = target.with_suffix(f".tmp{os.getpid()}")
            partial.write_bytes(content)
            os.replace(partial, target)
    return target


def conversion_key(model_id: str, with_features: bool) -> str:
    import tensorflow as tf

    text = f"{model_id}|features={with_features}|tf={tf.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class LiteRTBackend:
    """A LiteRT interpreter with a fixed batch size; short batches are padded."""

    name = "litert"

    def __init__(self, tflite_path: Path, batch_size: int, threads: int, num_classes: int, with_features: bool):
        from ai_edge_litert.interpreter import Interpreter

        with quiet_native_stderr():  # the XNNPACK delegate announces itself on the first invoke
            self.interpreter = Interpreter(model_path=os.fspath(tflite_path), num_threads=threads)
            self.input = self.interpreter.get_input_details()[0]
            self.image_size = int(self.input["shape"][1])
            self.batch_size = batch_size
            shape = [batch_size, self.image_size, self.image_size, 3]
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            self.interpreter.allocate_tensors()
            self.interpreter.invoke()
        outputs = self.interpreter.get_output_details()
        # The converter may reorder outputs; the class vector is the one as wide as the label list.
        outputs.sort(key=lambda o: int(o["shape"][-1]) != num_classes)
        self.outputs = [o["index"] for o in outputs]
        self.with_features = with_features
        self.lock = threading.Lock()

    def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        count = len(pixels)
        batch = np.zeros((self.batch_size, self.image_size, self.image_size, 3), np.float32)
        batch[:count] = pixels
        with self.lock:
            self.interpreter.set_tensor(self.input["index"], batch)
            self.interpreter.invoke()
            results = [self.interpreter.get_tensor(i)[:count].copy() for i in self.outputs]
        if not self.with_features:
            return to_probabilities(results[0]), None
        probabilities, features = results
        return to_probabilities(probabilities), features.astype(np.float32)
