"""``.tflite`` user models: what the driver reads from the file, with LiteRT and zipfile only.

A model made for the TFLite Task Library is also a zip archive that packs its label file; those
labels are used when no ``--labels`` is given, before a ``labels.txt`` beside the model.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError

PACKED_LABEL_NAMES = ("labels.txt", "labelmap.txt", "label_map.txt")


@dataclass(frozen=True)
class TFLiteSignature:
    image_size: int | None  # None: the model takes any size (its metadata or sidecar says which)
    input_dtype: str  # "float32", "uint8" or "int8"
    # The widths of its [batch, n] outputs, as the interpreter lists them (not always the model's order): the
    # class vector is the one as wide as the label list (``backends.LiteRTBackend``); another may hold features.
    output_widths: tuple[int, ...]


def describe(path: Path) -> TFLiteSignature:
    """Input size and type and the class count, read by the LiteRT interpreter (no TensorFlow)."""
    from ai_edge_litert.interpreter import Interpreter

    from ..backends import quiet_native_stderr

    try:
        with quiet_native_stderr():
            interpreter = Interpreter(model_path=os.fspath(path))
    except (ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{path} is not a LiteRT model LiteRT can load: {reason}") from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or int(inputs[0]["shape"][-1]) != 3:
        shapes = [list(map(int, i["shape"])) for i in inputs]
        raise UsageError(f"{path} must take one image tensor of shape [batch, height, width, 3], not {shapes}")
    shape = inputs[0].get("shape_signature", inputs[0]["shape"])  # -1 where the size is not fixed
    height, width = int(shape[1]), int(shape[2])
    if (height != width or height < 1) and (height, width) != (-1, -1):
        shown = "x".join("any" if n == -1 else str(n) for n in (height, width))
        raise UsageError(f"{path} takes {shown} images; batchclf feeds square crops")
    dtype = np.dtype(inputs[0]["dtype"]).name
    if dtype not in ("float32", "uint8", "int8"):
        raise UsageError(f"{path} takes {dtype} input; batchclf feeds float32, uint8 or int8")
    widths = tuple(int(o["shape"][-1]) for o in outputs if len(o["shape"]) == 2)
    if not widths:
        shapes = [list(map(int, o["shape"])) for o in outputs]
        raise UsageError(f"{path} has no output of shape [batch, classes] (its outputs: {shapes})")
    return TFLiteSignature(height if height > 0 else None, dtype, widths)


def input_settings(path: Path, signature: TFLiteSignature) -> tuple[dict, int]:
    """The preprocessing settings and the image size: the sidecar's, over what the model's metadata
    says, over the defaults (0-255 pixels, bicubic).

    The metadata's normalisation is applied as the Task Library does: to a float input, and (as
    metadata_schema.fbs says) before the quantization of an int8 input; a uint8 input takes the raw
    pixels, whatever it says (its quantization undoes the normalisation). Its image size counts
    only for a model that takes any size.
    """
    from .sidecar import TFLITE_DEFAULTS, read_sidecar, sidecar_path
    from .tflite_metadata import input_metadata

    found = input_metadata(path)
    carried = None
    if found is not None and found.mean is not None and signature.input_dtype != "uint8":
        carried = (found.mean, found.std)
    settings = read_sidecar(path, TFLITE_DEFAULTS, carried)
    given = settings["image_size"]
    if signature.image_size is not None:
        if given not in (None, signature.image_size):
            raise UsageError(f"{sidecar_path(path)} says image_size {given} but {path} takes {signature.image_size}")
        return settings, signature.image_size
    image_size = given or (found.image_size if found is not None else None)
    if image_size is None:
        raise UsageError(
            f"{path} takes images of any size and its metadata names none; say which in {sidecar_path(path)}, "
            'e.g. {"image_size": 224}'
        )
    return settings, image_size


def packed_labels(path: Path) -> tuple[str, ...] | None:
    """Class names from the label file packed into the model, or None if it packs none."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = {Path(n).name.lower(): n for n in archive.namelist() if not n.endswith("/")}
            member = next((names[n] for n in PACKED_LABEL_NAMES if n in names), None)
            if member is None:
                texts = [n for key, n in names.items() if key.endswith(".txt")]
                member = texts[0] if len(texts) == 1 else None
            if member is None:
                return None
            text = archive.read(member).decode("utf-8-sig")
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError) as error:
        raise UsageError(f"cannot read the label file packed in {path}: {error}") from None
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    return labels or None
