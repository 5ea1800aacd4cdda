"""The run, end to end: discover → shard → score on Dask workers → write parts → merge.

This is the engine behind both ``batchclf run`` and ``batchclf.classify``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field

from . import __version__
from .config import RunConfig
from .discover import discover_images
from .distribute import connect, submit_shards, worker_hosts
from .errors import AllFilesFailedError, UsageError
from .models.registry import ModelSpec, resolve_model
from .shard import balanced_shard_size, make_shards
from .worker import PROGRESS_TOPIC, ScoringOptions, calibration_sample, score_shard
from .writer import PartsStore, merge_parts, output_schema


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


def _scoring_options(config: RunConfig, spec: ModelSpec, client, plan, root: str, paths: list[str]) -> ScoringOptions:
    if plan is not None:
        threads, decode_threads = plan.inference_threads, plan.decode_threads
    else:  # attached cluster: the smallest share any worker has of its host
        shares = [max(1, cores // count) for cores, count in worker_hosts(client).values()] or [1]
        threads = decode_threads = min(shares)
    return ScoringOptions(
        batch_size=config.batch_size,
        top_k=config.top_k,
        threshold=config.threshold,
        allowed=_class_filter(spec, config.allow, config.deny),
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
    _class_filter(spec, config.allow, config.deny)  # refuse unknown labels before starting a cluster
    root_path, paths = discover_images(config.input, config.include, config.exclude, config.include_hidden)
    if not paths:
        raise UsageError(
            f"no image files found in {config.input} (looked for .jpg .jpeg .png .bmp .gif .webp "
            ".tif .tiff); check the path and --include/--exclude"
        )
    root = str(root_path)
    shards = make_shards(root, paths, balanced_shard_size(len(paths), config.shard_size))
    summary = RunSummary(files=len(paths), shards=len(shards))

    with connect(
        config.scheduler, config.scheduler_file and str(config.scheduler_file), config.workers, config.dashboard_address
    ) as (client, plan):
        summary.dashboard = client.dashboard_link
        log(f"dashboard: {client.dashboard_link}", file=sys.stderr)
        options = _scoring_options(config, spec, client, plan, root, paths)
        store = PartsStore(config.output, _fingerprint(spec, options, root, paths, config))
        message = store.open()
        if message:
            log(message, file=sys.stderr)
        pending = [s for s in shards if not store.is_done(s.name)]
        summary.reused_shards = len(shards) - len(pending)
        if summary.reused_shards:
            log(f"resuming: {summary.reused_shards} of {len(shards)} shards already done", file=sys.stderr)
        _score_pending(client, pending, spec, options, config, store, summary, len(paths))

    _collect_counts(store, shards, summary)
    schema = output_schema(_embedding_size(store, shards))
    metadata = {
        "model": spec.id,
        "batchclf_version": __version__,
        "run_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input_root": root,
        "options": config.recorded_options(),
        "files": summary.files,
        "ok": summary.ok,
        "errors": summary.errors,
    }
    summary.seconds = time.perf_counter() - started
    metadata["seconds"] = round(summary.seconds, 3)
    merge_parts([store.part_path(s.name) for s in shards], config.output, schema, metadata)
    if not config.keep_parts:
        store.remove()
    if summary.ok == 0:
        raise AllFilesFailedError(
            f"all {summary.files} files failed to decode; see the error column of {config.output}"
        )
    return summary


def _score_pending(client, pending, spec, options, config, store, summary, total) -> None:
    from distributed import as_completed

    bar = _progress_bar(total, config.progress)
    bar.update(summary.files - sum(len(s.paths) for s in pending))
    client.subscribe_topic(PROGRESS_TOPIC, lambda event: bar.update(min(event[1], bar.total - bar.n)))
    try:
        token = hashlib.sha256(f"{time.time()}{id(store)}".encode()).hexdigest()[:8]
        futures = submit_shards(
            client, score_shard, pending, spec, options, retries=config.retries, key_prefix=f"batchclf-{token}"
        )
        names = {f.key: s.name for f, s in zip(futures, pending)}
        for future in as_completed(futures):
            table, timings = future.result()
            store.write(names[future.key], table)
            for key in ("decode_wait", "inference", "build", "total"):
                summary.timings[key] = summary.timings.get(key, 0.0) + timings[key]
            summary.timings["backend"] = timings["backend"]
            future.release()
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)
        bar.close()


def _collect_counts(store: PartsStore, shards, summary: RunSummary) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for shard in shards:
        table = pq.read_table(store.part_path(shard.name), columns=["status", "error"])
        errors = table.filter(pc.equal(table["status"], "error"))
        summary.errors += errors.num_rows
        for message in errors["error"].to_pylist():
            kind = message.split(":")[0].split(";")[0].split(" (")[0]
            summary.errors_by_kind[kind] = summary.errors_by_kind.get(kind, 0) + 1
    summary.ok = summary.files - summary.errors


def _embedding_size(store: PartsStore, shards) -> int | None:
    import pyarrow.parquet as pq

    schema = pq.read_schema(store.part_path(shards[0].name))
    return schema.field("embedding").type.list_size if "embedding" in schema.names else None


def summary_json(summary: RunSummary) -> str:
    return json.dumps({**summary.__dict__, "images_per_second": summary.images_per_second}, indent=2)
