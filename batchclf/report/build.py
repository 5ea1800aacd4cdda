"""Build a report: read the run (and the previous run, and the known labels), make thumbnails, write the page.

Thumbnails are the only costly part and the only part that grows with what is shown, so their number
is capped (``max_thumbnails``): a report over a million rows is the same few MB as one over ten thousand.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import (
    REPORT_CONFUSED_PAIRS,
    REPORT_FOLDER_LABELS,
    REPORT_FOLDERS,
    REPORT_GROUP_DEPTH,
    REPORT_LISTED,
    REPORT_LOW_SCORE,
    REPORT_PER_LABEL,
    REPORT_TOP_LABELS,
)
from ..errors import UsageError
from ..fsutil import creation_error, write_atomically
from ..store import LocalLocation, Location, StorageOptions, is_url, location
from . import run as runs
from .drift import LISTED_PATHS, Drift, compare_runs
from .folders import folder_groups
from .page import LabelSheet, Page, render
from .thumbnails import MISSING, UNAVAILABLE, Thumbnail, make_thumbnails
from .truth import TruthResult, read_truth, score_run

OTHER = "other"


@dataclass(frozen=True)
class ReportConfig:
    output: Path | str  # the Parquet file written by ``batchclf run`` (a URL: an object in a bucket)
    report: Path  # the HTML file to write
    root: Path | str | None = None  # overrides the input root recorded in the Parquet metadata (a folder or URL)
    low: float = REPORT_LOW_SCORE
    per_label: int = REPORT_PER_LABEL
    top: int = REPORT_TOP_LABELS
    compare: Path | str | None = None
    json: Path | None = None
    truth: Path | None = None
    gallery: int = 48  # thumbnails in the low-confidence and changed-prediction galleries
    error_rows: int = 200
    max_thumbnails: int = 1500
    group_depth: int = REPORT_GROUP_DEPTH  # folders under the input root that make one group in "Folders"
    listed: int = REPORT_LISTED  # rows of each list of changed, new and gone paths
    folders: int = REPORT_FOLDERS  # rows of the per-folder table
    folder_labels: int = REPORT_FOLDER_LABELS
    confused_pairs: int = REPORT_CONFUSED_PAIRS
    threads: int | None = None
    memory: int | None = None  # bytes of images decoded at once for thumbnails (None: thumbnails.thumbnail_memory())
    # fsspec options for an output, --compare or input root in a bucket: never printed or written.
    storage_options: StorageOptions = field(default_factory=StorageOptions, repr=False, compare=False)

    def validate(self) -> None:
        if not 0.0 <= self.low <= 1.0:
            raise UsageError(f"--low must be between 0 and 1, got {self.low}")
        if self.per_label < 0:
            raise UsageError(f"--per-label must be 0 or more, got {self.per_label}")
        if self.top < 1:
            raise UsageError(f"--top must be a positive number, got {self.top}")
        if isinstance(self.group_depth, bool) or not isinstance(self.group_depth, int) or self.group_depth < 1:
            raise UsageError(
                f"--group-depth must be 1 or more (1: the top-level folders of the input root), got {self.group_depth}"
            )
        limits = {
            "listed": self.listed,
            "folders": self.folders,
            "folder_labels": self.folder_labels,
            "confused_pairs": self.confused_pairs,
        }
        for name, value in limits.items():
            if value < 0:
                raise UsageError(f"{name} must be 0 or more, got {value}")
        if self.memory is not None and self.memory < 1:
            raise UsageError(f"memory must be a positive number of bytes, got {self.memory}")
        for option, target in (("REPORT", self.report), ("--json", self.json)):
            if target is None:
                continue
            if target.is_dir():
                raise UsageError(f"{option} {target} is a folder; give a file name such as {target}/report.html")
            _check_writable_folder(option, target.absolute().parent)


def _check_writable_folder(option: str, folder: Path) -> None:
    """Refuse a report that could not be written before reading anything: try making a file there."""
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"{option}: {folder} {state}; create the folder first or choose another")
    reason = creation_error(folder)
    if reason:
        raise UsageError(f"{option}: cannot write in folder {folder} ({reason}); choose a folder you can write to")


@dataclass
class ReportSummary:
    report: Path
    rows: int = 0
    thumbnails: int = 0
    bytes: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    drift: Drift | None = None
    truth: TruthResult | None = None

    def line(self) -> str:
        return (
            f"wrote {self.report}: {self.rows:,} rows, {self.thumbnails:,} thumbnails, "
            f"{self.bytes / 1e6:.2f} MB in {self.seconds:.1f} s"
        )


def _input_root(config: ReportConfig, run: runs.Run) -> tuple[Location | None, str, list[str]]:
    """The folder (or URL prefix) thumbnails are read from, the placeholder shown when there is none,
    and warnings about it.

    ``--root`` is the user's word and may be a URL. The root recorded in the output is the word of
    whoever wrote that file, so it is used only as a local folder that exists (where ``open_inside``
    still confines every path to it): a URL there would have the report make requests, with the
    reporter's credentials, to wherever the file says (another bucket, an internal address).
    """
    if config.root is not None:
        root = location(config.root, config.storage_options)
        if not root.is_folder():
            raise UsageError(f"--root {config.root} is not a folder; give the folder the run's paths are relative to")
        return root, MISSING, []
    recorded = run.metadata.get("input_root")
    if not recorded:
        return None, MISSING, [f"{config.output} records no input root; pass --root DIR to show thumbnails"]
    if is_url(recorded):
        warning = (
            f"thumbnails are not shown: the input root {recorded} is a URL, and a URL named by the output file "
            f"is never read; pass --root {recorded} to show them"
        )
        return None, UNAVAILABLE, [warning]
    root = LocalLocation(recorded)
    if not root.is_folder():
        return None, MISSING, [f"input root {recorded} is not here; thumbnails are shown as missing (pass --root DIR)"]
    return root, MISSING, []


def _header(config: ReportConfig, run: runs.Run, root: Location | None) -> list[tuple[str, str]]:
    meta = run.metadata
    rows = [
        ("input root", str(root or meta.get("input_root") or "unknown")),
        ("model", str(meta.get("model") or "unknown")),
        ("run time", str(meta.get("run_time", "unknown"))),
        ("files", f"{run.files:,} ({run.ok.num_rows:,} ok, {run.failed.num_rows:,} errors)"),
    ]
    if meta.get("seconds"):
        rows.append(("duration", f"{meta['seconds']:,.1f} s, {run.images_per_second:,.1f} images/s"))
    rows.append(("output", str(config.output)))
    if config.compare:
        rows.append(("compared with", str(config.compare)))
    if meta.get("batchclf_version"):
        rows.append(("batchclf", str(meta["batchclf_version"])))
    return rows


def _plan_sheets(config: ReportConfig, ok, counts, budget: int) -> tuple[list[LabelSheet], str | None]:
    sheets = []
    for label, count in counts[: config.top]:
        if budget < min(count, config.per_label) or config.per_label == 0:
            break
        highest, lowest = runs.extremes(ok, label, config.per_label)
        sheets.append(LabelSheet(label, count, highest, lowest))
        budget -= len(highest) + len(lowest)
    left = len(counts) - len(sheets)
    note = f"{left:,} less frequent labels have no contact sheet (see --top and --per-label)." if left else None
    if config.per_label == 0:
        note = "Contact sheets are off (--per-label 0)."
    return sheets, note


def summary_json(config: ReportConfig, run: runs.Run, counts, low_count: int, drift, truth, folders) -> dict:
    ok = run.ok.num_rows
    return {
        "output": str(config.output),
        "report": str(config.report),
        "summary": {
            "input_root": run.metadata.get("input_root"),
            "model": run.metadata.get("model"),
            "run_time": run.metadata.get("run_time"),
            "files": run.files,
            "ok": ok,
            "errors": run.failed.num_rows,
            "seconds": run.metadata.get("seconds"),
            "images_per_second": run.images_per_second,
            "low_threshold": config.low,
            "low_confidence": low_count,
            "low_confidence_share": low_count / ok if ok else 0.0,
            "labels": [{"label": label, "count": count, "share": count / ok} for label, count in counts],
        },
        "folders": {
            "group_depth": config.group_depth,
            "count": len(folders),
            "groups": [g.to_json(config.folder_labels) for g in folders[:LISTED_PATHS]],
        },
        "drift": drift.to_json() if drift else None,
        "truth": truth.to_json() if truth else None,
    }


def build_report(config: ReportConfig) -> ReportSummary:
    """Write ``config.report`` (and ``config.json``); return what was written and how long it took."""
    started = time.perf_counter()
    config.validate()
    summary = ReportSummary(config.report)
    output = location(config.output, config.storage_options)
    run = runs.read_run(output)
    previous = runs.read_run(location(config.compare, config.storage_options), "--compare") if config.compare else None
    root, placeholder, warnings = _input_root(config, run)
    truth = None
    if config.truth:
        recorded = run.metadata.get("input_root") or "."
        folder = root.local_path if root else None if is_url(recorded) else Path(recorded)
        if folder is None:
            raise UsageError("--truth matches paths on disk; for a run over a bucket pass --root DIR with a local copy")
        labels, outside = read_truth(config.truth, folder)
        truth = score_run(run, labels)
        if outside:
            warnings.append(f"{len(outside):,} paths in {config.truth} are outside the input root and were ignored")
    drift = compare_runs(run, previous) if previous else None
    summary.timings["read"] = time.perf_counter() - started

    ok = run.ok
    counts = runs.label_counts(ok["label"])
    low_count = runs.count_below(ok, config.low)
    low_items = runs.low_confidence(ok, config.low, config.gallery)
    changed = drift.confident[: config.gallery] if drift else []
    folders = folder_groups(run.table, config.group_depth)
    sheets, sheet_note = _plan_sheets(config, ok, counts, config.max_thumbnails - len(low_items) - len(changed))
    chart = counts[: config.top]
    rest = sum(count for _, count in counts[config.top :])
    if rest:
        chart = chart + [(f"{OTHER} ({len(counts) - config.top:,} labels)", rest)]

    wanted = [i.path for s in sheets for i in s.highest + s.lowest] + [i.path for i in low_items + changed]
    thumbnails_started = time.perf_counter()
    if root is None:
        thumbnails = {path: Thumbnail(None, placeholder) for path in wanted}
    else:
        thumbnails = make_thumbnails(root, wanted, config.threads, memory=config.memory)
    summary.timings["thumbnails"] = time.perf_counter() - thumbnails_started
    summary.thumbnails = sum(1 for t in thumbnails.values() if t.uri)

    page = Page(
        title=f"batchclf report: {output.name}",
        header=_header(config, run, root),
        files=run.files,
        ok=ok.num_rows,
        errors=run.failed.num_rows,
        images_per_second=run.images_per_second,
        low=config.low,
        low_count=low_count,
        chart_labels=chart,
        has_other=bool(rest),
        all_labels=counts,
        histogram=runs.score_histogram(ok),
        sheets=sheets,
        low_items=low_items,
        error_rows=runs.error_rows(run.failed, config.error_rows),
        thumbnails=thumbnails,
        warnings=warnings,
        notes={"sheets": sheet_note} if sheet_note else {},
        drift=drift,
        changed_items=changed,
        truth=truth,
        folders=folders,
        group_depth=config.group_depth,
        listed=config.listed,
        folder_rows=config.folders,
        folder_labels=config.folder_labels,
        confused_pairs=config.confused_pairs,
    )
    summary.bytes = write_atomically(config.report, render(page))
    if config.json:
        document = summary_json(config, run, counts, low_count, drift, truth, folders)
        write_atomically(config.json, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    summary.rows, summary.drift, summary.truth = run.files, drift, truth
    summary.seconds = time.perf_counter() - started
    return summary
