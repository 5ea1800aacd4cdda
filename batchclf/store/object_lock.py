"""The lock of an output in a bucket: ``OUTPUT.lock``, an object made by a conditional create
(``If-None-Match: *``) that names the process holding it, so a dead holder on this host is taken over
and a live one anywhere is never broken."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import socket
import time

from ..errors import LockedError
from ..fsutil import boot_id, open_regular_no_follow, private_folder, process_alive, process_start
from .base import LOCK_SUFFIX

LOCK_POLL_SECONDS = 2.0


def _lock_record(lock) -> dict | None:
    """What the lock object says about its holder; None when it is gone, {} when it cannot be read."""
    try:
        record = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _holder_gone(record: dict) -> bool:
    """Whether the run that wrote this lock record is known to be gone (False when that cannot be known).

    Only a holder on this host can be checked, by the process it names: the same boot of the kernel
    (``boot_id``), a process of that pid, started when the record says (``process_start``). A pid alone
    proves nothing in a container: every pod of a CronJob is a fresh pid namespace under one host name,
    so the next night's run gets the pid of the run that was killed, and would see that run alive in
    itself. A record of an older version (no boot id) is checked by its pid, never taken as this process.
    """
    if record.get("host") != socket.gethostname():
        return False
    pid = record.get("pid")
    if "boot_id" not in record or "process_start" not in record:
        return str(pid) == str(os.getpid()) or not process_alive(pid)
    if record["boot_id"] != boot_id():
        return True  # the machine restarted since, and every process of that boot with it
    started = process_start(pid)
    if started is None:
        return not process_alive(pid)  # not running; or running where its start cannot be read: taken as alive
    return started != record["process_start"]


def _break_if_stale(lock, record: dict) -> bool:
    """Remove a lock left by a run of this host that is no longer running; True when it was removed.

    A local ``flock`` keyed by the lock's URL makes the check and the removal one step among this
    host's runs of this user, so two of them never both break one stale lock and then both hold a
    fresh one; runs elsewhere never break a lock at all. The guard file lies in a folder only this
    user can write (``fsutil.private_folder``): at a name in the shared temporary folder, another user
    could create it first and hold it for ever.
    """
    if not _holder_gone(record):
        return False
    key = hashlib.sha256(lock.url.encode()).hexdigest()[:24]
    guard = open_regular_no_follow(private_folder() / f".batchclf-lock-{key}", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if _lock_record(lock) == record:
            lock.unlink()
        return True
    finally:
        os.close(guard)


@contextlib.contextmanager
def object_lock(output, wait: bool = False, waiting=None):
    """The lock of an output in a bucket: ``OUTPUT.lock``, an object made by a conditional create.

    The object says who holds it: host, boot id, pid and the process's start time (together they name
    one process, in a container too), the time the lock was taken and a random token of this taking. A
    process killed by SIGKILL cannot remove it; the next run on the same host sees that process is gone
    and takes the lock over. A holder on another host cannot be checked, so its lock is never broken:
    the run exits 4 and says how to remove it once that run is known to be gone (with ``wait``, it tells
    ``waiting``, a ``base.LockWait``, who holds it, and tries again). The lock is removed
    when the run ends, by any means short of SIGKILL (an error, SIGINT, SIGTERM), and only if it is
    still this run's.
    """
    lock = output.sibling(output.name + LOCK_SUFFIX)
    mine = {
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "pid": os.getpid(),
        "process_start": process_start(os.getpid()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "token": secrets.token_hex(8),
    }
    while not lock.create(json.dumps(mine).encode()):
        record = _lock_record(lock)
        if record is None or _break_if_stale(lock, record):
            continue  # released meanwhile, or left by a dead run of this host: try again
        who = f"pid {record.get('pid', '?')} on {record.get('host', '?')} since {record.get('started', '?')}"
        if not wait:
            raise LockedError(
                f"another batchclf run ({who}) holds {lock}; wait for it, or pass --wait to queue; "
                f"if that run is no longer running, delete {lock} and run again"
            )
        if waiting is not None:
            waiting.held(lambda holder=who: holder)
        time.sleep(LOCK_POLL_SECONDS)
    try:
        yield
    finally:
        if _lock_record(lock) == mine:
            lock.unlink()
