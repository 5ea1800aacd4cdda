"""The parts store: finished shard results beside the output, in ``OUTPUT.parts/``.

One class for a folder on disk and a prefix in a bucket, written against ``Location``: a part that
exists is complete (it is written by ``atomic_parquet``), ``run.json`` records the reuse key, and a
part made under another reuse key is never reused.
"""

from __future__ import annotations

import json
import time

import pyarrow as pa

from ..fsutil import is_temporary_name
from .base import PART_NAME, PART_RECORD, PARTS_SUFFIX, Location, part_name
from .parquet import atomic_parquet, read_schema

PART_KEY = b"batchclf_part"


class PartsStore:
    """The parts beside ``output``: ``OUTPUT.parts/attempt-NNNN-SHARD.parquet`` and ``run.json``.

    ``run.json`` records the reuse key (model, class names, result options, input root): parts made
    under another key are removed, since none of their rows could be reused. Each run opens a new
    attempt; parts of earlier attempts stay until the output is written. Every part also carries the
    reuse key in its own metadata, and only parts that do are offered for reuse.
    """

    def __init__(self, output: Location, reuse_key: str):
        self.folder = output.sibling(output.name + PARTS_SUFFIX)
        self.reuse_key = reuse_key
        self.attempt = 1
        self.prepared = False
        self.write_seconds = 0.0  # time spent writing parts: the run's "writing" stage

    def open(self) -> str | None:
        """Find the attempts made before; return a message when existing parts were discarded.

        The folder itself is made by the first ``write``, so a run that scores nothing leaves none.
        """
        entries = self.folder.children()
        if not entries:
            return None
        try:
            previous = json.loads(self.folder.child(PART_RECORD).read_text())
        except (OSError, ValueError):
            previous = {}
        if not isinstance(previous, dict) or previous.get("reuse_key") != self.reuse_key:
            self.remove()
            return f"not reusing {self.folder}: it was made with another model, options or input"
        self.attempt = int(previous.get("attempts", 0)) + 1
        for entry in entries:  # what an interrupted write on disk left (a bucket never has any)
            if is_temporary_name(entry.name):
                entry.unlink()
        return None

    def _prepare(self) -> None:
        if not self.prepared:
            self.folder.make_folder()
            with self.folder.child(PART_RECORD).atomic_write() as stream:
                stream.write(json.dumps({"reuse_key": self.reuse_key, "attempts": self.attempt}).encode("utf-8"))
            self.prepared = True

    def part_path(self, shard_name: str) -> Location:
        return self.folder.child(part_name(self.attempt, shard_name))

    def earlier_attempts(self) -> list[list[Location]]:
        """Parts of earlier attempts made under this reuse key: one sorted list per attempt, oldest first."""
        by_attempt: dict[int, list[Location]] = {}
        for part in self.folder.children():
            match = PART_NAME.match(part.name)
            if match and int(match.group(1)) < self.attempt and self._made_here(part):
                by_attempt.setdefault(int(match.group(1)), []).append(part)
        return [sorted(by_attempt[a], key=str) for a in sorted(by_attempt)]

    def _made_here(self, part: Location) -> bool:
        try:
            metadata = read_schema(part).metadata or {}
        except (OSError, pa.ArrowInvalid):
            return False
        return metadata.get(PART_KEY, b"").decode() == self.reuse_key

    def write(self, shard_name: str, table: pa.Table) -> Location:
        started = time.perf_counter()
        self._prepare()
        target = self.part_path(shard_name)
        table = table.replace_schema_metadata({PART_KEY: self.reuse_key.encode()})
        with atomic_parquet(target, table.schema) as writer:
            writer.write_table(table)
        self.write_seconds += time.perf_counter() - started
        return target

    def remove(self) -> None:
        self.folder.remove_tree()
