"""What a run must score, given the rows it may reuse: last night's output, and parts of killed attempts.

One rule serves resume and nightly runs alike: a row is reused only when it was made by the same
model, class names, result options and input root (the *reuse key*, checked per file and per part)
and its file is unchanged: same path, size and modification time, or with ``--hash`` the same
content. Error rows are scored again unless ``--keep-error-rows``. A row whose file is gone is
dropped, except under a folder that could not be listed: there the file may well exist, so its row
is kept and marked ``unverified``.

The listing and every source are sorted by path text, so the comparison is a merge-join that walks
them in step (``merge.aligned``), one bounded batch at a time, whatever the number of files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .config import RunConfig
from .discover import Listing
from .fsutil import content_digest, read_blocks
from .merge import SOURCE_COLUMN, aligned, in_order, newest_rows
from .models.calibration_set import calibration_digest
from .models.registry import BUILTIN_MODELS, ModelSpec
from .paths import fs_path
from .store.parquet import read_output, read_parts, read_schema
from .writer import read_run_metadata

PATH_FORMAT = 2  # path texts with the backslash escaped (discover.path_text)


def reuse_key(spec: ModelSpec, config: RunConfig, root: str) -> str:
    """What a reusable row must have been made with: model, weights, class names, result options, root,
    and for int8 the calibration set.

    Checked for last night's output and for every part file, so no row made by another model or
    with other options is ever carried into an output.
    """
    return key_of(reuse_key_parts(spec, config, root))


def key_of(parts: dict) -> str:
    """The reuse key: a digest of its parts (``reuse_key_parts``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def reuse_key_parts(spec: ModelSpec, config: RunConfig, root: str) -> dict:
    """The parts of the reuse key, recorded in the output so that the next run can say which one differs."""
    record = {
        "model": spec.id,
        "weights": _weights_version(spec),
        "labels": hashlib.sha256("\n".join(spec.labels).encode()).hexdigest(),
        "options": config.result_options(),
        "input_root": root,
        "path_format": PATH_FORMAT,
    }
    if config.quantize:  # only then: the keys of unquantized rows stay what they were
        record["calibration"] = calibration_digest()
    return record


GENERIC_REASON = "the previous output was made with another model, other options, another folder or batchclf"
KEY_PART_NAMES = {"model": "model", "weights": "weights", "input_root": "input root"}


def rescore_reason(before: dict | None, now: dict, versions: tuple[str | None, str | None] = (None, None)) -> str:
    """Which part of the reuse key differs, in words: ``top_k 5 → 3``, ``model a → b``, ``input root /a → /b``.

    ``before`` is what the previous output recorded (None: an older output that recorded only the digest,
    which gets the generic reason); ``versions`` the batchclf versions that wrote the two, named when the
    way paths are written changed.
    """
    if not isinstance(before, dict):
        return GENERIC_REASON
    differences = []
    for name in ("model", "weights", "input_root"):
        if name == "weights" and before.get("model") != now.get("model"):
            continue  # another model: its weights say nothing more
        if before.get(name) != now.get(name):
            differences.append(f"{KEY_PART_NAMES[name]} {_shown(before.get(name))} → {_shown(now.get(name))}")
    if before.get("labels") != now.get("labels"):
        differences.append("class names differ")
    old_options, new_options = before.get("options") or {}, now.get("options") or {}
    for name in sorted(set(old_options) | set(new_options)):
        if old_options.get(name) != new_options.get(name):
            differences.append(f"{name} {_shown(old_options.get(name))} → {_shown(new_options.get(name))}")
    if before.get("calibration") != now.get("calibration"):
        differences.append("int8 calibration set differs")
    if before.get("path_format") != now.get("path_format"):
        old, new = (version or "?" for version in versions)
        formats = f"{before.get('path_format')} → {now.get('path_format')}"
        differences.append(f"batchclf {old} → {new} (path format {formats})")
    return ", ".join(differences) or GENERIC_REASON


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _weights_version(spec: ModelSpec) -> str | None:
    """A built-in model's weights come from a pip package: its version names them (user models are hashed)."""
    from importlib.metadata import PackageNotFoundError, version

    builtin = BUILTIN_MODELS.get(spec.source) if spec.kind == "builtin" else None
    if builtin is None:
        return None
    try:
        return version(builtin.package)
    except PackageNotFoundError:
        return None


HASH_THREADS = 8
SIGNATURE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("bytes", pa.int64()),
        ("mtime", pa.int64()),
        ("inode", pa.int64()),
        ("ctime", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("content_hash", pa.string()),
    ]
)


