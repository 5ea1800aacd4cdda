"""The run, end to end: discover → shard → score on Dask workers → write parts → merge.

This is the engine behind both ``batchclf run`` and ``batchclf.classify``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import pyarrow.compute as pc

from . import __version__
from .backends import cache_dir
from .config import RunConfig
from .discover import list_images
from .distribute import IN_PROCESS_TASKS, connect, submit_shards, threads_for_worker, worker_hosts
from .errors import AllFilesFailedError, FoldersUnreadableError, UsageError
from .isolate import isolate_failing_shard
from .merge import newest_rows
from .models.registry import ModelSpec, check_scoring_options, resolve_model
from .plan import RunPlan, parts_source, plan_run, previous_output_source, under_folders
from .shard import MIN_SHARDS, balanced_shard_size, iter_shards, shard_name
from .store import Location, location
from .store.parquet import atomic_parquet, read_parts, read_schema
from .store.parts import PartsStore
from .worker import PROGRESS_TOPIC, ScoringOptions, calibration_sample, conversion_pending, score_shard
from .writer import METADATA_KEY, output_schema

ROW_GROUP_ROWS = 65536
IN_PROCESS_MIN_SHARDS = 2 * IN_PROCESS_TASKS  # measured: 400 12 MP JPEGs ~6 % faster than with 16 shards


@dataclass
class RunSummary:
    files: int = 0  # rows in the output
    scored: int = 0  # of which this run scored; the rest were reused
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    shards: int = 0
    errors_by_kind: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    dashboard: str | None = None
    incremental: dict | None = None
    unreadable: list = field(default_factory=list)  # folders that could not be listed
    plan: dict | None = None  # the embedded cluster's worker plan (None: attached or SLURM cluster)

    @property
    def images_per_second(self) -> float:
        """Images scored per second: reused rows cost nothing and are not counted."""
        return self.scored / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        speed = f"{self.images_per_second:.1f} images/s" if self.scored else "nothing needed scoring"
        scored = f" ({self.scored} scored)" if self.scored != self.files else ""
        return f"{self.files} files{scored}, {self.ok} ok, {self.errors} errors, {self.seconds:.1f} s, {speed}"


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


PATH_FORMAT = 2  # path texts with the backslash escaped (discover.path_text)


def reuse_key(spec: ModelSpec, config: RunConfig, root: str) -> str:
    """What a reusable row must have been made with: model, weights, class names, result options, root.

    Checked for last night's output and for every part file, so no row made by another model or
    with other options is ever carried into an output.
    """
    record = {
        "model": spec.id,
        "weights": _weights_version(spec),
        "labels": hashlib.sha256("\n".join(spec.labels).encode()).hexdigest(),
        "options": config.result_options(),
        "input_root": root,
        "path_format": PATH_FORMAT,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def _weights_version(spec: ModelSpec) -> str | None:
    """A built-in model's weights come from a pip package: its version names them (user models are hashed)."""
    from importlib.metadata import PackageNotFoundError, version

    from .models.registry import BUILTIN_MODELS

    builtin = BUILTIN_MODELS.get(spec.source) if spec.kind == "builtin" else None
    if builtin is None:
        return None
    try:
        return version(builtin.package)
    except PackageNotFoundError:
        return None


def _scoring_options(
    config: RunConfig, allowed: tuple[int, ...] | None, client, plan, root: str, paths: list[str]
) -> ScoringOptions:
    if plan is not None:
        threads, decode_threads = plan.inference_threads, plan.decode_threads
    else:  # attached cluster: the smallest share any worker has of its host
        threads, decode_threads = min(
            (threads_for_worker(cores, count) for cores, count in worker_hosts(client).values()), default=(1, 1)
        )
    source = location(root, config.storage_options)  # the input root: a folder or a prefix
    return ScoringOptions(
        storage=source.storage_options,
        batch_size=config.batch_size,
        top_k=config.top_k,
        threshold=config.threshold,
        allowed=allowed,
        backend=config.backend,
        threads=threads,
        decode_threads=max(decode_threads, source.concurrent_reads),  # enough reads in flight to hide latency
        embeddings=config.embeddings,
        quantize=config.quantize,
        calibration=calibration_sample(root, paths) if config.quantize else (),
        content_hash=config.hash,
    )


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, dynamic_ncols=True, smoothing=0.1, file=sys.stderr)


