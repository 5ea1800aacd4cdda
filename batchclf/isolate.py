"""Find the files that kill a worker, so that one poisonous file is an error row, not a failed job.

A shard whose task keeps failing after its retries (a decoder that crashes the process, a file that
exhausts the worker's memory) would otherwise stop the whole run. The driver hands such a shard to
``isolate_failing_shard``: an empty probe task first checks that scoring works at all (when it does
not, the problem is not a file and the shard's error is raised again); then the shard is split in
halves, each half scored as its own task, and every half that fails is split again, down to single
files. A single file that fails again when tried alone becomes an error row; every other file gets
its normal row.

Each failing piece costs a worker restart per allowed failure (the scheduler's
``distributed.scheduler.allowed-failures``), so isolating one file of an n-file shard costs about
``log2(n) * (allowed-failures + 1)`` restarts: slow, but only for shards that have already failed.
"""

from __future__ import annotations

import itertools
import os
import uuid
from dataclasses import replace

import pyarrow as pa

from .errors import StorageError
from .models.registry import ModelSpec
from .paths import fs_path
from .shard import Shard
from .worker import ScoringOptions, score_shard, scored_now

CRASH_MESSAGE = "crashed the worker process while decoding or scoring"


def failures_of_no_file() -> tuple[type[BaseException], ...]:
    """The failures of a task that no file caused, so that splitting its shard cannot help: the storage
    failed on every try, or the cluster has had no worker for its ``no-workers-timeout``."""
    from distributed.scheduler import NoWorkerError

    return StorageError, NoWorkerError


def isolate_failing_shard(
    client, shard: Shard, spec: ModelSpec, options: ScoringOptions, error: BaseException | None = None
) -> pa.Table:
    """The shard's table, in path order, with files that make their task fail as error rows.

    ``error`` is the shard's own failure, raised again when even an empty probe task fails.
    """
    from distributed import as_completed

    not_a_file = failures_of_no_file()
    token = uuid.uuid4().hex[:8]
    ranges: dict[str, tuple[int, int]] = {}
    attempts = itertools.count()

    def submit(start: int, stop: int):
        piece = replace(shard, paths=shard.paths[start:stop])
        key = f"batchclf-isolate-{token}-{shard.name}-{start}-{stop}-{next(attempts)}"
        ranges[key] = (start, stop)
        return client.submit(score_shard, piece, spec, options, key=key, retries=0, pure=False)

    try:
        probe, _ = submit(0, 0).result()
    except not_a_file:
        raise
    except Exception as probe_error:
        if error is not None:
            raise error from probe_error
        raise
    if len(shard.paths) == 1:  # the shard has failed already: its one file is the cause
        return _crash_rows(shard, 0, 1, spec, probe.schema, error)
    pieces: dict[int, pa.Table] = {}
    suspects: list[int] = []
    middle = len(shard.paths) // 2
    running = as_completed([submit(0, middle), submit(middle, len(shard.paths))])
    for future in running:
        start, stop = ranges[future.key]
        try:
            pieces[start], _ = future.result()
        except not_a_file:
            raise
        except Exception:
            if stop - start == 1:
                suspects.append(start)
            else:
                middle = (start + stop) // 2
                running.add(submit(start, middle))
                running.add(submit(middle, stop))
        future.release()
    # A task that shared a worker with the crashing one dies with it; so each single-file suspect is
    # tried again, alone, before it is called the cause.
    for start in sorted(suspects):
        future = submit(start, start + 1)
        try:
            pieces[start], _ = future.result()
        except not_a_file:
            raise
        except Exception as suspect_error:
            pieces[start] = _crash_rows(shard, start, start + 1, spec, probe.schema, suspect_error)
        future.release()
    return pa.concat_tables([pieces[start] for start in sorted(pieces)]).cast(probe.schema)


def _crash_rows(
    shard: Shard, start: int, stop: int, spec: ModelSpec, schema: pa.Schema, error: BaseException | None
) -> pa.Table:
    paths = list(shard.paths[start:stop])
    reason = CRASH_MESSAGE
    if error is not None and type(error).__name__ != "KilledWorker":
        reason = f"{CRASH_MESSAGE} ({type(error).__name__}: {error})"
    stats = [_stat(os.path.join(shard.root, fs_path(p))) for p in paths]
    known = {
        "path": paths,
        "status": ["error"] * len(paths),
        "error": [reason] * len(paths),
        "bytes": [s[0] for s in stats],
        "mtime": pa.array([s[1] for s in stats], pa.timestamp("ns", tz="UTC")),
        "model": [spec.id] * len(paths),
        "unverified": [False] * len(paths),
        "scored_at": [scored_now()] * len(paths),
    }
    columns = [
        pa.array(known[field.name]).cast(field.type, safe=False)
        if field.name in known
        else pa.nulls(len(paths), field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _stat(path: str) -> tuple[int | None, int | None]:
    try:
        result = os.stat(path)
    except OSError:
        return None, None
    return result.st_size, result.st_mtime_ns