@dataclass(frozen=True)
class Source:
    """Reusable rows: ``source(columns)`` streams them as path-sorted tables, checked as they pass
    (``merge.in_order``: damage or disorder raises ``UnusableSourceError`` with this source's name)."""

    name: str  # what a message calls it, and what a run leaves out when it cannot be used
    read: Callable[[list[str] | None], Iterable[pa.Table]]
    files: tuple = ()  # the files behind it (``store.Location``s)

    def __call__(self, columns: list[str] | None) -> Iterator[pa.Table]:
        return in_order(self.read(columns), self.name)


@dataclass
class RunPlan:
    to_score: pa.ChunkedArray  # path texts, in output order
    sources: list[Source] = field(default_factory=list)  # reusable rows, oldest first
    dropped: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))  # rows whose file is gone
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (folder text ending in /, reason)
    files: int = 0
    reused: int = 0  # rows reused from last night's output
    resumed: int = 0  # rows reused from parts of an earlier attempt
    new: int = 0
    changed: int = 0
    retried: int = 0  # unchanged files whose row was an error
    kept_unverified: int = 0
    reusable: int = 0  # rows the sources held (newest of each path): what a drop is measured against
    reason: str | None = None  # why last night's output could not be used
    kept_errors: list[str] = field(default_factory=list)  # the error column of kept rows that are errors
    source_files: list = field(default_factory=list)  # the files behind ``sources`` (``store.Location``s)

    @property
    def kept(self) -> int:
        """Rows the output takes from the sources rather than from this run's scoring."""
        return self.reused + self.resumed + self.kept_unverified

    def line(self) -> str:
        if self.reason:
            return f"incremental: scoring everything ({self.reason})"
        return (
            f"incremental: {self.reused} unchanged rows reused, {len(self.to_score)} to score "
            f"({self.new} new, {self.changed} changed, {self.retried} errors retried), {len(self.dropped)} dropped"
            + (f", {self.kept_unverified} kept unverified" if self.kept_unverified else "")
        )

    def drops_too_much(self, max_drop: float) -> bool:
        """More than ``max_drop`` of the reusable rows would go: a share unmounted, a copy half-synced."""
        return len(self.dropped) > max_drop * self.reusable

    def record(self) -> dict:
        return {
            "reused": self.reused,
            "resumed": self.resumed,
            "scored": len(self.to_score),
            "new": self.new,
            "changed": self.changed,
            "errors_retried": self.retried,
            "dropped": len(self.dropped),
            "kept_unverified": self.kept_unverified,
            "reason": self.reason,
        }


def content_hash(path: str) -> str | None:
    """The ``--hash`` of a file on disk (``fsutil.content_digest``, as the workers hash what they read);
    None when unreadable."""
    try:
        return content_digest(read_blocks(path))
    except OSError:
        return None


def previous_output_source(previous, key_parts: dict, use_hash: bool) -> tuple[Source | None, str | None]:
    """Last night's output (a ``store.Location``) as a source of rows, or why it cannot be one (which part
    of the reuse key ``key_parts`` differs, when that is the reason)."""
    if not previous.exists():
        return None, f"{previous} does not exist yet"
    try:
        metadata = read_run_metadata(previous)
        names = read_schema(previous).names
    except (OSError, ValueError, pa.ArrowInvalid) as error:
        return None, f"cannot read {previous}: {error}"
    if metadata.get("reuse_key") != key_of(key_parts):
        versions = (metadata.get("batchclf_version"), __version__)
        return None, rescore_reason(metadata.get("reuse_key_parts"), key_parts, versions)
    if use_hash and "content_hash" not in names:
        return None, "the previous output has no content hashes"
    return Source(str(previous), lambda columns: read_output(previous, columns), (previous,)), None


def parts_source(parts: list) -> Source:
    """The parts of one attempt, in shard order: one path-sorted stream."""
    name = str(parts[0]) + (f" (and the {len(parts) - 1} other parts of its attempt)" if len(parts) > 1 else "")
    return Source(name, lambda columns: read_parts(parts, columns), tuple(parts))


def _with_hashes(batches: Iterator[pa.Table], root: str) -> Iterator[pa.Table]:
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        for batch in batches:
            full = [os.path.join(root, fs_path(p)) for p in batch["path"].to_pylist()]
            yield batch.append_column("content_hash", pa.array(list(pool.map(content_hash, full)), pa.string()))


def under_folders(paths, folders: list[str]):
    """A mask of the paths inside any of the folders (texts ending in ``/``)."""
    mask = pc.is_null(paths)  # all false: a path is never null
    for folder in folders:
        mask = pc.or_(mask, pc.starts_with(paths, folder))
    return mask


