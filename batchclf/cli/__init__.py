"""The command line: one module a command, each of which parses, builds its config by field name,
checks it and calls the library. This package imports nothing heavy: a usage error is answered before
Dask, TensorFlow or Arrow's compute kernels are loaded. Errors a user can fix print one line.
"""

from __future__ import annotations

import argparse
import os

from .. import __version__
from ..runlog import configure
from ..supervise import stop_on_signals
from . import predict, report, run, train
from .common import EXIT_CODES_HELP, exit_status

__all__ = ["EXIT_CODES_HELP", "build_parser", "exit_status", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchclf",
        description="Batch image classification for large image folders, on Dask, to Parquet.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchclf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (run, predict, train, report):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    configure("plain")  # every command's messages through one logger; `run --log-format` may change the format
    stop_on_signals()  # first: a signal in the first instant stops the command as cleanly as a later one
    return exit_status(_dispatch, argv)


def _dispatch(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return args.handler(args)
