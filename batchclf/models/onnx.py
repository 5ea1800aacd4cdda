"""``.onnx`` user models: input layout and size and the class count, read by onnxruntime; the files
of external weights a model reads, read from its protobuf without onnxruntime.

onnxruntime is an optional extra (``pip install 'batchclf[onnx]'``); the preprocessing comes from
the sidecar JSON (see ``sidecar.py``) with the defaults of a torchvision/timm ImageNet export.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..fsutil import open_regular


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


# Where a TensorProto can sit in an ONNX protobuf: message kind → {field number: kind of the message
# there}, after onnx.proto (ModelProto.graph 7, .training_info 20, .functions 25; GraphProto.node 1,
# .initializer 5, .sparse_initializer 15; NodeProto.attribute 5; AttributeProto.t 5, .g 6,
# .tensors 10, .graphs 11, .sparse_tensor 22, .sparse_tensors 23; TensorProto.external_data 13).
_NESTED = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_LENGTH_DELIMITED, _FIXED_SIZES = 2, {1: 8, 5: 4}


class _Malformed(Exception):
    """The bytes are not a protobuf message."""


def _varint(data, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise _Malformed
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _messages(data, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in ``data[start:end]``."""
    at = start
    while at < end:
        key, at = _varint(data, at, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, at = _varint(data, at, end)
        elif wire in _FIXED_SIZES:
            at += _FIXED_SIZES[wire]
        elif wire == _LENGTH_DELIMITED:
            length, at = _varint(data, at, end)
            if at + length <= end:
                yield number, at, at + length
            at += length
        else:  # groups: not in ONNX
            raise _Malformed
        if at > end:
            raise _Malformed


def _locations(data) -> set[str]:
    """The ``location`` of every tensor stored outside the model, anywhere in the model (subgraphs too)."""
    found = set()
    stack = [("model", 0, len(data))]
    while stack:
        kind, start, end = stack.pop()
        if kind == "entry":  # StringStringEntryProto: key 1, value 2
            fields = {number: bytes(data[s:e]) for number, s, e in _messages(data, start, end)}
            if fields.get(1) == b"location" and 2 in fields:
                found.add(fields[2].decode("utf-8", "surrogateescape"))
            continue
        nested = _NESTED[kind]
        stack.extend((nested[number], s, e) for number, s, e in _messages(data, start, end) if number in nested)
    return found


def external_data(path: Path) -> tuple[str, ...]:
    """The files ``path`` keeps tensors in (``TensorProto.external_data``), as written (relative to its
    folder), sorted: they are as much the model as the ``.onnx`` file, so they go into its id.

    Read with a scan of the protobuf that skips the weights, so no ONNX package is needed and a large
    model costs no more than its graph. A named file that is missing, or is not a regular file, is
    refused in one line.
    """
    with os.fdopen(open_regular(path), "rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            return ()
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                names = tuple(sorted(_locations(data)))
            except _Malformed:
                return ()  # not protobuf: onnxruntime says why when it loads the file
    folder = path.resolve().parent
    for name in names:
        if not (folder / name).exists():
            raise UsageError(f"{path} keeps weights in {name}, which is not in {folder}; put it beside the model")
        if not (folder / name).is_file():
            raise UsageError(f"{path} keeps weights in {name}, which is not a regular file; replace it with the file")
    return names
