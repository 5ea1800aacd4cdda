"""Errors a user can fix, and the exit codes the command line maps them to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_ALL_FAILED = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130


class BatchclfError(Exception):
    """An error with a one-line message meant for the user; no traceback is shown."""

    exit_code = EXIT_JOB_FAILED


class UsageError(BatchclfError):
    """A bad argument, path or option, found before any work starts."""

    exit_code = EXIT_USAGE


class AllFilesFailedError(BatchclfError):
    exit_code = EXIT_ALL_FAILED


class LockedError(BatchclfError):
    exit_code = EXIT_LOCKED
