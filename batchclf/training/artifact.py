"""The trained model folder: one Keras model (featurizer + softmax head), ``labels.txt`` and ``metadata.json``.

The folder is self-contained: ``batchclf run --model MODEL_DIR`` reads the input size, crop and feature
layer from ``metadata.json`` and needs nothing else. The model is built from serialisable layers only
(no ``Lambda``), so it loads with Keras ``safe_mode``. With several featurizers it is still one model:
one RGB input at the largest input size, each network behind a ``Resizing`` layer to its own size, their
pooled features concatenated before the head, so a worker builds every network once, as one model.

The folder is written as a unit: built in a hidden sibling, then renamed into place (over an existing
model: one atomic swap, or where that is unavailable, the old folder renamed aside first and removed
after), so a reader, or a kill, sees the old model or the new one, never a mix.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..fsutil import can_create_files_in, current_umask, fsync_path, process_alive
from ..models.efficientnet_lite import FEATURE_LAYER
from ..models.registry import BUILTIN_MODELS, KERAS_MODEL_FILE, LABELS_FILE, METADATA_FILE

HEAD_LAYER = "predictions"
CONCATENATED_FEATURES_LAYER = "features"  # the feature layer of a model with several featurizers
_STAGING, _ASIDE = "partial", "old"


def check_model_dir(model_dir: Path) -> None:
    """Refuse, before any work, a destination we could not write or should not overwrite."""
    if model_dir.exists() and not model_dir.is_dir():
        raise UsageError(f"{model_dir} is a file; give a folder for the trained model")
    if model_dir.is_dir() and any(model_dir.iterdir()) and not (model_dir / METADATA_FILE).is_file():
        raise UsageError(f"{model_dir} is a non-empty folder that is not a trained model; choose a new folder")
    existing = next((p for p in [model_dir, *model_dir.parents] if p.exists()), Path("."))
    if not can_create_files_in(existing):
        raise UsageError(f"cannot write {model_dir}: {existing} is not writable")
    if existing == model_dir and not can_create_files_in(model_dir.absolute().parent):
        raise UsageError(f"cannot replace {model_dir}: its folder {model_dir.absolute().parent} is not writable")


def base_network(model_name: str):
    """The pretrained network as a Keras model (its ImageNet head is cut off by ``classifier``)."""
    from ..backends import quiet_native_stderr
    from ..models.registry import load_keras_model, resolve_model

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


def input_size(featurizers: tuple[str, ...]) -> int:
    """The model's input size: the largest of the featurizers' (each branch scales down to its own)."""
    return max(BUILTIN_MODELS[name].image_size for name in featurizers)


def combined_classifier(featurizers: tuple[str, ...], classes: int, weights: np.ndarray, bias: np.ndarray):
    """Several networks in one model: one input, a resize per branch, concatenated pooled features, one head."""
    import keras

    size = input_size(featurizers)
    pixels = keras.Input((size, size, 3), name="pixels")
    branches = []
    for name in featurizers:
        base = base_network(name)
        own = BUILTIN_MODELS[name].image_size
        network = keras.Model(base.inputs, base.get_layer(FEATURE_LAYER).output, name=name.replace("-", "_"))
        # bilinear without antialiasing: a TFLite built-in op, so the LiteRT backend runs it natively
        resized = (
            pixels if own == size else keras.layers.Resizing(own, own, name=f"resize_{name.replace('-', '_')}")(pixels)
        )
        branches.append(network(resized))
    features = keras.layers.Concatenate(name=CONCATENATED_FEATURES_LAYER)(branches)
    head = keras.layers.Dense(classes, activation="softmax", name=HEAD_LAYER)
    model = keras.Model(pixels, head(features), name="batchclf_classifier")
    head.set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    return model


def save_model_dir(model, model_dir: Path, classes: tuple[str, ...], metadata: dict) -> None:
    """Write the folder as one unit: a reader, or a kill at any point, leaves the old model or the new one."""
    parent = model_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(parent, model_dir.name)
    staging = Path(tempfile.mkdtemp(prefix=_sibling_prefix(model_dir.name, _STAGING), dir=parent))
    try:
        model.save(staging / KERAS_MODEL_FILE)
        (staging / LABELS_FILE).write_text("".join(f"{label}\n" for label in classes), encoding="utf-8")
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        for name in (KERAS_MODEL_FILE, LABELS_FILE, METADATA_FILE):
            fsync_path(staging / name)
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; the folder is an ordinary output
        _move_into_place(staging, model_dir.absolute())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _move_into_place(staging: Path, model_dir: Path) -> None:
    if not os.path.lexists(model_dir):
        os.rename(staging, model_dir)
    elif _exchange(staging, model_dir):  # one atomic swap: no moment without a model folder
        _remove(staging)  # now the old model (or the link that stood for it)
    else:
        holder = Path(tempfile.mkdtemp(prefix=_sibling_prefix(model_dir.name, _ASIDE), dir=model_dir.parent))
        aside = holder / model_dir.name
        os.rename(model_dir, aside)
        try:
            os.rename(staging, model_dir)
        except BaseException:
            os.rename(aside, model_dir)
            holder.rmdir()
            raise
        shutil.rmtree(holder, ignore_errors=True)  # removes a link without following it
    fsync_path(model_dir.parent)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2(RENAME_EXCHANGE)``; False where that is unavailable."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(error, os.strerror(error), os.fspath(second))


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _sibling_prefix(name: str, role: str) -> str:
    return f".{name}.{role}-{os.getpid()}-"


def _remove_abandoned(parent: Path, name: str) -> None:
    """Clean up after a killed save of this folder (its process is gone): put back an old model it had moved
    aside and not yet replaced, and remove its hidden siblings."""
    for role in (_ASIDE, _STAGING):
        for path in parent.glob(f".{name}.{role}-*-*"):
            pid = path.name[len(f".{name}.{role}-") :].split("-")[0]
            if not pid.isdigit() or not path.is_dir() or path.is_symlink() or process_alive(int(pid)):
                continue
            if role == _ASIDE and os.path.lexists(path / name) and not os.path.lexists(parent / name):
                os.rename(path / name, parent / name)
            shutil.rmtree(path, ignore_errors=True)
