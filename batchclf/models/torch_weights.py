"""Read tensors from a legacy (pre-zip) PyTorch checkpoint without PyTorch.

A legacy checkpoint is a sequence of pickles followed by raw storage bytes. Pickles can run arbitrary
code, so the unpickler here admits only the handful of globals a plain ``state_dict`` needs and
refuses everything else. The result is a ``{name: numpy.ndarray}`` mapping.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint asks for a global outside the allow-list."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _StorageRef:
    """A storage named by the pickle; its bytes arrive after the pickles end."""

    def __init__(self, dtype: np.dtype, size: int):
        self.dtype = dtype
        self.size = size
        self.array: np.ndarray | None = None


MAX_TENSOR_BYTES = 1 << 32  # far above any weights tensor; a crafted shape must not allocate without bound


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, shape: tuple, stride: tuple):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def materialise(self) -> np.ndarray:
        base = self.storage.array
        if base is None:
            raise UnsafeCheckpointError("checkpoint names a storage whose bytes it does not hold")
        _check_bounds(self.offset, self.shape, self.stride, len(base), base.dtype.itemsize)
        itemsize = base.dtype.itemsize
        if not self.shape:
            return base[self.offset].copy()
        if 0 in self.shape:
            return np.zeros(self.shape, base.dtype)
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _check_bounds(offset: int, shape: tuple, stride: tuple, storage_size: int, itemsize: int) -> None:
    """Refuse a tensor that would reach outside its storage: ``as_strided`` itself checks nothing."""
    numbers = (offset, *shape, *stride)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        raise UnsafeCheckpointError("checkpoint tensor has a non-integer offset, size or stride")
    if len(shape) != len(stride):
        raise UnsafeCheckpointError(f"checkpoint tensor has {len(shape)} sizes but {len(stride)} strides")
    if min(numbers) < 0:
        raise UnsafeCheckpointError(f"checkpoint tensor has a negative offset, size or stride: {numbers}")
    elements = 1
    for size in shape:
        elements *= size
    if elements * itemsize > MAX_TENSOR_BYTES:
        raise UnsafeCheckpointError(f"checkpoint tensor of shape {shape} is larger than {MAX_TENSOR_BYTES} bytes")
    if elements == 0:
        if offset > storage_size:
            raise UnsafeCheckpointError(f"checkpoint tensor starts at {offset}, past its storage of {storage_size}")
        return
    last = offset + sum((size - 1) * step for size, step in zip(shape, stride))
    if last >= storage_size:
        raise UnsafeCheckpointError(
            f"checkpoint tensor reaches element {last} of a storage of {storage_size}: the file is corrupt or crafted"
        )


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    sequences = (tuple, list)
    if not (isinstance(storage, _StorageRef) and isinstance(size, sequences) and isinstance(stride, sequences)):
        raise UnsafeCheckpointError("checkpoint tensor is not built from a storage, a size and a stride")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only ordered dicts, tensors and storages."""

    def __init__(self, file, storages: dict[str, _StorageRef]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(f"checkpoint refers to {module}.{name}, which a weights file never needs")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, size = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"unexpected storage type {storage_type!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise UnsafeCheckpointError(f"checkpoint storage has an invalid size {size!r}")
        if key not in self._storages:
            self._storages[key] = _StorageRef(storage_type.dtype, size)
        return self._storages[key]


def _load_plain(stream: io.BufferedIOBase) -> object:
    """Unpickle a header value that may hold only numbers, strings and containers."""
    return RestrictedUnpickler(stream, {}).load()


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the tensors of a legacy PyTorch ``state_dict`` file as numpy arrays."""
    with open(path, "rb") as stream:
        if _load_plain(stream) != LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path} is not a legacy PyTorch checkpoint")
        _load_plain(stream)  # protocol version
        _load_plain(stream)  # system info
        storages: dict[str, _StorageRef] = {}
        state = RestrictedUnpickler(stream, storages).load()
        keys = _load_plain(stream)
        if not isinstance(keys, list) or any(key not in storages for key in keys):
            raise UnsafeCheckpointError(f"{path} lists storages its state_dict does not use")
        for key in keys:
            ref = storages[key]
            header = stream.read(8)
            count = int(np.frombuffer(header, dtype="<i8")[0]) if len(header) == 8 else -1
            if count != ref.size:
                raise UnsafeCheckpointError(f"{path} holds {count} elements for a storage of {ref.size}")
            raw = stream.read(count * ref.dtype.itemsize)
            if len(raw) != count * ref.dtype.itemsize:
                raise ValueError(f"{path} is truncated")
            ref.array = np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<"))
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict")
    return {name: ref.materialise() for name, ref in state.items() if isinstance(ref, _TensorRef)}
