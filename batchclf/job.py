"""The run, end to end: discover → plan → shard → score on Dask workers → write parts → merge.

This is the engine behind both ``batchclf run`` and ``batchclf.classify``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pyarrow.compute as pc

from . import __version__
from .changes import COMPARED, ChangesWriter, open_changes, previous_rows
from .config import RunConfig
from .discover import list_images
from .dispatch import ScoringTask, score
from .errors import (
    AllFilesFailedError,
    BatchclfError,
    FoldersUnreadableError,
    Interrupted,
    MassDropError,
    UsageError,
)
from .machine import WorkerPlan, machine_plan
from .merge import UnusableSourceError, conform, newest_rows
from .models.registry import check_scoring_options, class_indices, resolve_model
from .paths import IMAGE_FORMATS
from .plan import RunPlan, key_of, parts_source, plan_run, previous_output_source, reuse_key_parts, under_folders
from .progress import duration
from .runlog import HEADER, logger, set_run_id
from .shard import shard_name
from .store import Location, LockWait, check_locations, location
from .store.parquet import atomic_parquet, read_parts, read_schema
from .store.parts import PartsStore
from .summary import RunSummary, absolute, skipped_text, utc_now
from .writer import METADATA_KEY, output_schema

ROW_GROUP_ROWS = 65536


def run(config: RunConfig, checked: bool = False, run_id: str | None = None) -> RunSummary:
    """Classify every image ``config`` names and write ``config.output``; return the summary.

    An error or a signal that stops the run carries the summary so far (``error.summary``): how many
    files were planned and how many rows were saved in parts for the next run to reuse. ``checked``:
    the caller already ran ``config.check()`` and ``store.check_locations()`` on this config.
    ``run_id``: the id the caller's log already carries (``summary.new_run_id``; a new one if None).
    Messages go to the ``batchclf`` logger (``runlog``): the run's first line, progress, its summary line.
    """
    started = time.perf_counter()
    summary = RunSummary(run_id=run_id) if run_id else RunSummary()
    set_run_id(summary.run_id)
    try:
        _run(config, summary, started, checked)
    except (BatchclfError, Interrupted) as error:
        summary.saved = getattr(error, "saved_rows", summary.saved)
        summary.seconds, summary.ended = time.perf_counter() - started, utc_now()
        if getattr(error, "summary", None) is None:
            error.summary = summary
        raise
    summary.seconds, summary.ended = time.perf_counter() - started, utc_now()
    _say_summary(summary)
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


def _run(config: RunConfig, summary: RunSummary, started: float, checked: bool) -> None:
    if not checked:  # the command line checks before it forks: a bucket output is probed once, not twice
        config.check()
        check_locations(config)
    plan = _worker_plan(config)
    _say_start(config, plan)
    spec = resolve_model(config.model, config.labels, config.trust_model)
    check_scoring_options(spec, config.backend, config.quantize, config.embeddings)
    allowed = class_indices(spec, config.allow, config.deny)  # unknown labels are refused before any work
    output = location(config.output, config.storage_options)  # a local file, or an object in a bucket
    waiting = time.perf_counter()
    with output.lock(config.wait, LockWait(_say_waiting(output), config.progress_interval)):
        summary.lock_wait_seconds = time.perf_counter() - waiting
        left_out: set[str] = set()  # sources found unusable: their files are scored again
        while True:
            try:
                _attempt(config, spec, allowed, output, summary, started, left_out, plan)
                return
            except UnusableSourceError as error:
                if error.name in left_out:  # the same source twice: no way round it
                    raise
                left_out.add(error.name)
                logger.warning(f"cannot use {error.name}: {error.reason}; scoring its files again")


def _say_summary(summary: RunSummary) -> None:
    """The run's last line (before an error that ends it, if any), after the files left out for their extension."""
    if summary.skipped_line():
        logger.info(summary.skipped_line(), extra={"fields": {"skipped_by_extension": summary.skipped_by_extension}})
    keep = ("files", "scored", "ok", "errors", "shards")
    fields = {name: getattr(summary, name) for name in keep}
    fields.update(seconds=round(summary.seconds, 3), images_per_second=round(summary.images_per_second, 2))
    logger.info(summary.line(), extra={"fields": fields})


def _worker_plan(config: RunConfig) -> WorkerPlan | None:
    """The embedded cluster's plan, made once (it may ask a child process about GPUs); None when the run
    attaches to a cluster (``--scheduler``, ``--cluster slurm``)."""
    if config.scheduler or config.scheduler_file or config.cluster != "local":
        return None
    return machine_plan(config.workers, config.backend, config.quantize, config.in_process)