def run(config: RunConfig, log=print) -> RunSummary:
    """Classify every image ``config`` names and write ``config.output``; return the summary."""
    started = time.perf_counter()
    config.validate()
    spec = resolve_model(config.model, config.labels, config.trust_model)
    check_scoring_options(spec, config.backend, config.quantize, config.embeddings)
    allowed = _class_filter(spec, config.allow, config.deny)  # unknown labels are refused before any work
    output = location(config.output, config.storage_options)  # a local file, or an object in a bucket
    with output.lock(config.wait):
        listing = list_images(
            config.input, config.include, config.exclude, config.include_hidden, storage_options=config.storage_options
        )
        root = str(listing.root)
        key = reuse_key(spec, config, root)
        store = PartsStore(output, key)
        message = store.open()
        if message:
            log(message, file=sys.stderr)
        plan = _plan(config, output, listing, store, key)
        if plan.files == 0 and not plan.kept:
            raise UsageError(
                f"no image files found in {config.input} (looked for .jpg .jpeg .png .bmp .gif .webp "
                ".tif .tiff); check the path and --include/--exclude"
            )
        for folder, reason in plan.unreadable:
            log(
                f"cannot read folder {folder} ({reason}); its previous rows are kept, marked unverified",
                file=sys.stderr,
            )
        if config.incremental:
            log(plan.line(), file=sys.stderr)
        if plan.resumed:
            log(f"resuming: {plan.resumed} rows reused from the parts of an earlier run", file=sys.stderr)
        summary = RunSummary(files=plan.files + plan.kept_unverified, scored=len(plan.to_score))
        summary.incremental = plan.record() if config.incremental else None
        summary.unreadable = [folder for folder, _ in plan.unreadable]
        if len(plan.to_score):
            _score(config, spec, allowed, root, plan, store, summary, log)
        parts = [store.part_path(shard_name(index)) for index in range(summary.shards)]
        _count_statuses(plan.kept_errors, parts, summary)
        metadata = {
            "model": spec.id,
            "batchclf_version": __version__,
            "run_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "input_root": root,
            "options": config.recorded_options(),
            "result_options": config.result_options(),
            "reuse_key": key,
            "files": summary.files,
            "scored": summary.scored,  # the rest were reused from the previous output or earlier parts
            "ok": summary.ok,
            "errors": summary.errors,
            "unreadable_folders": summary.unreadable,
            "seconds": round(time.perf_counter() - started, 3),
        }
        schema = output_schema(_embedding_size(parts + plan.source_files), content_hash=config.hash)
        write_output(output, schema, metadata, [*plan.sources, parts_source(parts)], plan)
        if not config.keep_parts:
            store.remove()
    summary.seconds = time.perf_counter() - started
    if summary.ok == 0:
        error = AllFilesFailedError(
            f"all {summary.files} files failed to decode; see the error column of {config.output}"
        )
        error.summary = summary
        raise error
    if summary.unreadable:
        error = FoldersUnreadableError(
            f"{len(summary.unreadable)} folder(s) could not be read ({summary.unreadable[0]} ...); their previous "
            f"rows were kept and marked unverified in {config.output}: fix their permissions and run again"
        )
        error.summary = summary
        raise error
    return summary


def _plan(config: RunConfig, output, listing, store: PartsStore, key: str) -> RunPlan:
    """Compare the listing with what may be reused: last night's output (incremental) and earlier parts."""
    sources, files, reason = [], [], None
    if config.incremental:
        source, reason = previous_output_source(output, key, config.hash)
        if source is not None:
            sources.append(source)
            files.append(output)
    for parts in store.earlier_attempts():
        sources.append(parts_source(parts))
        files.extend(parts)
    plan = plan_run(listing, sources, config.hash, config.keep_error_rows, first_is_output=bool(files[:1] == [output]))
    plan.reason = reason
    plan.source_files = files
    return plan


def write_output(output, schema, metadata: dict, sources: list, plan: RunPlan) -> None:
    """Merge the reusable rows and this run's parts into ``output``, streaming, newest row winning.

    Rows of files that are gone are dropped; rows under a folder that could not be read are kept
    and marked ``unverified``. Memory stays at a few batches whatever the number of rows.
    """
    plain = schema.remove_metadata()
    unreadable = [folder for folder, _ in plan.unreadable]
    metadata_bytes = {METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()}
    with atomic_parquet(output, plain.with_metadata(metadata_bytes)) as writer:
        for table in newest_rows([source(None) for source in sources], plain):
            if len(plan.dropped):
                table = table.filter(pc.invert(pc.is_in(table["path"], value_set=plan.dropped)))
            # Every row left is of a file listed (and so checked) now, or under a folder that could not be read.
            marked = under_folders(table["path"], unreadable)
            table = table.set_column(table.schema.get_field_index("unverified"), "unverified", marked)
            writer.write_table(table.cast(plain).replace_schema_metadata(metadata_bytes), row_group_size=ROW_GROUP_ROWS)


