"""Nightly runs: decide which files need scoring, given last night's output.

A row is carried over when its file is unchanged: same path, size and modification time, or with
``--hash`` the same content hash. New and changed files are scored; rows of deleted files drop out.
Everything is reused only when the previous output was made with the same model and result options.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .discover import path_text
from .writer import read_run_metadata

HASH_THREADS = 8


@dataclass
class IncrementalPlan:
    to_score: list[str]
    kept: pa.Table | None = None  # rows carried over from the previous output
    reused: int = 0
    new: int = 0
    changed: int = 0
    dropped: int = 0
    reason: str | None = None  # why nothing could be reused
    hashes: dict[str, str | None] | None = None  # content hash by output path, when they were computed
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.reason:
            return f"incremental: scoring everything ({self.reason})"
        return (
            f"incremental: {self.reused} unchanged rows reused, {len(self.to_score)} to score "
            f"({self.new} new, {self.changed} changed), {self.dropped} dropped"
        )


def content_hash(path: str) -> str | None:
    """BLAKE2b of the file's bytes (fast, and in the standard library)."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def file_signatures(root: str, paths: list[str], use_hash: bool) -> list[tuple]:
    """(size, mtime in µs) per path, or the content hash with ``use_hash``; None when unreadable."""
    full = [os.path.join(root, p) for p in paths]
    if use_hash:
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            return [(h,) for h in pool.map(content_hash, full)]
    signatures = []
    for path in full:
        try:
            stat = os.stat(path)
            signatures.append((stat.st_size, stat.st_mtime_ns // 1000))
        except OSError:
            signatures.append((None, None))
    return signatures


def plan_incremental(
    previous: Path, root: str, paths: list[str], result_options: dict, use_hash: bool
) -> IncrementalPlan:
    """Compare the files found now with the rows of ``previous``."""
    if not previous.exists():
        return IncrementalPlan(to_score=paths, new=len(paths), reason=f"{previous} does not exist yet")
    try:
        metadata = read_run_metadata(previous)
        table = pq.read_table(previous)
    except (OSError, ValueError, pa.ArrowInvalid) as error:
        return IncrementalPlan(to_score=paths, new=len(paths), reason=f"cannot read {previous}: {error}")
    if metadata.get("result_options") != result_options:
        return IncrementalPlan(
            to_score=paths, new=len(paths), reason="the previous output was made with another model or other options"
        )
    if metadata.get("input_root") != root:
        return IncrementalPlan(to_score=paths, new=len(paths), reason="the previous output is of another folder")
    if use_hash and "content_hash" not in table.column_names:
        return IncrementalPlan(to_score=paths, new=len(paths), reason="the previous output has no content hashes")

    previous_paths = table.column("path").to_pylist()
    if use_hash:
        old = dict(zip(previous_paths, ((h,) for h in table.column("content_hash").to_pylist())))
    else:
        mtimes = pc.cast(table.column("mtime"), pa.int64()).to_pylist()
        old = dict(zip(previous_paths, zip(table.column("bytes").to_pylist(), mtimes)))
    current = dict(zip(map(path_text, paths), file_signatures(root, paths, use_hash)))
    text_to_path = dict(zip(map(path_text, paths), paths))
    plan = IncrementalPlan(to_score=[], hashes={p: s[0] for p, s in current.items()} if use_hash else None)
    keep = []
    for path, signature in current.items():
        before = old.get(path)
        if before is None:
            plan.new += 1
            plan.to_score.append(text_to_path[path])
        elif before != signature or None in signature:
            plan.changed += 1
            plan.to_score.append(text_to_path[path])
        else:
            keep.append(path)
    plan.reused = len(keep)
    plan.dropped = sum(1 for path in old if path not in current)
    plan.kept = table.filter(pc.is_in(table.column("path"), pa.array(keep, pa.string())))
    return plan
