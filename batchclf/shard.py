"""Split the sorted path list into deterministic shards: the unit of scheduling, retry and resume."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    index: int
    root: str
    paths: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"


def make_shards(root: str, paths: list[str], shard_size: int) -> list[Shard]:
    """Consecutive slices of the sorted paths, so concatenating shards in order keeps the sort."""
    return [
        Shard(index=i, root=root, paths=tuple(paths[start : start + shard_size]))
        for i, start in enumerate(range(0, len(paths), shard_size))
    ]
