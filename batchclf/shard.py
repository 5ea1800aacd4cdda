"""Split the sorted path list into deterministic shards: the unit of scheduling, retry and resume."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

MIN_SHARDS = 16
SHARD_MULTIPLE = 32  # the default batch size: a shard of 25 images would pay for a padded batch of 32


@dataclass(frozen=True)
class Shard:
    index: int
    root: str
    paths: tuple[str, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def iter_shards(root: str, paths: Sequence[str] | pa.ChunkedArray, shard_size: int) -> Iterator[Shard]:
    """Consecutive slices of the sorted path texts, so concatenating shards in order keeps the sort.

    Made one at a time: a run over ten million files never holds them all as Python strings.
    """
    for index, start in enumerate(range(0, len(paths), shard_size)):
        piece = paths[start : start + shard_size]
        yield Shard(index=index, root=root, paths=tuple(piece.to_pylist() if hasattr(piece, "to_pylist") else piece))


def make_shards(root: str, paths: Sequence[str] | pa.ChunkedArray, shard_size: int) -> list[Shard]:
    return list(iter_shards(root, paths, shard_size))


def balanced_shard_size(count: int, shard_size: int, min_shards: int = MIN_SHARDS) -> int:
    """Cut small inputs into at least ``min_shards`` shards so no worker idles while another finishes.

    With 3,000 images and 1,024-image shards, two workers would split 2 + 1 shards and the run would
    take a third longer than it needs. Sizes are whole batches, so no shard pays for a padded one it
    could have avoided. (Resume does not need the same shards: rows are reused file by file.)
    """
    size = SHARD_MULTIPLE * max(1, math.ceil(count / min_shards / SHARD_MULTIPLE))
    return max(1, min(shard_size, size))
