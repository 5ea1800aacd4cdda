"""What a run reports: the counts and timings of ``RunSummary``, its one console line, and the
``--summary FILE.json`` record for monitoring, whose schema is ``docs/summary.schema.json``."""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .errors import INTERRUPTED_EXIT_CODES, UsageError
from .fsutil import can_create_files_in, write_atomically
from .store import is_url

VERSIONED_PACKAGES = ("batchclf", "tensorflow", "keras", "ai-edge-litert", "dask", "distributed", "pyarrow", "pillow")


def new_run_id() -> str:
    """A run's id: its UTC start time and a random suffix, e.g. ``20261206T085612Z-3fa9c1``.

    Sortable by time and unique across hosts; the log lines, the summary and the output's metadata carry it.
    """
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def utc_now() -> str:
    """Now, in UTC ISO-8601 to the millisecond: ``2026-12-06T08:56:12.345Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


STAGES = ("listing", "planning", "scoring", "writing", "merging")


@dataclass
class RunSummary:
    run_id: str = field(default_factory=new_run_id)
    started: str = field(default_factory=utc_now)
    ended: str | None = None
    files: int = 0  # rows in the output
    scored: int = 0  # of which this run scored; the rest were reused
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0  # wall time, start to end
    shards: int = 0
    errors_by_kind: dict = field(default_factory=dict)
    # Wall time of each stage of the driver (``STAGES``); listing streams, so it is the time spent waiting on it.
    stage_seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    task_seconds: dict = field(default_factory=dict)  # per-task times summed over all tasks (decode, inference ...)
    lock_wait_seconds: float = 0.0
    changes: dict | None = None  # --changes: the file and the count of each kind
    rescore_reason: str | None = None  # --incremental: why last night's rows could not be reused
    dashboard: str | None = None
    incremental: dict | None = None
    unreadable: list = field(default_factory=list)  # folders that could not be listed
    plan: dict | None = None  # the embedded cluster's worker plan (None: attached or SLURM cluster)
    saved: int = 0  # rows this run saved in parts (what an interrupted run leaves for the next to reuse)
    skipped_by_extension: dict = field(default_factory=dict)  # files left out for their extension ("": none)

    @property
    def images_per_second(self) -> float:
        """Images scored per second: reused rows cost nothing and are not counted."""
        return self.scored / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        speed = f"{self.images_per_second:.1f} images/s" if self.scored else "nothing needed scoring"
        scored = f" ({self.scored} scored)" if self.scored != self.files else ""
        return f"{self.files} files{scored}, {self.ok} ok, {self.errors} errors, {self.seconds:.1f} s, {speed}"

    def skipped_line(self) -> str | None:
        """E.g. ``skipped 3 files by extension: .txt 2, (none) 1``; None when nothing was skipped."""
        return skipped_text(self.skipped_by_extension)

    def count_errors(self, messages: list[str | None]) -> None:
        """Count error rows by kind: the message up to its first colon, semicolon or parenthesis."""
        for message in messages:
            kind = (message or "unknown").split(":")[0].split(";")[0].split(" (")[0]
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        self.errors = len(messages)
        self.ok = self.files - self.errors


def skipped_text(counts: dict[str, int]) -> str | None:
    """The files left out for their extension, most frequent first; ``(none)`` for no extension."""
    if not counts:
        return None
    total = sum(counts.values())
    shown = ", ".join(f"{kind or '(none)'} {n}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"skipped {total} file{'s' if total != 1 else ''} by extension: {shown}"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def absolute(place) -> str:
    """A local path made absolute (not resolved: a link stays the name it was given); a URL as it is."""
    return place if is_url(place) else os.path.abspath(place)


def summary_record(summary: RunSummary, config, exit_code: int, error: str | None = None) -> dict:
    """What ``--summary FILE.json`` holds, for monitoring (``docs/summary.schema.json``)."""
    interrupted = exit_code in INTERRUPTED_EXIT_CODES
    return {
        "run_id": summary.run_id,
        "status": "ok" if exit_code == 0 else "interrupted" if interrupted else "failed",
        "exit_code": exit_code,
        "error": error,
        "started": summary.started,
        "ended": summary.ended or utc_now(),
        "host": socket.gethostname(),
        "batchclf": __version__,
        "input": absolute(config.input),
        "output": absolute(config.output),
        "model": config.model,
        "files": summary.files,
        "ok": summary.ok,
        "errors": summary.errors,
        "errors_by_kind": summary.errors_by_kind,
        "scored": summary.scored,
        "saved_in_parts": summary.saved,
        "shards": summary.shards,
        "unreadable_folders": summary.unreadable,
        "skipped_by_extension": summary.skipped_by_extension,
        "incremental": summary.incremental,
        "rescore_reason": summary.rescore_reason,
        "changes": summary.changes,
        "seconds": round(summary.seconds, 3),
        "stage_seconds": {stage: round(summary.stage_seconds.get(stage, 0.0), 3) for stage in STAGES},
        "lock_wait_seconds": round(summary.lock_wait_seconds, 3),
        "images_per_second": round(summary.images_per_second, 2),
        "task_seconds": summary.task_seconds,
        "worker_plan": summary.plan,
        "versions": versions(),
    }


def check_summary_path(path: Path | None) -> None:
    """Refuse a --summary the run could not write, before any work rather than after all of it."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"--summary {path} is a folder; give a file name such as {path}/summary.json")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"--summary folder {folder} does not exist; create it first")
    if not can_create_files_in(folder):
        raise UsageError(f"--summary folder {folder} is not writable; choose another path")


def write_summary(path: Path | None, summary: RunSummary | None, config, exit_code: int, error: str | None = None):
    if path is not None:
        record = summary_record(summary or RunSummary(), config, exit_code, error)
        write_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
