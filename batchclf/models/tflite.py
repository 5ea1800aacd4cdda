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
    image_size: int
    input_dtype: str  # "float32", "uint8" or "int8"
    classes: int


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
    height, width = int(inputs[0]["shape"][1]), int(inputs[0]["shape"][2])
    if height != width or height < 1:
        raise UsageError(f"{path} takes {height}x{width} images; batchclf feeds square crops")
    dtype = np.dtype(inputs[0]["dtype"]).name
    if dtype not in ("float32", "uint8", "int8"):
        raise UsageError(f"{path} takes {dtype} input; batchclf feeds float32, uint8 or int8")
    classes = max(int(o["shape"][-1]) for o in outputs if len(o["shape"]) == 2) if outputs else 0
    return TFLiteSignature(height, dtype, classes)


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