def _score(config, spec, allowed, root, plan, store, summary, log) -> None:
    """Cut what is left to score into shards and score them on a Dask cluster; every result lands in the
    parts store as it finishes.

    Shards are made as they are submitted: their paths never all live as Python strings. The
    in-process worker shares one model between its tasks, so a few shards keep it busy to the end;
    separate workers need more, so that none idles while another finishes.
    """
    scheduler_file = config.scheduler_file and str(config.scheduler_file)
    cluster_config = config.cluster_config if config.cluster == "slurm" else None
    with connect(
        config.scheduler,
        scheduler_file,
        config.workers,
        config.dashboard_address,
        cluster_config,
        backend=config.backend,
        quantize=config.quantize,
        in_process=config.in_process,
    ) as (client, worker_plan):
        summary.plan = asdict(worker_plan) if worker_plan else None
        min_shards = IN_PROCESS_MIN_SHARDS if worker_plan and worker_plan.in_process else MIN_SHARDS
        shard_size = balanced_shard_size(len(plan.to_score), config.shard_size, min_shards)
        summary.shards = -(-len(plan.to_score) // shard_size)
        shards = iter_shards(root, plan.to_score, shard_size)
        summary.dashboard = client.dashboard_link
        log(f"dashboard: {client.dashboard_link}", file=sys.stderr)
        options = _scoring_options(config, allowed, client, worker_plan, root, plan.to_score)
        if conversion_pending(spec, options):
            log(
                f"converting {spec.id} for LiteRT: once per machine (about 20 s, the bar waits meanwhile); "
                f"later runs reuse it from {cache_dir() / 'litert'}",
                file=sys.stderr,
            )
        _score_pending(client, shards, spec, options, config, store, summary, log)


def _score_pending(client, shards, spec, options, config, store, summary, log) -> None:
    """Keep a bounded window of shards in flight: ten thousand shards are never all futures at once."""
    from distributed import as_completed

    bar = _progress_bar(summary.scored, config.progress)
    client.subscribe_topic(PROGRESS_TOPIC, lambda event: bar.update(min(event[1], bar.total - bar.n)))
    token = hashlib.sha256(f"{time.time()}{id(store)}".encode()).hexdigest()[:8]
    window = max(8, 4 * len(client.scheduler_info().get("workers", {}) or [1]))
    pending = iter(shards)
    by_key = {}

    def submit(count: int) -> list:
        batch = list(itertools.islice(pending, count))
        futures = submit_shards(
            client, score_shard, batch, spec, options, retries=config.retries, key_prefix=f"batchclf-{token}"
        )
        by_key.update({f.key: s for f, s in zip(futures, batch)})
        return futures

    try:
        running = as_completed(submit(window))
        for future in running:
            shard = by_key.pop(future.key)
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
            for new in submit(1):
                running.add(new)
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)
        bar.close()


def _count_statuses(kept_errors: list[str], parts: list[Location], summary: RunSummary) -> None:
    """Count error rows, by kind (the message up to its first colon), over kept rows and new parts."""
    messages = list(kept_errors)
    for table in read_parts(parts, ["status", "error"]):
        messages += table.filter(pc.equal(table["status"], "error"))["error"].to_pylist()
    for message in messages:
        kind = (message or "unknown").split(":")[0].split(";")[0].split(" (")[0]
        summary.errors_by_kind[kind] = summary.errors_by_kind.get(kind, 0) + 1
    summary.errors = len(messages)
    summary.ok = summary.files - summary.errors


def _embedding_size(files: list[Location]) -> int | None:
    for file in files[:1]:
        schema = read_schema(file)
        if "embedding" in schema.names:
            return schema.field("embedding").type.list_size
    return None


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
        "scored": summary.scored,
        "shards": summary.shards,
        "unreadable_folders": summary.unreadable,
        "incremental": summary.incremental,
        "seconds": round(summary.seconds, 3),
        "images_per_second": round(summary.images_per_second, 2),
        "timings": summary.timings,
        "worker_plan": summary.plan,
        "versions": versions(),
    }
