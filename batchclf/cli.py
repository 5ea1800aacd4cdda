"""The command line: parse, validate, call the library. Errors a user can fix print one line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_TERMINATED, BatchclfError, Interrupted, UsageError
from .store import location_argument

EXIT_CODES_HELP = """exit codes:
  0    success (some files may be error rows)
  1    the job failed (a cluster or worker failure; see the message)
  2    usage error: bad option, missing input or output folder, unknown model, no images found
  3    every file failed to decode (the output is still written)
  4    another run holds the lock on this output
  5    output written but some folders could not be read; their previous rows were carried over
  130  interrupted (Ctrl-C, SIGINT); run the same command again to resume
  143  stopped by SIGTERM (a time limit, kubectl, systemctl stop); run the same command again to resume
"""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where it says something: not for flags, empty values, or help that gives its own.
    Text laid out in lines (the exit codes) keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or "(default:" in text or action.default in (None, (), [], "", argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _labels_list(text: str) -> tuple[str, ...]:
    """``a,b,c`` or ``@file`` (one label a line)."""
    if text.startswith("@"):
        try:
            lines = Path(text[1:]).read_text(encoding="utf-8-sig").splitlines()
        except OSError as error:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise argparse.ArgumentTypeError(f"{text[1:]} is not UTF-8 text; write one label a line") from None
        labels = tuple(line.strip() for line in lines if line.strip())
    else:
        labels = tuple(part.strip() for part in text.split(",") if part.strip())
    if not labels:  # an empty filter would silently mean no filter at all
        raise argparse.ArgumentTypeError(f"{text!r} names no labels; give 'a,b,c' or @FILE with one label a line")
    return labels


def _add_run(subparsers) -> None:
    from .config import DEFAULT_BATCH_SIZE, DEFAULT_DASHBOARD_ADDRESS, DEFAULT_SHARD_SIZE, DEFAULT_TOP_K
    from .models.registry import BUILTIN_MODELS, DEFAULT_MODEL

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
    model.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"built-in model ({', '.join(BUILTIN_MODELS)}), a .keras/.h5/.tflite/.onnx file, a SavedModel "
        "folder or a folder written by 'batchclf train'",
    )
    model.add_argument(
        "--labels", type=Path, default=None, help="class names, one a line (default: labels.txt beside a user model)"
    )
    model.add_argument(
        "--trust-model",
        action="store_true",
        help="allow models whose loading runs the code they hold (a SavedModel, a Keras file with a Lambda layer): "
        "only for models from people you trust",
    )
    model.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "tf", "litert"),
        help="inference engine: auto picks LiteRT on CPU and TensorFlow on GPU",
    )
    model.add_argument(
        "--quantize",
        default=None,
        choices=("int8",),
        help="run a full-integer LiteRT model calibrated on a sample of the input (see docs/performance.md)",
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
        type=_labels_list,
        default=(),
        metavar="LABELS",
        help="only report these classes: 'a,b,c' or @FILE with one label a line",
    )
    out.add_argument(
        "--deny", type=_labels_list, default=(), metavar="LABELS", help="never report these classes: 'a,b,c' or @FILE"
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
    files.add_argument("--hidden", action="store_true", help="also walk hidden files and folders")
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
        choices=("local", "slurm"),
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
        default=DEFAULT_DASHBOARD_ADDRESS,
        metavar="HOST:PORT",
        help="where the embedded cluster serves its dashboard (':8787' for every interface; another port if taken)",
    )
    dask.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="images per task: the unit of scheduling, retry and resume",
    )
    dask.add_argument("--retries", type=int, default=2, help="times a failed shard is retried")
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
        "--summary",
        type=Path,
        default=None,
        metavar="FILE",
        help="write counts, errors by kind, timings and versions as JSON",
    )
    run.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (shown unless given)"
    )
    run.set_defaults(handler=_run)


def _run(args) -> int:
    from dataclasses import replace

    from .config import RunConfig
    from .store import StorageOptions
    from .supervise import supervised

    check_summary_path(args.summary)

    config = RunConfig(
        input=args.input,
        output=args.output,
        model=args.model,
        labels=args.labels,
        trust_model=args.trust_model,
        backend=args.backend,
        quantize=args.quantize,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        top_k=args.top_k,
        threshold=args.threshold,
        allow=args.allow,
        deny=args.deny,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        include_hidden=args.hidden,
        embeddings=args.embeddings,
        workers=args.workers,
        scheduler=args.scheduler,
        scheduler_file=args.scheduler_file,
        cluster=args.cluster,
        cluster_config=args.cluster_config,
        dashboard_address=args.dashboard_address,
        retries=args.retries,
        keep_parts=args.keep_parts,
        keep_error_rows=args.keep_error_rows,
        incremental=args.incremental,
        hash=args.hash,
        wait=args.wait,
        progress=args.progress,
        storage_options=StorageOptions.parse(args.storage_options),
    )
    if supervisable(config):  # score in this process, watched by a parent that survives a crash
        return supervised(lambda in_process: exit_status(_run_job, args, replace(config, in_process=in_process)))
    return _run_job(args, config)


def supervisable(config) -> bool:
    """The embedded cluster with the plan left to batchclf; not an attached or SLURM cluster, not --workers."""
    from .supervise import can_supervise

    attached = config.scheduler or config.scheduler_file or config.cluster != "local"
    return not attached and config.workers is None and can_supervise()


def _run_job(args, config) -> int:
    from .job import run

    try:
        summary = run(config, log=print)
    except Interrupted as error:
        error.hint = "the finished shards are kept: run the same command again to resume"
        _write_summary(args.summary, None, config, error.exit_code, str(error))
        raise
    except BatchclfError as error:
        _write_summary(args.summary, getattr(error, "summary", None), config, error.exit_code, str(error))
        raise
    except Exception as error:
        _write_summary(args.summary, None, config, EXIT_JOB_FAILED, f"{type(error).__name__}: {error}")
        raise
    print(summary.line(), file=sys.stderr)
    _write_summary(args.summary, summary, config, 0)
    return 0


def check_summary_path(path: Path | None) -> None:
    """Refuse a --summary the run could not write, before any work rather than after all of it."""
    if path is None:
        return
    from .fsutil import can_create_files_in

    if path.is_dir():
        raise UsageError(f"--summary {path} is a folder; give a file name such as {path}/summary.json")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"--summary folder {folder} does not exist; create it first")
    if not can_create_files_in(folder):
        raise UsageError(f"--summary folder {folder} is not writable; choose another path")


def _write_summary(path: Path | None, summary, config, exit_code: int, error: str | None = None) -> None:
    if path is None:
        return
    import json

    from .fsutil import write_atomically
    from .job import RunSummary, summary_record

    record = summary_record(summary or RunSummary(), config, exit_code, error)
    if exit_code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        record["status"] = "interrupted"
    write_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchclf",
        description="Batch image classification for large image folders, on Dask, to Parquet.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchclf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(subparsers)
    from .train_cli import add_parser as add_train_parsers

    add_train_parsers(subparsers)

    from .report import add_parser as add_report_parser

    add_report_parser(subparsers)
    return parser


REPEAT_SECONDS = 1.0  # a second copy of a signal sooner than this is the same request, delivered twice


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGINT into ``Interrupted`` in the main thread, so every ``with`` block on the way
    out closes the cluster, the lock and the parts cleanly. A second signal stops the process at once.

    A signal sent to every process of a group or cgroup (a SLURM time limit, systemd's default
    KillMode) reaches a supervised job twice: directly, and passed on by ``batchclf run``'s watching
    parent. A copy that comes within ``REPEAT_SECONDS`` of the first is taken as that same request.
    """

    def interrupt(number: int, frame) -> None:
        first = time.monotonic()

        def again(number: int, frame) -> None:
            if time.monotonic() - first < REPEAT_SECONDS:
                return
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)

        signal.signal(number, again)
        raise Interrupted(number)

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, interrupt)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    stop_on_signals()
    return exit_status(args.handler, args)


def exit_status(handler, *args) -> int:
    """Run ``handler(*args)``; an error a user can act on becomes one line on stderr and its exit status."""
    try:
        return handler(*args)
    except Interrupted as error:
        print(f"batchclf: {error}", file=sys.stderr)
        return error.exit_code
    except BatchclfError as error:
        print(f"batchclf: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"batchclf: {Interrupted(signal.SIGINT)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # a failure we did not foresee: one line, and where to look
        print(f"batchclf: error: the job failed: {type(error).__name__}: {error}", file=sys.stderr)
        if os.environ.get("BATCHCLF_DEBUG"):
            raise
        return EXIT_JOB_FAILED
