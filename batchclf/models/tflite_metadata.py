"""What a ``.tflite`` made with TFLite Model Maker or for the Task Library says about its input.

Such a model carries a ``TFLITE_METADATA`` buffer: a flatbuffer of tflite-support's
``metadata_schema.fbs`` (file identifier ``M001``). Its first subgraph's first input tensor may hold a
``NormalizationOptions`` process unit, ``mean`` and ``std`` (one value for all channels, or one a
channel), which the Task Library applies to a float input as ``(pixel - mean) / std``, and an
``ImageProperties`` content whose ``default_size`` is the image size of a model whose input size is
not fixed. LiteRT ships the model schema but not the metadata schema, so the few fields needed are
read with flatbuffers' ``Table`` API, by the field ids of that schema.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from flatbuffers import number_types
from flatbuffers.table import Table

METADATA_NAME = b"TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
# Field ids in metadata_schema.fbs (a union takes two: its type, then its value).
MODEL_SUBGRAPHS = 3  # ModelMetadata.subgraph_metadata
SUBGRAPH_INPUTS = 2  # SubGraphMetadata.input_tensor_metadata
TENSOR_CONTENT, TENSOR_PROCESS_UNITS = 3, 4  # TensorMetadata.content, .process_units
CONTENT_PROPERTIES_TYPE, CONTENT_PROPERTIES = 0, 1  # Content.content_properties
IMAGE_PROPERTIES = 2  # ContentProperties: FeatureProperties = 1, ImageProperties = 2, BoundingBoxProperties = 3
IMAGE_DEFAULT_SIZE = 1  # ImageProperties.default_size
SIZE_WIDTH, SIZE_HEIGHT = 0, 1  # ImageSize
UNIT_OPTIONS_TYPE, UNIT_OPTIONS = 0, 1  # ProcessUnit.options
NORMALIZATION = 1  # ProcessUnitOptions: NormalizationOptions = 1
NORMALIZATION_MEAN, NORMALIZATION_STD = 0, 1
logger = logging.getLogger(__name__)
MAX_VECTOR = 1024  # more process units, tensors or values than any real model has: the buffer is damaged


class MalformedMetadata(ValueError):
    """The metadata buffer cannot be read as the metadata schema says."""


@dataclass(frozen=True)
class InputMetadata:
    """What the metadata says of the image input; None where it says nothing."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    image_size: int | None = None  # ImageProperties.default_size, when square


def input_metadata(path: Path) -> InputMetadata | None:
    """``read_input_metadata``, with metadata that cannot be read ignored after a one-line warning:
    the model still runs, as the sidecar or the defaults say."""
    try:
        return read_input_metadata(path)
    except MalformedMetadata as error:
        logger.warning("%s: ignoring its TFLite metadata, which cannot be read: %s", os.fspath(path), error)
        return None


def read_input_metadata(path: Path) -> InputMetadata | None:
    """The image input's metadata of the ``.tflite`` at ``path``; None when it carries no metadata.

    Raises ``MalformedMetadata`` when the metadata is there but cannot be read.
    """
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            buffer = _metadata_buffer(data)
            return None if buffer is None else _input_metadata(buffer)
        except MalformedMetadata:
            raise
        except (struct.error, IndexError, OverflowError, ValueError) as error:  # an offset out of the buffer
            raise MalformedMetadata(f"a damaged flatbuffer ({error})") from None


