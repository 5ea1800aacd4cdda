"""The run, end to end: discover → plan → shard → score on Dask workers → write parts → merge.

This is the engine behind both ``batchclf run`` and ``batchclf.classify``.
"""

from __future__ import annotations

import json
import sys
import time

import pyarrow.compute as pc

from . import __version__
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
from .merge import UnusableSourceError, newest_rows
from .models.registry import check_scoring_options, class_indices, resolve_model
from .paths import IMAGE_FORMATS
from .plan import RunPlan, parts_source, plan_run, previous_output_source, reuse_key, under_folders
from .shard import shard_name
from .store import Location, check_locations, location
from .store.parquet import atomic_parquet, read_parts, read_schema
from .store.parts import PartsStore
from .summary import RunSummary, skipped_text
from .writer import METADATA_KEY, output_schema

ROW_GROUP_ROWS = 65536


def run(config: RunConfig, log=print, checked: bool = False) -> RunSummary:
    """Classify every image ``config`` names and write ``config.output``; return the summary.

    An error or a signal that stops the run carries the summary so far (``error.summary``): how many
    files were planned and how many rows were saved in parts for the next run to reuse. ``checked``:
    the caller already ran ``config.check()`` and ``store.check_locations()`` on this config.
    """
    started = time.perf_counter()
    summary = RunSummary()
    try:
        _run(config, summary, started, log, checked)
    except (BatchclfError, Interrupted) as error:
        summary.saved = getattr(error, "saved_rows", summary.saved)
        summary.seconds = time.perf_counter() - started
        if getattr(error, "summary", None) is None:
            error.summary = summary
        raise
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


def _run(config: RunConfig, summary: RunSummary, started: float, log, checked: bool) -> None:
    if not checked:  # the command line checks before it forks: a bucket output is probed once, not twice
        config.check()
        check_locations(config)
    spec = resolve_model(config.model, config.labels, config.trust_model)
    check_scoring_options(spec, config.backend, config.quantize, config.embeddings)
    allowed = class_indices(spec, config.allow, config.deny)  # unknown labels are refused before any work
    output = location(config.output, config.storage_options)  # a local file, or an object in a bucket
    with output.lock(config.wait):
        left_out: set[str] = set()  # sources found unusable: their files are scored again
        while True:
            try:
                _attempt(config, spec, allowed, output, summary, started, left_out, log)
                return
            except UnusableSourceError as error:
                if error.name in left_out:  # the same source twice: no way round it
                    raise
                left_out.add(error.name)
                log(f"cannot use {error.name}: {error.reason}; scoring its files again", file=sys.stderr)


def _attempt(config, spec, allowed, output: Location, summary, started, left_out: set[str], log) -> None:
    """List, plan, score and write once; a source that turns out unusable on the way raises
    ``UnusableSourceError`` and the run goes round again without it, reusing the parts made so far."""
    listing = list_images(
        config.input, config.include, config.exclude, config.include_hidden, storage_options=config.storage_options
    )
    root = str(listing.root)
    key = reuse_key(spec, config, root)
    store = PartsStore(output, key)
    message = store.open()
    if message:
        log(message, file=sys.stderr)
    plan = _plan(config, output, listing, store, key, left_out)
    summary.skipped_by_extension = dict(listing.skipped)  # complete: the planner walked the whole listing
    if plan.files == 0 and not plan.kept:
        skipped = skipped_text(listing.skipped)
        raise UsageError(
            f"no image files found in {config.input} (looked for {' '.join(IMAGE_FORMATS)}"
            f"{'; ' + skipped if skipped else ''}); check the path and --include/--exclude"
        )
    for folder, reason in plan.unreadable:
        log(f"cannot read folder {folder} ({reason}); its previous rows are kept, marked unverified", file=sys.stderr)
    if config.incremental:
        log(plan.line(), file=sys.stderr)
        if plan.drops_too_much(config.max_drop):
            raise MassDropError(
                f"--incremental would drop {len(plan.dropped)} of the {plan.reusable} rows it could reuse "
                f"({len(plan.dropped) / plan.reusable:.0%}, more than --max-drop {config.max_drop:g}); "
                f"{config.output} is left as it was: check that the input is complete (a share unmounted, "
                "a copy half-synced), or pass --max-drop 1 if the files were deleted on purpose"
            )
    if plan.resumed:
        log(f"resuming: {plan.resumed} rows reused from the parts of an earlier run", file=sys.stderr)
    summary.files, summary.scored = plan.files + plan.kept_unverified, len(plan.to_score)
    summary.incremental = plan.record() if config.incremental else None
    summary.unreadable = [folder for folder, _ in plan.unreadable]
    summary.shards = 0
    if len(plan.to_score):
        scoring = score(ScoringTask(config, spec, allowed, root, plan.to_score, store), log)
        summary.shards, summary.timings, summary.saved = scoring.shards, scoring.timings, scoring.saved
        summary.plan, summary.dashboard = scoring.plan, scoring.dashboard
    parts = [store.part_path(shard_name(index)) for index in range(summary.shards)]
    summary.count_errors(plan.kept_errors + _error_messages(parts))
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
    sources = [*plan.sources, parts_source(parts)] if parts else plan.sources
    write_output(output, schema, metadata, sources, plan)  # an unusable source: the next attempt reuses these parts
    if not config.keep_parts:
        store.remove()


def _plan(config: RunConfig, output, listing, store: PartsStore, key: str, left_out: set[str]) -> RunPlan:
    """Compare the listing with what may be reused: last night's output (incremental) and earlier parts,
    less the sources found unusable (``left_out``)."""
    sources, files, reason = [], [], None
    if config.incremental:
        source, reason = previous_output_source(output, key, config.hash)
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
