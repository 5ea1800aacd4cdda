"""Hand what is left to score to a Dask cluster, shard by shard, and land each result in the parts store.

Shards are made as they are submitted: their paths never all live as Python strings, and only a
bounded window of them is in flight. A shard that fails on every try is split until the file that
kills its worker is one error row (``isolate.py``).
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from .backends import cache_dir
from .config import RunConfig
from .errors import NoWorkersError
from .isolate import failures_of_no_file, isolate_failing_shard
from .machine import IN_PROCESS_TASKS, WorkerPlan, threads_for_worker
from .models.registry import ModelSpec
from .paths import fs_path
from .progress import PROGRESS_TOPIC, progress_display
from .runlog import WARNINGS_TOPIC, logger, say_forwarded_warning
from .shard import MIN_SHARDS, balanced_shard_size, iter_shards
from .store import location
from .supervise import signals_deferred
from .worker import (
    ScoringOptions,
    conversion_pending,
    decode_window,
    discard_prefetched,
    prefetch,
    ready_to_prefetch,
    score_shard,
)

IN_PROCESS_MIN_SHARDS = 2 * IN_PROCESS_TASKS  # measured: 400 12 MP JPEGs ~6 % faster than with 16 shards
TIMED_STAGES = ("decode_wait", "inference", "build", "total")


@dataclass(frozen=True)
class ScoringTask:
    """What the cluster must score: the path texts under ``root``, with this model and these settings."""

    config: RunConfig
    spec: ModelSpec
    allowed: tuple[int, ...] | None  # class indices the output may name (None: all)
    root: str
    to_score: pa.ChunkedArray
    store: object  # the parts store each finished shard is written to
    plan: WorkerPlan | None = None  # the embedded cluster's plan, made once by the job (None: plan it here)


@dataclass
class ScoringResult:
    shards: int = 0
    saved: int = 0  # rows written to parts
    timings: dict = field(default_factory=dict)  # per-task sums, by stage
    plan: dict | None = None  # the embedded cluster's worker plan (None: attached or SLURM cluster)
    dashboard: str | None = None


def score(task: ScoringTask) -> ScoringResult:
    """Score every path of ``task`` on the cluster the config names; return what it took.

    The in-process worker is this process: its model is built, and the first shards' first images
    decoded, while Dask is imported and the cluster starts (``warm_up``).
    """
    config = task.config
    cluster_config = config.cluster_config if config.cluster == "slurm" else None
    warm = warm_up(task) if task.plan is not None and task.plan.in_process and len(task.to_score) else None
    try:
        return _score(task, config, cluster_config, warm)
    finally:
        if warm is not None:
            discard_prefetched(task.spec, warm)


def warm_up(task: ScoringTask) -> ScoringOptions | None:
    """Start building the in-process worker's model and decoding what its first tasks will decode, in a
    thread; return the options its tasks run with (None: nothing started, ``worker.ready_to_prefetch``).
    A build that fails here fails again, and is reported, in the first task. A worker preload
    (``distributed.worker.preload``) may prepare what decoding needs: with one, nothing starts before it ran."""
    import dask

    options = _scoring_options(task, None, task.plan)
    if dask.config.get("distributed.worker.preload", None) or not ready_to_prefetch(task.spec, options):
        return None
    shard_size = balanced_shard_size(len(task.to_score), task.config.shard_size, IN_PROCESS_MIN_SHARDS)
    first = itertools.islice(iter_shards(task.root, task.to_score, shard_size), IN_PROCESS_TASKS)
    window = decode_window(options)
    paths = [os.path.join(task.root, fs_path(p)) for shard in first for p in shard.paths[:window]]

    def start() -> None:
        try:
            prefetch(task.spec, options, task.root, paths)
        except Exception:  # noqa: BLE001 - the first task builds the model again and says why it cannot
            pass

    threading.Thread(target=start, name="batchclf-warm-up", daemon=True).start()
    return options


def _score(task: ScoringTask, config: RunConfig, cluster_config, warm: ScoringOptions | None) -> ScoringResult:
    from .cluster import connect  # Dask's distributed: a second or so of imports, after the warm-up started

    with connect(
        config.scheduler,
        config.scheduler_file and str(config.scheduler_file),
        config.workers,
        config.dashboard_address,
        cluster_config,
        backend=config.backend,
        quantize=config.quantize,
        in_process=config.in_process,
        plan=task.plan,
    ) as (client, worker_plan):
        # The in-process worker shares one model between its tasks, so a few shards keep it busy to the
        # end; separate workers need more, so that none idles while another finishes.
        min_shards = IN_PROCESS_MIN_SHARDS if worker_plan and worker_plan.in_process else MIN_SHARDS
        shard_size = balanced_shard_size(len(task.to_score), config.shard_size, min_shards)
        result = ScoringResult(
            shards=-(-len(task.to_score) // shard_size),
            plan=asdict(worker_plan) if worker_plan else None,
            dashboard=client.dashboard_link or None,
        )
        if client.dashboard_link:
            logger.info(f"dashboard: {client.dashboard_link}", extra={"fields": {"dashboard": client.dashboard_link}})
        options = warm or _scoring_options(task, client, worker_plan)
        if conversion_pending(task.spec, options):
            logger.info(
                f"converting {task.spec.id} for LiteRT: once per machine (about 20 s, progress waits meanwhile); "
                f"later runs reuse it from {cache_dir() / 'litert'}"
            )
        shards = iter_shards(task.root, task.to_score, shard_size)
        result.timings, result.saved = _score_pending(client, shards, task, options, len(task.to_score))
    return result


def _scoring_options(task: ScoringTask, client, plan) -> ScoringOptions:
    config = task.config
    if plan is not None:
        threads, decode_threads = plan.inference_threads, plan.decode_threads
    else:  # attached cluster: the smallest share any worker has of its host
        from .cluster import worker_hosts

        threads, decode_threads = min(
            (threads_for_worker(cores, count) for cores, count in worker_hosts(client).values()), default=(1, 1)
        )
    source = location(task.root, config.storage_options)  # the input root: a folder or a prefix
    return ScoringOptions(
        storage=source.storage_options,
        # A run of fewer images than a batch gets a batch of its size: the interpreter pads every batch,
        # and six images padded to 32 cost a first run half a second on 2 cores (results are the same).
        batch_size=max(1, min(config.batch_size, len(task.to_score))),
        top_k=config.top_k,
        threshold=config.threshold,
        allowed=task.allowed,
        backend=config.backend,
        threads=threads,
        decode_threads=max(decode_threads, source.concurrent_reads),  # enough reads in flight to hide latency
        embeddings=config.embeddings,
        quantize=config.quantize,
        content_hash=config.hash,
        exif=config.exif,
    )


def _score_pending(client, shards, task: ScoringTask, options: ScoringOptions, total: int) -> tuple[dict, int]:
    """Keep a bounded window of shards in flight: ten thousand shards are never all futures at once.
    Returns the per-task timings summed by stage and the rows saved; an exception that stops it
    carries the rows saved so far (``saved_rows``), which the next run reuses."""
    from distributed import as_completed
    from distributed.scheduler import NoWorkerError

    from .cluster import submit_shards

    timings: dict = {}
    saved = 0
    progress = progress_display(total, task.config.progress, task.config.progress_interval)
    client.subscribe_topic(PROGRESS_TOPIC, lambda event: progress.update(event[1]))
    client.subscribe_topic(WARNINGS_TOPIC, say_forwarded_warning)  # worker processes' warnings, said here once
    not_a_file = failures_of_no_file()
    token = secrets.token_hex(4)
    window = max(8, 4 * len(client.scheduler_info().get("workers", {}) or [1]))
    pending = iter(shards)
    by_key = {}

    def submit(count: int) -> list:
        batch = list(itertools.islice(pending, count))
        futures = submit_shards(
            client,
            score_shard,
            batch,
            task.spec,
            options,
            retries=task.config.retries,
            key_prefix=f"batchclf-{token}",
        )
        by_key.update({f.key: s for f, s in zip(futures, batch)})
        return futures

    try:
        running = as_completed(submit(window))
        for future in running:
            shard = by_key.pop(future.key)
            try:
                table, shard_timings = future.result()
            except not_a_file:
                raise  # the storage or the cluster failed, not a file: stop, keeping the parts written so far
            except Exception as error:  # failed on every try: find the file that kills the worker
                logger.warning(f"{shard.name} failed ({type(error).__name__}); isolating the file that causes it")
                table, shard_timings = isolate_failing_shard(client, shard, task.spec, options, error), None
            with signals_deferred():  # a part on disk is a part counted in the summary
                task.store.write(shard.name, table)
                saved += table.num_rows
            if shard_timings:
                for key in TIMED_STAGES:
                    timings[key] = timings.get(key, 0.0) + shard_timings[key]
                timings["backend"] = shard_timings["backend"]
            future.release()
            for new in submit(1):
                running.add(new)
    except NoWorkerError as error:
        stopped = NoWorkersError(
            f"no Dask worker has been alive for {error.timeout:.0f} s: each one died and none came back (out of "
            "memory? see the system log); the finished shards are kept: run the same command again to resume"
        )
        stopped.saved_rows = saved
        raise stopped from None
    except BaseException as error:
        error.saved_rows = saved
        raise
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)
        client.unsubscribe_topic(WARNINGS_TOPIC)
        progress.close()
    return timings, saved