def _say_start(config: RunConfig, plan: WorkerPlan | None) -> None:
    """The run's first line: version, input, output, model, and where it runs."""
    if plan is not None:
        backend = config.backend if config.backend != "auto" else ("tf" if plan.gpus else "litert")
        where = "in this process" if plan.in_process else (f"on GPU {','.join(plan.gpus)}" if plan.gpus else "")
        workers = f"{plan.workers} worker{'s' if plan.workers > 1 else ''} {where}".strip()
        text = f"{workers}, {plan.inference_threads} inference and {plan.decode_threads} decode threads each"
    else:
        backend = config.backend
        text = f"workers of {config.scheduler or config.scheduler_file or config.cluster_config}"
    dashboard = config.dashboard_address if plan is not None and config.dashboard_address else "none"
    fields = {
        "batchclf_version": __version__,
        "input": str(config.input),
        "output": str(config.output),
        "model": config.model,
        "backend": backend,
        "workers": plan.workers if plan else None,
        "inference_threads": plan.inference_threads if plan else None,
        "decode_threads": plan.decode_threads if plan else None,
        "dashboard": dashboard,
    }
    logger.info(
        f"batchclf {__version__} run: {config.input} -> {config.output}, model {config.model}, backend {backend}, "
        f"{text}, dashboard {dashboard}",
        extra={HEADER: True, "fields": fields},
    )


def _say_waiting(output: Location):
    def say(holder: str, waited: float) -> None:
        still = f"still waiting ({duration(waited)} so far)" if waited else "waiting"
        logger.info(
            f"{still} for the lock on {output}: another batchclf run holds it ({holder})",
            extra={"fields": {"lock_holder": holder, "waited_seconds": round(waited)}},
        )

    return say


def _attempt(config, spec, allowed, output: Location, summary, started, left_out: set[str], plan) -> None:
    """List, plan, score and write once; a source that turns out unusable on the way raises
    ``UnusableSourceError`` and the run goes round again without it, reusing the parts made so far."""
    stages = summary.stage_seconds
    with _timed(stages, "listing"):
        listing = list_images(
            config.input, config.include, config.exclude, config.include_hidden, storage_options=config.storage_options
        )
    listing.batches = _time_spent_in(listing.batches, stages)  # the walk streams: it runs as the plan reads it
    root = str(listing.root)
    key_parts = reuse_key_parts(spec, config, root)
    key = key_of(key_parts)
    store = PartsStore(output, key)
    message = store.open()
    if message:
        logger.info(message)
    listed_before = stages["listing"]
    with _timed(stages, "planning"):
        worker_plan, plan = plan, _plan(config, output, listing, store, key_parts, left_out)
    stages["planning"] -= stages["listing"] - listed_before
    summary.skipped_by_extension = dict(listing.skipped)  # complete: the planner walked the whole listing
    if plan.files == 0 and not plan.kept:
        skipped = skipped_text(listing.skipped)
        raise UsageError(
            f"no image files found in {config.input} (looked for {' '.join(IMAGE_FORMATS)}"
            f"{'; ' + skipped if skipped else ''}); check the path and --include/--exclude"
        )
    for folder, reason in plan.unreadable:
        logger.warning(f"cannot read folder {folder} ({reason}); its previous rows are kept, marked unverified")
    if config.incremental:
        logger.info(plan.line())
        if plan.drops_too_much(config.max_drop):
            raise MassDropError(
                f"--incremental would drop {len(plan.dropped)} of the {plan.reusable} rows it could reuse "
                f"({len(plan.dropped) / plan.reusable:.0%}, more than --max-drop {config.max_drop:g}); "
                f"{config.output} is left as it was: check that the input is complete (a share unmounted, "
                "a copy half-synced), or pass --max-drop 1 if the files were deleted on purpose"
            )
    if plan.resumed:
        logger.info(f"resuming: {plan.resumed} rows reused from the parts of an earlier run")
    summary.files, summary.scored = plan.files + plan.kept_unverified, len(plan.to_score)
    summary.incremental = plan.record() if config.incremental else None
    summary.rescore_reason = plan.reason if config.incremental else None
    summary.unreadable = [folder for folder, _ in plan.unreadable]
    summary.shards = 0
    if len(plan.to_score):
        try:
            with _timed(stages, "scoring"):
                scoring = score(ScoringTask(config, spec, allowed, root, plan.to_score, store, worker_plan))
        finally:  # the parts are written between the shards: that time is the writing stage, not scoring
            stages["scoring"] -= store.write_seconds
            stages["writing"] += store.write_seconds
        summary.shards, summary.task_seconds, summary.saved = scoring.shards, scoring.timings, scoring.saved
        summary.plan, summary.dashboard = scoring.plan, scoring.dashboard
    parts = [store.part_path(shard_name(index)) for index in range(summary.shards)]
    summary.count_errors(plan.kept_errors + _error_messages(parts))
    metadata = {
        "run_id": summary.run_id,
        "model": spec.id,
        "batchclf_version": __version__,
        "run_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input_root": root,
        "options": config.recorded_options(),
        "result_options": config.result_options(),
        "reuse_key": key,
        "reuse_key_parts": key_parts,  # what the next run names when it cannot reuse these rows
        "files": summary.files,
        "scored": summary.scored,  # the rest were reused from the previous output or earlier parts
        "ok": summary.ok,
        "errors": summary.errors,
        "unreadable_folders": summary.unreadable,
        "seconds": round(time.perf_counter() - started, 3),
    }
    schema = output_schema(_embedding_size(parts + plan.source_files), content_hash=config.hash, exif=config.exif)
    sources = [*plan.sources, parts_source(parts)] if parts else plan.sources
    with _timed(stages, "merging"), contextlib.ExitStack() as stack:
        changes = None
        if config.changes is not None:  # replaced after the output, and only if the output was
            target = location(config.changes, config.storage_options)
            changes = stack.enter_context(open_changes(target, config.changes_format()))
        # an unusable source (the previous output included): the next attempt reuses these parts
        write_output(output, schema, metadata, sources, plan, changes, _compared_with(output, changes, left_out))
    if changes is not None:
        summary.changes = {"file": absolute(config.changes), **changes.counts}
        counts = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in changes.counts.items())
        logger.info(f"changes: {counts}, listed in {config.changes}")
    if not config.keep_parts:
        store.remove()


