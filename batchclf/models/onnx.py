"""``.onnx`` user models: input layout and size and the class count, read by onnxruntime.

onnxruntime is an optional extra (``pip install 'batchclf[onnx]'``); the preprocessing comes from
the sidecar JSON (see ``sidecar.py``) with the defaults of a torchvision/timm ImageNet export.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError


@dataclass(frozen=True)
class OnnxSignature:
    layout: str  # "NCHW" or "NHWC", from where the 3 channels are
    image_size: int | None  # None when the model takes any size
    input_dtype: str
    classes: int


def session(path: Path, threads: int = 1):
    try:
        import onnxruntime
    except ImportError:
        raise UsageError("ONNX models need onnxruntime: pip install 'batchclf[onnx]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for a malformed file
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise UsageError(f"{path} is not an ONNX model onnxruntime can load: {reason}") from None


def _dim(value) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def describe(path: Path, image_size: int | None) -> OnnxSignature:
    """Layout from the input shape; the class count from the output shape, or from one blank image."""
    model = session(path)
    inputs = model.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        shapes = [i.shape for i in inputs]
        raise UsageError(f"{path} must take one image tensor (NCHW or NHWC), not inputs of shapes {shapes}")
    shape = inputs[0].shape
    if _dim(shape[1]) == 3:
        layout, height, width = "NCHW", _dim(shape[2]), _dim(shape[3])
    elif _dim(shape[3]) == 3:
        layout, height, width = "NHWC", _dim(shape[1]), _dim(shape[2])
    else:
        raise UsageError(f"{path} takes input of shape {shape}: 3 RGB channels must come second (NCHW) or last")
    if height is not None and height != width:
        raise UsageError(f"{path} takes {height}x{width} images; batchclf feeds square crops")
    dtype = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}.get(inputs[0].type)
    if dtype is None:
        raise UsageError(f"{path} takes {inputs[0].type} input; batchclf feeds float32 or uint8")
    size = height or image_size
    if size is None:
        raise UsageError(f"{path} takes images of any size: give image_size in {path.name}.json")
    output = model.get_outputs()[0]
    classes = _dim(output.shape[-1]) if output.shape else None
    if classes is None:
        blank_shape = (1, 3, size, size) if layout == "NCHW" else (1, size, size, 3)
        result = model.run([output.name], {inputs[0].name: np.zeros(blank_shape, dtype)})[0]
        classes = int(result.shape[-1])
    return OnnxSignature(layout, height, dtype, classes)