def _metadata_buffer(data) -> bytes | None:
    """The bytes of the model's ``TFLITE_METADATA`` buffer (in the flatbuffer, or after it in a model over 2 GB)."""
    from ai_edge_litert.schema_py_generated import Model

    model = Model.GetRootAs(data, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name() != METADATA_NAME:
            continue
        if not 0 <= entry.Buffer() < model.BuffersLength():
            raise MalformedMetadata(f"its buffer {entry.Buffer()} is not in the model")
        buffer = model.Buffers(entry.Buffer())
        if buffer.DataLength():
            return buffer.DataAsNumpy().tobytes()
        if buffer.Offset() > 1 and buffer.Offset() + buffer.Size() <= len(data):
            return bytes(data[buffer.Offset() : buffer.Offset() + buffer.Size()])
        raise MalformedMetadata("its buffer is empty")
    return None


def _input_metadata(buffer: bytes) -> InputMetadata:
    if len(buffer) < 8 or buffer[4:8] != FILE_IDENTIFIER:
        raise MalformedMetadata(f"not a metadata flatbuffer (no {FILE_IDENTIFIER.decode()} identifier)")
    model = Table(buffer, Table(buffer, 0).Indirect(0))  # the root table
    subgraphs = _tables(model, MODEL_SUBGRAPHS)
    inputs = _tables(subgraphs[0], SUBGRAPH_INPUTS) if subgraphs else []
    if not inputs:
        return InputMetadata()
    tensor = inputs[0]
    mean = std = None
    for unit in _tables(tensor, TENSOR_PROCESS_UNITS):
        if _scalar(unit, UNIT_OPTIONS_TYPE, number_types.Uint8Flags) == NORMALIZATION:
            options = _table(unit, UNIT_OPTIONS)
            if options is not None:
                mean = _per_channel(_floats(options, NORMALIZATION_MEAN), "mean")
                std = _per_channel(_floats(options, NORMALIZATION_STD), "std")
                if min(std) <= 0:
                    raise MalformedMetadata(f"its normalisation std {list(std)} is not positive")
            break
    return InputMetadata(mean, std, _default_size(tensor))


def _default_size(tensor: Table) -> int | None:
    content = _table(tensor, TENSOR_CONTENT)
    if content is None or _scalar(content, CONTENT_PROPERTIES_TYPE, number_types.Uint8Flags) != IMAGE_PROPERTIES:
        return None
    properties = _table(content, CONTENT_PROPERTIES)
    size = _table(properties, IMAGE_DEFAULT_SIZE) if properties is not None else None
    if size is None:
        return None
    width = _scalar(size, SIZE_WIDTH, number_types.Uint32Flags)
    height = _scalar(size, SIZE_HEIGHT, number_types.Uint32Flags)
    return width if width == height and width > 0 else None


def _per_channel(values: list[float], name: str) -> tuple[float, float, float]:
    """One value for all channels, or one a channel (R, G, B)."""
    if len(values) == 1:
        return (values[0],) * 3
    if len(values) == 3:
        return tuple(values)
    raise MalformedMetadata(f"its normalisation {name} has {len(values)} values; 1 or 3 (R, G, B) are read")


def _offset(table: Table, field: int) -> int:
    return table.Offset(4 + 2 * field)


def _scalar(table: Table, field: int, flags, default: int = 0):
    at = _offset(table, field)
    return table.Get(flags, table.Pos + at) if at else default


def _table(table: Table, field: int) -> Table | None:
    at = _offset(table, field)
    return Table(table.Bytes, table.Indirect(table.Pos + at)) if at else None


def _vector(table: Table, field: int) -> tuple[int, int]:
    """Where a vector's elements start, and how many there are (0 when the field is absent)."""
    at = _offset(table, field)
    if not at:
        return 0, 0
    count = table.VectorLen(at)
    start = table.Vector(at)
    if count > MAX_VECTOR or start + 4 * count > len(table.Bytes):
        raise MalformedMetadata(f"a vector of {count} elements does not fit the buffer")
    return start, count


def _tables(table: Table, field: int) -> list[Table]:
    start, count = _vector(table, field)
    return [Table(table.Bytes, table.Indirect(start + 4 * i)) for i in range(count)]


def _floats(table: Table, field: int) -> list[float]:
    start, count = _vector(table, field)
    return [table.Get(number_types.Float32Flags, start + 4 * i) for i in range(count)]
