"""The run, end to end: discover → shard → score on Dask workers → write parts → merge.

This is the engine behind both ``batchclf run`` and ``batchclf.classify``.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .config import RunConfig
from .discover import discover_images, path_text
from .distribute import connect, submit_shards, threads_for_worker, worker_hosts
from .errors import AllFilesFailedError, UsageError
from .incremental import file_signatures, plan_incremental
from .isolate import isolate_failing_shard
from .models.registry import ModelSpec, resolve_model
from .shard import balanced_shard_size, make_shards
from .worker import PROGRESS_TOPIC, ScoringOptions, calibration_sample, score_shard
from .writer import PartsStore, merge_parts, output_lock, output_schema


@dataclass
class RunSummary:
    files: int = 0
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    shards: int = 0
    reused_shards: int = 0
    errors_by_kind: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    dashboard: str | None = None
    incremental: dict | None = None

    @property
    def images_per_second(self) -> float:
        return self.files / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.files} files, {self.ok} ok, {self.errors} errors, {self.seconds:.1f} s, "
            f"{self.images_per_second:.1f} images/s"
        )


def _class_filter(spec: ModelSpec, allow: tuple[str, ...], deny: tuple[str, ...]) -> tuple[int, ...] | None:
    names = allow or deny
    if not names:
        return None
    index = {label: i for i, label in enumerate(spec.labels)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise UsageError(
            f"unknown label(s) {', '.join(map(repr, unknown[:5]))} for model {spec.id}; "
            "labels must match the model's class names exactly"
        )
    if allow:
        return tuple(sorted(index[n] for n in allow))
    denied = {index[n] for n in deny}
    kept = tuple(i for i in range(len(spec.labels)) if i not in denied)
    if not kept:
        raise UsageError("--deny removes every class; nothing would be left to predict")
    return kept


def _fingerprint(spec: ModelSpec, options: ScoringOptions, root: str, paths: list[str], config: RunConfig) -> str:
    digest = hashlib.sha256()
    scoring = (
        spec.fingerprint,
        options.top_k,
        options.threshold,
        options.allowed,
        options.backend,
        options.quantize,
        options.embeddings,
        config.shard_size,
        root,
    )
    digest.update(repr(scoring).encode())
    for path in paths:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()[:24]


def _scoring_options(
    config: RunConfig, allowed: tuple[int, ...] | None, client, plan, root: str, paths: list[str]
) -> ScoringOptions:
    if plan is not None:
        threads, decode_threads = plan.inference_threads, plan.decode_threads
    else:  # attached cluster: the smallest share any worker has of its host
        threads, decode_threads = min(
            (threads_for_worker(cores, count) for cores, count in worker_hosts(client).values()), default=(1, 1)
        )
    return ScoringOptions(
        batch_size=config.batch_size,
        top_k=config.top_k,
        threshold=config.threshold,
        allowed=allowed,
        backend=config.backend,
        threads=threads,
        decode_threads=decode_threads,
        embeddings=config.embeddings,
        quantize=config.quantize,
        calibration=calibration_sample(root, paths) if config.quantize else (),
    )


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, dynamic_ncols=True, smoothing=0.1, file=sys.stderr)


def run(config: RunConfig, log=print) -> RunSummary:
    """Classify every image ``config`` names and write ``config.output``; return the summary."""
    started = time.perf_counter()
    config.validate()
    spec = resolve_model(config.model, config.labels)
    allowed = _class_filter(spec, config.allow, config.deny)  # unknown labels are refused before any work
    with output_lock(config.output, config.wait):
        root_path, paths = discover_images(config.input, config.include, config.exclude, config.include_hidden)
        if not paths:
            raise UsageError(
                f"no image files found in {config.input} (looked for .jpg .jpeg .png .bmp .gif .webp "
                ".tif .tiff); check the path and --include/--exclude"
            )
        root = str(root_path)
        summary = RunSummary(files=len(paths))
        labels_digest = hashlib.sha256("\n".join(spec.labels).encode()).hexdigest()[:16]
        result_options = {"model": spec.id, "labels": labels_digest, **config.result_options()}
        carried, hashes, to_score = None, None, paths
        if config.incremental:
            plan = plan_incremental(config.output, root, paths, result_options, config.hash)
            log(plan.line(), file=sys.stderr)
            to_score, carried = plan.to_score, plan.kept
            summary.incremental = {
                "reused": plan.reused,
                "scored": len(plan.to_score),
                "new": plan.new,
                "changed": plan.changed,
                "dropped": plan.dropped,
                "reason": plan.reason,
            }
            hashes = plan.hashes  # already read every file when it compared content
        if config.hash and hashes is None:
            hashes = dict(zip(map(path_text, paths), (s[0] for s in file_signatures(root, paths, use_hash=True))))
        shards = make_shards(root, to_score, balanced_shard_size(len(to_score), config.shard_size))
        summary.shards = len(shards)
        store = _score(config, spec, allowed, root, shards, summary, log) if shards else None
        parts = [store.part_path(s.name) for s in shards] if store else []
        tables = [pq.read_table(p, columns=["status", "error"]) for p in parts]
        if carried is not None:
            tables.append(carried.select(["status", "error"]))
        _count_statuses(tables, summary)
        embedding_size = _embedding_size(parts[0] if parts else None, carried)
        metadata = {
            "model": spec.id,
            "batchclf_version": __version__,
            "run_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "input_root": root,
            "options": config.recorded_options(),
            "result_options": result_options,
            "files": summary.files,
            "scored": len(to_score),  # the rest were carried over by --incremental
            "ok": summary.ok,
            "errors": summary.errors,
            "seconds": round(time.perf_counter() - started, 3),
        }
        schema = output_schema(embedding_size, content_hash=config.hash)
        merge_parts(parts, config.output, schema, metadata, carried=carried, hashes=hashes)
        if store and not config.keep_parts:
            store.remove()
    summary.seconds = time.perf_counter() - started
    if summary.ok == 0:
        error = AllFilesFailedError(
            f"all {summary.files} files failed to decode; see the error column of {config.output}"
        )
        error.summary = summary
        raise error
    return summary


def _score(
    config: RunConfig, spec: ModelSpec, allowed: tuple[int, ...] | None, root: str, shards, summary: RunSummary, log
) -> PartsStore:
    """Score the shards not already done on a Dask cluster; every result lands in the parts store."""
    paths = [p for shard in shards for p in shard.paths]
    scheduler_file = config.scheduler_file and str(config.scheduler_file)
    cluster_config = config.cluster_config if config.cluster == "slurm" else None
    with connect(config.scheduler, scheduler_file, config.workers, config.dashboard_address, cluster_config) as (
        client,
        plan,
    ):
        summary.dashboard = client.dashboard_link
        log(f"dashboard: {client.dashboard_link}", file=sys.stderr)
        options = _scoring_options(config, allowed, client, plan, root, paths)
        store = PartsStore(config.output, _fingerprint(spec, options, root, paths, config))
        message = store.open()
        if message:
            log(message, file=sys.stderr)
        pending = [s for s in shards if not store.is_done(s.name)]
        summary.reused_shards = len(shards) - len(pending)
        if summary.reused_shards:
            log(f"resuming: {summary.reused_shards} of {len(shards)} shards already done", file=sys.stderr)
        _score_pending(client, pending, spec, options, config, store, summary, len(paths), log)
    return store


def _score_pending(client, pending, spec, options, config, store, summary, total, log) -> None:
    from distributed import as_completed

    bar = _progress_bar(total, config.progress)
    bar.update(total - sum(len(s.paths) for s in pending))
    client.subscribe_topic(PROGRESS_TOPIC, lambda event: bar.update(min(event[1], bar.total - bar.n)))
    try:
        token = hashlib.sha256(f"{time.time()}{id(store)}".encode()).hexdigest()[:8]
        futures = submit_shards(
            client, score_shard, pending, spec, options, retries=config.retries, key_prefix=f"batchclf-{token}"
        )
        shards = {f.key: s for f, s in zip(futures, pending)}
        for future in as_completed(futures):
            shard = shards[future.key]
            try:
                table, timings = future.result()
            except Exception as error:  # failed on every try: find the file that kills the worker
                log(f"{shard.name} failed ({type(error).__name__}); isolating the file that causes it", file=sys.stderr)
                table, timings = isolate_failing_shard(client, shard, spec, options, error), None
            store.write(shard.name, table)
            if timings:
                for key in ("decode_wait", "inference", "build", "total"):
                    summary.timings[key] = summary.timings.get(key, 0.0) + timings[key]
                summary.timings["backend"] = timings["backend"]
            future.release()
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)
        bar.close()


def _count_statuses(tables, summary: RunSummary) -> None:
    """Count ok and error rows, and errors by kind (the message up to its first colon)."""
    for table in tables:
        errors = table.filter(pc.equal(table["status"], "error"))
        summary.errors += errors.num_rows
        for message in errors["error"].to_pylist():
            kind = message.split(":")[0].split(";")[0].split(" (")[0]
            summary.errors_by_kind[kind] = summary.errors_by_kind.get(kind, 0) + 1
    summary.ok = summary.files - summary.errors


def _embedding_size(part: Path | None, carried) -> int | None:
    schema = pq.read_schema(part) if part else carried.schema if carried is not None else None
    if schema is None or "embedding" not in schema.names:
        return None
    return schema.field("embedding").type.list_size


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for package in ("batchclf", "tensorflow", "keras", "ai-edge-litert", "dask", "distributed", "pyarrow", "pillow"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def summary_record(summary: RunSummary, config: RunConfig, exit_code: int, error: str | None = None) -> dict:
    """What ``--summary FILE.json`` holds, for monitoring."""
    return {
        "status": "ok" if exit_code == 0 else "failed",
        "exit_code": exit_code,
        "error": error,
        "input": str(config.input),
        "output": str(config.output),
        "model": config.model,
        "files": summary.files,
        "ok": summary.ok,
        "errors": summary.errors,
        "errors_by_kind": summary.errors_by_kind,
        "shards": summary.shards,
        "reused_shards": summary.reused_shards,
        "incremental": summary.incremental,
        "seconds": round(summary.seconds, 3),
        "images_per_second": round(summary.images_per_second, 2),
        "timings": summary.timings,
        "versions": versions(),
    }
