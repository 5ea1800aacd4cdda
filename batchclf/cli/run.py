"""``batchclf run``: the parser, and the handler that builds the config by field name, refuses bad
settings before anything heavy is imported or forked, then runs the job (watched, on a small machine)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from ..config import (
    AUTO_DASHBOARD,
    BACKENDS,
    CLUSTERS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DASHBOARD_ADDRESS,
    DEFAULT_LOG_FORMAT,
    DEFAULT_MAX_DROP,
    DEFAULT_PROGRESS_INTERVAL,
    DEFAULT_RETRIES,
    DEFAULT_SHARD_SIZE,
    DEFAULT_TOP_K,
    EXIF_DEFAULT_MODE,
    EXIF_MODES,
    EXIF_WITH_LOCATION,
    LOG_FORMAT_VARIABLE,
    LOG_FORMATS,
    QUANTIZATIONS,
    RunConfig,
    dashboard_address,
)
from ..errors import EXIT_JOB_FAILED, BatchclfError, Interrupted, UsageError
from ..machine import may_score_in_process
from ..runlog import capture_warnings, configure, set_run_id
from ..store import StorageOptions, check_locations, location_argument
from ..summary import RunSummary, check_summary_path, new_run_id, write_summary
from ..supervise import supervised
from .common import EXIT_CODES_HELP, DefaultsHelpFormatter, add_model_arguments, exit_status, labels_list


def add_parser(subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="classify every image under a folder and write one Parquet file",
        description="Classify every image under INPUT with a pretrained or trained model on a Dask cluster "
        "and write one row per image file to OUTPUT (Parquet).",
        formatter_class=DefaultsHelpFormatter,
        epilog=EXIT_CODES_HELP,
    )
    run.add_argument(
        "input",
        type=location_argument,
        help="folder of images (searched recursively), a text file of paths, or a URL prefix (s3://bucket/images)",
    )
    run.add_argument(
        "output",
        type=location_argument,
        help="Parquet file to write (replaced atomically), or a URL (s3://bucket/out/predictions.parquet)",
    )
    run.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec options for a URL input or output, e.g. "
        '\'{"endpoint_url": "http://..."}\' (never logged or recorded)',
    )
    model = run.add_argument_group("model")
    add_model_arguments(model)
    model.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="inference engine: auto picks LiteRT on CPU and TensorFlow on GPU",
    )
    model.add_argument(
        "--quantize",
        default=None,
        choices=QUANTIZATIONS,
        help="run a full-integer LiteRT model, calibrated on a fixed image set shipped with batchclf "
        "(see docs/performance.md)",
    )
    model.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per inference batch")
    model.add_argument(
        "--embeddings", action="store_true", help="add an 'embedding' column with the model's pooled features"
    )
    out = run.add_argument_group("predictions")
    out.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="classes kept in the topk column")
    out.add_argument(
        "--threshold", type=float, default=0.0, help="a top-1 score below this leaves the label null (status stays ok)"
    )
    out.add_argument(
        "--allow",
        type=labels_list,
        default=(),
        metavar="LABELS",
        help="only report these classes: 'a,b,c' or @FILE with one label a line",
    )
    out.add_argument(
        "--deny", type=labels_list, default=(), metavar="LABELS", help="never report these classes: 'a,b,c' or @FILE"
    )
    out.add_argument(
        "--exif",
        nargs="?",
        const=EXIF_DEFAULT_MODE,
        default=None,
        type=exif_mode,
        metavar="gps",
        help="add EXIF columns: capture time and UTC offset, camera make and model, lens, orientation; "
        f"'--exif {EXIF_WITH_LOCATION}' adds latitude and longitude (personal data: only when asked for)",
    )
    files = run.add_argument_group("files")
    files.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only paths matching this glob (repeatable; without '/' it matches the file name)",
    )
    files.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="skip paths matching this glob (repeatable)"
    )
    files.add_argument(
        "--hidden", dest="include_hidden", action="store_true", help="also walk hidden files and folders"
    )
    dask = run.add_argument_group("cluster")
    dask.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of the embedded cluster (default: on up to 4 cores, one worker in this "
        "process; on more, one process per core, as memory allows)",
    )
    dask.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="attach to a running Dask scheduler, e.g. tcp://host:8786"
    )
    dask.add_argument(
        "--scheduler-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="attach to the Dask scheduler described in this JSON file",
    )
    dask.add_argument(
        "--cluster",
        default="local",
        choices=CLUSTERS,
        help="local: the embedded cluster (or --scheduler); slurm: dask-jobqueue submits workers as SLURM jobs",
    )
    dask.add_argument(
        "--cluster-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML settings for --cluster slurm (see jobs/slurm/jobqueue.yaml)",
    )
    dask.add_argument(
        "--dashboard-address",
        default=AUTO_DASHBOARD,
        metavar="HOST:PORT",
        help=f"where the embedded cluster serves its dashboard (':8787' for every interface; another port if "
        f"taken); 'none' for no dashboard (default: {DEFAULT_DASHBOARD_ADDRESS} when stderr is a terminal, "
        "none otherwise, as in cron or systemd)",
    )
    dask.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="images per task: the unit of scheduling, retry and resume",
    )
    dask.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="times a failed shard is retried")
    dask.add_argument("--keep-parts", action="store_true", help="keep the per-shard files in OUTPUT.parts/")
    nightly = run.add_argument_group("nightly runs")
    nightly.add_argument(
        "--incremental",
        action="store_true",
        help="reuse rows of an existing OUTPUT made with the same model and options for unchanged files "
        "(same path, size and mtime); score new and changed files; drop deleted ones",
    )
    nightly.add_argument(
        "--keep-error-rows",
        action="store_true",
        help="with --incremental, keep the error rows of unchanged files instead of scoring them again",
    )
    nightly.add_argument(
        "--max-drop",
        type=float,
        default=DEFAULT_MAX_DROP,
        metavar="SHARE",
        help="with --incremental, refuse (exit 6, output kept) when more than this share of the previous rows "
        "would be dropped because their files are gone; 1 accepts any drop",
    )
    nightly.add_argument(
        "--hash",
        action="store_true",
        help="compare file content (BLAKE2b) instead of size and mtime; adds a content_hash column",
    )
    nightly.add_argument(
        "--wait",
        action="store_true",
        help="if another run holds OUTPUT's lock, wait for it instead of exiting with code 4",
    )
    nightly.add_argument(
        "--changes",
        type=location_argument,
        default=None,
        metavar="FILE",
        help="list every path that is new, changed, dropped, newly failing or recovered since the previous OUTPUT, "
        "with its old and new label: Parquet, or JSON lines if FILE ends in .jsonl or .json",
    )
    nightly.add_argument(
        "--summary",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the run's record as JSON: id, times, host, counts, errors by kind, stage timings, changes, "
        "versions (docs/summary.schema.json)",
    )
    logs = run.add_argument_group("logs")
    logs.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar, progress lines instead (the bar is shown only when stderr is a terminal)",
    )
    logs.add_argument(
        "--progress-interval",
        type=float,
        default=DEFAULT_PROGRESS_INTERVAL,
        metavar="SECONDS",
        help="without a progress bar, a progress line (done/total, images/s, ETA) this often, and while --wait "
        "waits, a line naming the lock's holder; 0: none",
    )
    logs.add_argument(
        "--log-format",
        default=os.environ.get(LOG_FORMAT_VARIABLE, DEFAULT_LOG_FORMAT),
        choices=LOG_FORMATS,
        help="plain: messages alone; text: each line starts with the UTC time and the run id; json: one JSON "
        "object a line; auto: plain when stderr is a terminal, text otherwise (a cron log, a journal); "
        f"default: ${LOG_FORMAT_VARIABLE}, else auto",
    )
    run.set_defaults(handler=handle)


def exif_mode(text: str) -> str:
    """``--exif``'s optional value; what it takes by mistake (``--exif INPUT OUTPUT``) is named."""
    if text not in EXIF_MODES:
        raise argparse.ArgumentTypeError(
            f"takes {' or '.join(repr(mode) for mode in EXIF_MODES)} or nothing, got {text!r} "
            "(put a bare --exif after INPUT and OUTPUT)"
        )
    return text


