"""Errors a user can fix, and the exit codes the command line maps them to."""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_ALL_FAILED = 3
EXIT_LOCKED = 4
EXIT_INCOMPLETE = 5  # output written, but some folders could not be read: their previous rows were carried over
EXIT_MASS_DROP = 6  # refused: --incremental would drop more of last night's rows than --max-drop allows
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's code for Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: SLURM's time limit, Kubernetes, systemd
EXIT_HANGUP = 128 + signal.SIGHUP  # 129: the terminal or SSH session closed
# The signals that stop a run cleanly (summary written, lock released, finished shards kept).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
INTERRUPTED_EXIT_CODES = tuple(128 + number for number in STOP_SIGNALS)


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


class StorageError(BatchclfError):
    """The storage an input is read from failed for a reason that is not the file's (a connection error,
    a timeout, a 5xx, throttling) and kept failing after a few tries.

    Never an error row: the shard fails, Dask tries it again, and a run it stops keeps its finished
    shards, so the same command resumes once the storage answers again.
    """


class NoWorkersError(BatchclfError):
    """The cluster has had no worker alive for its ``no-workers-timeout``: every worker died and none came back.

    Not a file's fault (a file that kills its worker is isolated as an error row while workers restart), so
    the run stops, keeping its finished shards, and the same command resumes from them.
    """


class FoldersUnreadableError(BatchclfError):
    """The output is written, but some folders could not be listed; their previous rows were kept."""

    exit_code = EXIT_INCOMPLETE


class MassDropError(BatchclfError):
    """An incremental run would drop more of the reusable rows than ``--max-drop``: nothing is written."""

    exit_code = EXIT_MASS_DROP


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM or SIGHUP) stopped the run.

    Raised in the main thread so every ``with`` block on the way out closes the cluster and the lock.
    Like Ctrl-C's ``KeyboardInterrupt`` it is no ``Exception``: the handlers that turn a failed shard
    into error rows must not catch it.
    """

    def __init__(self, signal_number: int = signal.SIGINT) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number
        self.hint = ""  # what the user can do next, set by the command that was interrupted

    def __str__(self) -> str:
        name = signal.Signals(self.signal_number).name
        return f"interrupted by {name}; {self.hint}" if self.hint else f"interrupted by {name}"

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signal_number