def plan_run(
    listing: Listing,
    sources: list[Source],
    use_hash: bool = False,
    keep_error_rows: bool = False,
    first_is_output: bool = False,
) -> RunPlan:
    """Walk the listing and the reusable rows in step; decide for each file: reuse its row, or score it.

    ``sources`` are oldest first; ``first_is_output`` says the first is last night's output (its
    reused rows are counted as ``reused``, those of parts as ``resumed``).
    """
    plan = RunPlan(to_score=pa.chunked_array([], pa.string()), sources=list(sources))
    batches = listing.batches
    if not sources:  # nothing to reuse: every file is scored, no file needs hashing here
        to_score = [batch["path"] for batch in batches]
        plan.to_score = pa.chunked_array([c for chunk in to_score for c in chunk.chunks], pa.string())
        plan.new, plan.files, plan.unreadable = len(plan.to_score), listing.files, listing.unreadable
        return plan
    if use_hash:
        batches = _with_hashes(batches, str(listing.root))
    columns = [n for n in SIGNATURE_SCHEMA.names if use_hash or n != "content_hash"]
    schema = pa.schema([SIGNATURE_SCHEMA.field(n) for n in columns])
    reusable = newest_rows([source(columns) for source in sources], schema, with_source=True)
    to_score, dropped = [], []
    for current, previous in aligned([batches, reusable]):
        if current is not None and current.num_rows:
            _compare(current, previous, use_hash, keep_error_rows, first_is_output, plan, to_score)
        if previous is not None and previous.num_rows:
            plan.reusable += previous.num_rows
            listed = current["path"] if current is not None else pa.array([], pa.string())
            gone = pc.invert(pc.is_in(previous["path"], value_set=listed))
            unreadable = under_folders(previous["path"], [folder for folder, _ in listing.unreadable])
            kept = previous.filter(pc.and_(gone, unreadable))  # not listed, but its folder could not be read
            plan.kept_unverified += kept.num_rows
            plan.kept_errors += _errors(kept)
            dropped.append(previous["path"].filter(pc.and_(gone, pc.invert(unreadable))).combine_chunks())
    plan.to_score = pa.chunked_array([c for array in to_score for c in array.chunks], pa.string())
    plan.dropped = pa.concat_arrays(dropped) if dropped else plan.dropped
    plan.files, plan.unreadable = listing.files, listing.unreadable
    return plan


def _compare(
    current: pa.Table,
    previous: pa.Table | None,
    use_hash: bool,
    keep_errors: bool,
    first_is_output: bool,
    plan,
    to_score,
) -> None:
    """Count and collect the files of one step whose row cannot be reused."""
    if previous is None or previous.num_rows == 0:
        plan.new += current.num_rows
        to_score.append(current["path"])
        return
    index = pc.index_in(current["path"], value_set=previous["path"])
    found = pc.is_valid(index)
    before = previous.take(pc.fill_null(index, 0))
    if use_hash:
        same = pc.equal(current["content_hash"], before["content_hash"])
    else:
        same = pc.and_(pc.equal(current["bytes"], before["bytes"]), pc.equal(current["mtime"], before["mtime"]))
        same = pc.and_(same, _same_marks(current, before))
    same = pc.and_(pc.and_(found, pc.fill_null(same, False)), pc.fill_null(current["readable"], False))
    ok = pc.equal(before["status"], "ok")
    reuse = same if keep_errors else pc.and_(same, pc.fill_null(ok, False))

    def count(mask) -> int:
        return pc.sum(pc.cast(mask, pa.int64())).as_py() or 0

    plan.new += count(pc.invert(found))
    plan.changed += count(pc.and_(found, pc.invert(same)))
    plan.retried += count(pc.and_(same, pc.invert(reuse)))
    reused = count(reuse)
    from_output = count(pc.and_(reuse, pc.equal(before[SOURCE_COLUMN], 0))) if first_is_output else 0
    plan.reused += from_output
    plan.resumed += reused - from_output
    plan.kept_errors += _errors(before.filter(reuse))
    to_score.append(current["path"].filter(pc.invert(reuse)))


def _same_marks(current: pa.Table, before: pa.Table):
    """Inode and ctime agree wherever both sides have them (a row of an older output has neither, an
    object and a file with several links have no ctime: those compare by size and mtime alone)."""
    inode = pc.fill_null(pc.equal(current["inode"], before["inode"]), True)
    return pc.and_(inode, pc.fill_null(pc.equal(current["ctime"], before["ctime"]), True))


def _errors(rows: pa.Table) -> list[str]:
    return rows.filter(pc.equal(rows["status"], "error"))["error"].to_pylist()
