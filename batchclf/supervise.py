"""Signals and crash isolation: how a run stops cleanly, and how the in-process worker survives a crash.

The command runs the job in a child it watches.

On a small machine the embedded cluster scores in worker threads of the job's own process (no
worker processes to start, one model built once). A file that crashes a
decoder, or exhausts memory, would then take the job with it. So ``batchclf run`` forks first: the
child runs the job, the parent only waits. When the child dies of a signal nobody sent it (SIGSEGV,
SIGABRT, SIGBUS, the kernel's out-of-memory SIGKILL), the parent runs the job again with worker
processes: the finished shards are reused from the parts (the usual resume), and the shard that
kills its worker is split until the file responsible is one error row (``isolate.py``).

The child leads a process group of its own, so a Ctrl-C at the terminal reaches the parent alone,
which passes SIGINT, SIGTERM and SIGHUP on to the child once, as they come: the child's own handlers
stop the job cleanly. The child asks the kernel for SIGKILL when the parent dies, so killing the
command (even with SIGKILL) never leaves a job running that holds the output's lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator

from .errors import STOP_SIGNALS, Interrupted

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


def can_supervise() -> bool:
    """Linux only: the child's death signal (``prctl``) is what makes a killed command stop its job."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def supervised(job: Callable[[bool], int], log: Callable[[str], None] | None = None) -> int:
    """Run ``job(in_process=True)`` in a child; if that child crashes, ``job(in_process=False)`` in another.

    Returns the exit status to leave with: the child's, or 128 + the signal that ended it. What happened is
    said through ``log`` (default: the ``batchclf`` logger).
    """
    import logging

    say = log or logging.getLogger("batchclf").warning
    fail = log or logging.getLogger("batchclf").error
    status, crashed = _in_child(job, True)
    if crashed is None:
        return status
    say(
        f"the in-process worker crashed ({crashed.name}); running again with worker processes, "
        "which turn the file that causes it into an error row"
    )
    status, crashed = _in_child(job, False)
    if crashed is not None:
        fail(f"the job died of {crashed.name} twice; run again with BATCHCLF_DEBUG=1")
    return status


def _in_child(job: Callable[[bool], int], in_process: bool) -> tuple[int, signal.Signals | None]:
    """(exit status, the signal that killed the child if nobody sent it one) for one run of ``job``.

    The parent's forwarding handlers are in place before the fork: a signal that comes while the child
    starts is passed on once the child exists, never met by the default handler (a traceback, and the
    child killed with its parent).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    sent: list[int] = []
    children: list[int] = []

    def forward(number: int, frame) -> None:
        sent.append(number)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, number)

    saved = {number: signal.signal(number, forward) for number in FORWARDED_SIGNALS}
    try:
        child = os.fork()
        if child == 0:
            status = 1
            try:
                for number, handler in saved.items():  # the job's own (the parent passes every signal on)
                    signal.signal(number, handler)
                status = _child(job, in_process, parent)
            except Interrupted as error:  # stopped before the job's own handlers were reached
                status = error.exit_code
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        children.append(child)
        for number in sent:  # came before the child existed
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, number)
        _, wait_status = os.waitpid(child, 0)
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        crashed = signal.Signals(number) if not sent else None
        return 128 + number, crashed
    return os.waitstatus_to_exitcode(wait_status), None


def _child(job: Callable[[bool], int], in_process: bool, parent: int) -> int:
    os.setpgid(0, 0)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request was made
        return 128 + signal.SIGKILL
    try:
        return job(in_process)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


REPEAT_SECONDS = 1.0  # a second copy of a signal sooner than this is the same request, delivered twice


class _Deferred(threading.local):
    depth = 0
    pending: int | None = None  # the stop signal that came inside a ``signals_deferred`` block


_DEFERRED = _Deferred()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A stop signal that comes inside the block stops the run when the block is done, not halfway: a
    part written but not yet counted would make the summary say fewer rows were kept than were.
    A second signal still stops the process at once (``stop_on_signals``)."""
    _DEFERRED.depth += 1
    try:
        yield
    finally:
        _DEFERRED.depth -= 1
        number = _DEFERRED.pending if _DEFERRED.depth == 0 else None
        if number is not None:  # taken either way: a block that failed stops the run with its own error
            _DEFERRED.pending = None
    if number is not None:
        raise Interrupted(number)


def stop_on_signals() -> None:
    """Turn SIGTERM, SIGINT and SIGHUP into ``Interrupted`` in the main thread, so every ``with`` block on the way
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
        if _DEFERRED.depth:  # handlers run in the main thread: the block there raises it when done
            _DEFERRED.pending = number
            return
        raise Interrupted(number)

    for number in STOP_SIGNALS:
        signal.signal(number, interrupt)