def handle(args: argparse.Namespace) -> int:
    """Check everything that can be checked without the machinery, then run the job."""
    if args.log_format not in LOG_FORMATS:  # from the environment, which argparse does not check
        raise UsageError(f"{LOG_FORMAT_VARIABLE} must be one of {', '.join(LOG_FORMATS)}, got {args.log_format!r}")
    configure(args.log_format)
    run_id = new_run_id()  # the summary's, made before the job so that every line of the run carries it
    set_run_id(run_id)
    check_summary_path(args.summary)
    interactive = sys.stderr.isatty()
    fields = {
        **vars(args),
        "storage_options": StorageOptions.parse(args.storage_options),
        "dashboard_address": dashboard_address(args.dashboard_address, interactive),
        "progress": args.progress and interactive,  # a bar in a log file is a line of carriage returns
    }
    config = RunConfig.from_fields(fields)
    try:
        config.check()
        check_locations(config)
    except (BatchclfError, Interrupted) as error:
        write_summary(args.summary, RunSummary(run_id=run_id), config, error.exit_code, str(error))
        raise
    if may_score_in_process(config):  # score in this process, watched by a parent that survives a crash
        return supervised(
            lambda in_process: exit_status(_run_job, args.summary, replace(config, in_process=in_process), run_id)
        )
    return _run_job(args.summary, config, run_id)


def _run_job(summary_path: Path | None, config: RunConfig, run_id: str) -> int:
    from ..store.parquet import answer_arrows_pandas_probe  # Arrow: only once the settings are known to be good

    answer_arrows_pandas_probe()
    try:
        from ..job import run  # Dask and Arrow's compute kernels, likewise

        with capture_warnings():
            summary = run(config, checked=True, run_id=run_id)  # handle() checked it before forking
    except Interrupted as error:
        error.hint = "the finished shards are kept: run the same command again to resume"
        write_summary(summary_path, getattr(error, "summary", None), config, error.exit_code, str(error))
        raise
    except BatchclfError as error:
        write_summary(summary_path, getattr(error, "summary", None), config, error.exit_code, str(error))
        raise
    except Exception as error:
        write_summary(summary_path, None, config, EXIT_JOB_FAILED, f"{type(error).__name__}: {error}")
        raise
    write_summary(summary_path, summary, config, 0)
    return 0