@contextlib.contextmanager
def _timed(stages: dict, stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        stages[stage] += time.perf_counter() - started


def _time_spent_in(batches, stages: dict):
    """``batches``, adding the time spent waiting on each to the listing stage."""
    iterator = iter(batches)
    while True:
        with _timed(stages, "listing"):
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


def _compared_with(output: Location, changes, left_out: set[str]):
    """The previous output's rows for the changes file (None: every path is new)."""
    if changes is None:
        return None
    if str(output) in left_out:
        logger.warning(f"changes: {output} cannot be read; every path is listed as new")
        return None
    return previous_rows(output)


def _plan(config: RunConfig, output, listing, store: PartsStore, key_parts: dict, left_out: set[str]) -> RunPlan:
    """Compare the listing with what may be reused: last night's output (incremental) and earlier parts,
    less the sources found unusable (``left_out``)."""
    sources, files, reason = [], [], None
    if config.incremental:
        source, reason = previous_output_source(output, key_parts, config.hash)
        if source is not None and source.name in left_out:
            source, reason = None, f"{output} cannot be used"
        if source is not None:
            sources.append(source)
            files.append(output)
    for parts in store.earlier_attempts():
        source = parts_source(parts)
        if source.name not in left_out:
            sources.append(source)
            files.extend(parts)
    plan = plan_run(listing, sources, config.hash, config.keep_error_rows, first_is_output=bool(files[:1] == [output]))
    plan.reason = reason
    plan.source_files = files
    return plan


def write_output(
    output, schema, metadata: dict, sources: list, plan: RunPlan, changes: ChangesWriter | None = None, previous=None
) -> None:
    """Merge the reusable rows and this run's parts into ``output``, streaming, newest row winning;
    with ``changes``, compare the rows written with the ``previous`` output's as they pass.

    Rows of files that are gone are dropped; rows under a folder that could not be read are kept
    and marked ``unverified``. Memory stays at a few batches whatever the number of rows.
    """
    plain = schema.remove_metadata()
    unreadable = [folder for folder, _ in plan.unreadable]
    metadata_bytes = {METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()}
    with atomic_parquet(output, plain.with_metadata(metadata_bytes)) as writer:

        def written():
            for table in newest_rows([source(None) for source in sources], plain):
                if len(plan.dropped):
                    table = table.filter(pc.invert(pc.is_in(table["path"], value_set=plan.dropped)))
                # Every row left is of a file listed (and so checked) now, or under a folder that could not be read.
                marked = under_folders(table["path"], unreadable)
                table = table.set_column(table.schema.get_field_index("unverified"), "unverified", marked)
                writer.write_table(
                    table.cast(plain).replace_schema_metadata(metadata_bytes), row_group_size=ROW_GROUP_ROWS
                )
                yield conform(table, COMPARED)

        if changes is None:
            for _ in written():
                pass
        else:
            changes.compare(written(), previous)


def _error_messages(parts: list[Location]) -> list[str]:
    """The error column of this run's error rows."""
    messages: list[str] = []
    for table in read_parts(parts, ["status", "error"]):
        messages += table.filter(pc.equal(table["status"], "error"))["error"].to_pylist()
    return messages


def _embedding_size(files: list[Location]) -> int | None:
    for file in files[:1]:
        schema = read_schema(file)
        if "embedding" in schema.names:
            return schema.field("embedding").type.list_size
    return None
