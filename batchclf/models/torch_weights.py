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


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, shape: tuple, stride: tuple):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def materialise(self) -> np.ndarray:
        base = self.storage.array
        itemsize = base.dtype.itemsize
        if not self.shape:
            return base[self.offset].copy()
        view = np.lib.stride_tricks.as_strided(
            base[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
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
        if key not in self._storages:
            self._storages[key] = _StorageRef(storage_type.dtype, int(size))
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
        for key in keys:
            ref = storages[key]
            count = int(np.frombuffer(stream.read(8), dtype="<i8")[0])
            raw = stream.read(count * ref.dtype.itemsize)
            if len(raw) != count * ref.dtype.itemsize:
                raise ValueError(f"{path} is truncated")
            ref.array = np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<"))
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict")
    return {name: ref.materialise() for name, ref in state.items() if isinstance(ref, _TensorRef)}
