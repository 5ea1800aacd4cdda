"""Inference backends: the same model run by TensorFlow (Keras), or by LiteRT from a file made once.

LiteRT with XNNPACK is two to three times faster than TensorFlow on a CPU; TensorFlow is the
choice on a GPU. The built-in models' float LiteRT files are written directly from their weights
(``models/efficientnet_lite_tflite.py``); other Keras models, and int8, go through TensorFlow's
converter. Both take uint8 RGB batches and return class probabilities (and pooled features when asked).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .fsutil import open_regular_no_follow, write_atomically
from .models.sidecar import InputFormat


def cache_dir() -> Path:
    base = os.environ.get("BATCHCLF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "batchclf"
    )
    return Path(base)


def to_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Models may end in a softmax or in logits; return probabilities either way.

    An int8 softmax sums to 1 only within a few steps of 1/256, so near-sums are renormalised, not
    mistaken for logits.
    """
    outputs = outputs.astype(np.float32, copy=False)
    if outputs.size and outputs.min() >= 0 and outputs.max() <= 1:
        sums = outputs.sum(axis=1, keepdims=True)
        if np.allclose(sums, 1.0, atol=1e-3):
            return outputs
        if np.allclose(sums, 1.0, atol=0.25):
            return outputs / sums
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


def configure_tensorflow(threads: int) -> None:
    """TensorFlow's thread pools for one worker (``threads`` intra-op, one inter-op) and memory growth on its GPUs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_native_stderr():
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process
        pass
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)


def choose_backend(requested: str, quantize: str | None = None) -> str:
    """``auto``: LiteRT on a CPU, TensorFlow on a GPU; a quantized model runs on LiteRT only.

    TensorFlow is imported only when a GPU is visible, so a LiteRT worker starts in a second and
    stays near 0.4 GB instead of 1.2 GB.
    """
    if requested != "auto":
        return requested
    if quantize:
        return "litert"
    from .machine import visible_gpus

    return "tf" if visible_gpus() and gpu_count() else "litert"


def scoring_model(keras_model, feature_layer: str | None, with_features: bool, logits: bool = False):
    """The model whose outputs we run: probabilities, plus pooled features for embeddings.

    With ``logits``, a final softmax layer is left out (we apply it in float): an int8 softmax has
    steps of 1/256, too coarse to rank close classes.
    """
    import keras

    last = keras_model.layers[-1]
    strip = logits and isinstance(last, keras.layers.Activation) and last.get_config()["activation"] == "softmax"
    if not with_features and not strip:
        return keras_model
    outputs = [last.input if strip else keras_model.outputs[0]]
    if with_features:
        if not feature_layer:
            raise ValueError("this model has no known feature layer, so it cannot produce embeddings")
        outputs.append(keras_model.get_layer(feature_layer).output)
    return keras.Model(keras_model.inputs, outputs if with_features else outputs[0])


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


def tflite_path(key: str) -> Path:
    """Where the converted model for ``key`` (see ``conversion_key``) is cached."""
    return cache_dir() / "litert" / f"{key}.tflite"


def cached_model_file(key: str, make: Callable[[], bytes]) -> Path:
    """The LiteRT file for ``key``, made by ``make`` once per machine; later calls (any process) reuse it."""
    target = tflite_path(key)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    # Opened without following links and never written: a link planted in a shared cache folder
    # cannot make this truncate another file.
    lock = open_regular_no_follow(folder / f"{key}.lock", os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two workers starting together make it once
        if not target.exists():
            write_atomically(target, make())
    finally:
        os.close(lock)
    return target


def convert_to_tflite(
    build_model: Callable[[], object],
    key: str,
    representative: Callable[[object], Iterable[np.ndarray]] | None = None,
) -> Path:
    """Convert the Keras model with TensorFlow's converter, once; later calls reuse the file without building it.

    With ``representative`` (the model → calibration images, uint8 HxWx3), the model is quantized to
    full integer (int8 weights and activations, uint8 input); the probabilities stay float32.
    """

    def convert() -> bytes:
        model = build_model()
        with contextlib.redirect_stdout(io.StringIO()), quiet_native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter's notes are about its internals, not the user's data
            return _converter(model, representative).convert()

    return cached_model_file(key, convert)


def _converter(model, representative):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:

        def dataset():
            for pixels in representative(model):
                yield [pixels[np.newaxis].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter


# The code that builds the model and writes or converts it: an edit to any of them makes a new file.
BUILDER_SOURCES = tuple(
    Path(__file__).parent / name
    for name in (
        "models/efficientnet_lite.py",
        "models/efficientnet_lite_tflite.py",
        "models/torch_weights.py",
        "models/registry.py",
        "backends.py",
    )
)


def builder_digest(sources: Iterable[Path] = ()) -> str:
    """A hash of the builder and converter source files, read now (a version number misses unreleased edits)."""
    digest = hashlib.sha256()
    for source in sources or BUILDER_SOURCES:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def conversion_key(
    model_id: str, with_features: bool, quantize: str | None = None, calibration: str = "", direct: bool = False
) -> str:
    """A hash of what determines the LiteRT file: model, outputs, who made it, quantization and its calibration set.

    ``direct``: written by batchclf's own builder (``models/efficientnet_lite_tflite.py``), not by
    TensorFlow's converter, so a file the converter made is never taken for it, and the TensorFlow
    version does not matter.
    """
    from importlib.metadata import PackageNotFoundError, version

    if direct:
        maker = "direct"
    else:
        try:
            maker = "tf=" + version("tensorflow")  # without importing TensorFlow
        except PackageNotFoundError:
            maker = "tf=unknown"
    from . import __version__

    text = f"{model_id}|features={with_features}|{maker}|batchclf={__version__}|builder={builder_digest()}"
    if quantize:
        text += f"|quantize={quantize}|calibration={calibration}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class LiteRTBackend:
    """A LiteRT interpreter with a fixed batch size; short batches are padded.

    Quantized models take integer input and may give integer outputs: pixels are quantized and outputs
    dequantized here with the tensors' own scale and zero point. A user's ``.tflite`` comes with an
    ``input_format``: float and int8 inputs get its normalisation, uint8 inputs the raw pixels (the
    convention of quantized image models, whose input quantization undoes the normalisation).
    """

    name = "litert"

    def __init__(
        self,
        tflite_path: Path | str,
        batch_size: int,
        threads: int,
        num_classes: int,
        with_features: bool,
        input_format: InputFormat | None = None,
        image_size: int | None = None,  # for a model that takes any size; else its input's
    ):
        from ai_edge_litert.interpreter import Interpreter

        self.path = tflite_path
        with quiet_native_stderr():  # the XNNPACK delegate announces itself when the tensors are allocated
            self.interpreter = Interpreter(model_path=os.fspath(tflite_path), num_threads=threads)
            self.input = self.interpreter.get_input_details()[0]
            self.image_size = image_size or int(self.input["shape"][1])
            self.batch_size = batch_size
            shape = [batch_size, self.image_size, self.image_size, 3]
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            self.interpreter.allocate_tensors()
        outputs = self.interpreter.get_output_details()  # not always in the model's order (LiteRT says so)
        # The class vector is the output as wide as the label list; of outputs as wide (a model with as many
        # classes as features), the one its signature lists first: output_0, as the converter names them.
        declared = _declared_order(self.interpreter)
        outputs.sort(key=lambda o: (int(o["shape"][-1]) != num_classes, declared.get(o["index"], len(declared))))
        self.outputs = [(o["index"], o["quantization"]) for o in outputs]
        self.with_features = with_features
        self.feature_size = int(outputs[1]["shape"][-1]) if with_features else None
        self.quantized = np.issubdtype(self.input["dtype"], np.integer)
        self.batch = np.zeros(shape, self.input["dtype"])
        self.input_format = input_format
        self.lock = threading.Lock()

    def _to_input(self, pixels: np.ndarray) -> np.ndarray:
        if self.input_format is not None:
            if self.batch.dtype == np.uint8:
                return pixels
            pixels = self.input_format.apply(pixels)
        if not self.quantized:
            return pixels
        scale, zero_point = self.input["quantization"]
        if scale == 1.0 and zero_point == 0 and pixels.dtype == self.batch.dtype:
            return pixels
        limits = np.iinfo(self.batch.dtype)
        return np.clip(np.round(pixels / scale + zero_point), limits.min, limits.max)

    def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        count = len(pixels)
        with self.lock:
            self.batch[:count] = self._to_input(pixels)
            self.batch[count:] = 0
            self.interpreter.set_tensor(self.input["index"], self.batch)
            self.interpreter.invoke()
            wanted = self.outputs if self.with_features else self.outputs[:1]  # a file may hold features unasked
            results = [_dequantize(self.interpreter.get_tensor(i)[:count], q) for i, q in wanted]
        if not self.with_features:
            return to_probabilities(results[0]), None
        probabilities, features = results
        return to_probabilities(probabilities), features


def _declared_order(interpreter) -> dict[int, int]:
    """Output tensor index -> its place in the file's one signature ({} for a file with none or several)."""
    if len(interpreter.get_signature_list()) != 1:
        return {}
    outputs = interpreter.get_signature_runner().get_output_details()  # name -> details, in the signature's order
    return {details["index"]: place for place, details in enumerate(outputs.values())}


def _dequantize(values: np.ndarray, quantization: tuple[float, int]) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32)  # a copy: the interpreter reuses its buffers
    scale, zero_point = quantization
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


class OnnxBackend:
    """An onnxruntime session on the CPU; normalisation and layout come from the model's ``InputFormat``."""

    name = "onnx"

    def __init__(self, onnx_path: Path | str, threads: int, input_format: InputFormat, image_size: int):
        from .models.onnx import session

        self.session = session(onnx_path, threads)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        self.raw_pixels = model_input.type == "tensor(uint8)"
        self.one_at_a_time = model_input.shape[0] == 1  # a fixed batch of one
        self.input_format = input_format
        self.image_size = image_size
        self.with_features = False

    def _to_input(self, pixels: np.ndarray) -> np.ndarray:
        if self.raw_pixels:
            return pixels if self.input_format.layout == "NHWC" else np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        return self.input_format.apply(pixels)

    def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, None]:
        batch = self._to_input(pixels)
        chunks = [batch[i : i + 1] for i in range(len(batch))] if self.one_at_a_time else [batch]
        outputs = [self.session.run([self.output_name], {self.input_name: chunk})[0] for chunk in chunks]
        return to_probabilities(np.concatenate(outputs).reshape(len(pixels), -1)), None
