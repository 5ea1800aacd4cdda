"""The trained model folder: one Keras model (featurizer + softmax head), ``labels.txt`` and ``metadata.json``.

The folder is self-contained: ``batchclf run --model MODEL_DIR`` reads the input size, crop and feature
layer from ``metadata.json`` and needs nothing else. The model is built from serialisable layers only
(no ``Lambda``), so it loads with Keras ``safe_mode``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import UsageError
from .models.efficientnet_lite import FEATURE_LAYER
from .models.registry import KERAS_MODEL_FILE, LABELS_FILE, METADATA_FILE

HEAD_LAYER = "predictions"


def check_model_dir(model_dir: Path) -> None:
    """Refuse, before any work, a destination we could not write or should not overwrite."""
    if model_dir.exists() and not model_dir.is_dir():
        raise UsageError(f"{model_dir} is a file; give a folder for the trained model")
    if model_dir.is_dir() and any(model_dir.iterdir()) and not (model_dir / METADATA_FILE).is_file():
        raise UsageError(f"{model_dir} is a non-empty folder that is not a trained model; choose a new folder")
    existing = next((p for p in [model_dir, *model_dir.parents] if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {model_dir}: {existing} is not writable")


def base_network(model_name: str):
    """The pretrained network as a Keras model (its ImageNet head is cut off by ``classifier``)."""
    from .backends import quiet_native_stderr
    from .models.registry import load_keras_model, resolve_model

    with quiet_native_stderr():  # TensorFlow announces its CUDA probing on first use
        return load_keras_model(resolve_model(model_name))


def classifier(base, classes: int, weights: np.ndarray | None = None, bias: np.ndarray | None = None):
    """The base network up to its pooled features, with a new ``Dense`` softmax head."""
    import keras

    features = base.get_layer(FEATURE_LAYER).output
    head = keras.layers.Dense(classes, activation="softmax", name=HEAD_LAYER)
    model = keras.Model(base.inputs, head(features), name="batchclf_classifier")
    if weights is not None:
        head.set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    return model


def save_model_dir(model, model_dir: Path, classes: tuple[str, ...], metadata: dict) -> None:
    """Write the three files, each through a temporary name, so a reader never sees a half-written file."""
    model_dir.mkdir(parents=True, exist_ok=True)
    temporary = model_dir / f".model.{os.getpid()}.keras"
    model.save(temporary)
    os.replace(temporary, model_dir / KERAS_MODEL_FILE)
    _write_text(model_dir / LABELS_FILE, "".join(f"{label}\n" for label in classes))
    _write_text(model_dir / METADATA_FILE, json.dumps(metadata, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
