"""The ``Location`` interface: what the stages ask of a place bytes live, whether a file or an object.

A run's output, its lock, its parts and an input root are each a ``Location``; ``store.location``
picks the implementation once (``local.LocalLocation`` for a path, ``objects.ObjectLocation`` for a
URL) and no stage asks which one it holds. The two writes every caller relies on are part of the
interface, so each implementation keeps its own way of making them safe: ``atomic_write`` (the old
content or the new, never part of one, and nothing left behind by an interrupted write) and ``lock``
(one writer per output).
"""

from __future__ import annotations

import contextlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..fsutil import temporary_name
from .options import StorageOptions

# The names a run makes beside its output NAME, one copy each: NAME.lock, NAME.parts/ holding
# attempt-NNNN-SHARD.parquet and run.json, and the atomic write's temporaries (fsutil.temporary_name).
LOCK_SUFFIX = ".lock"
PARTS_SUFFIX = ".parts"
PART_RECORD = "run.json"
PART_NAME = re.compile(r"attempt-(\d{4})-(.+)\.parquet$")
_LONGEST_SHARD = "shard-999999"  # shard.shard_name of the millionth shard: a bound, not a name in use


class LockWait:
    """What a run waiting for a lock says: ``say(holder, waited_seconds)`` when it finds the lock held, then
    every ``every`` seconds while it still is (0: only the first time). ``holder`` names who holds it."""

    def __init__(self, say: Callable[[str, float], None], every: float) -> None:
        self.say, self.every = say, every
        self._started: float | None = None
        self._said: float | None = None

    def held(self, holder: Callable[[], str]) -> None:
        """The lock was found held: say so if it is time."""
        now = time.monotonic()
        if self._started is None:
            self._started = now
        if self._said is None or (self.every > 0 and now - self._said >= self.every):
            self._said = now
            self.say(holder(), now - self._started)


def part_name(attempt: int, shard: str) -> str:
    """A finished shard's name inside ``NAME.parts/``."""
    return f"attempt-{attempt:04d}-{shard}.parquet"


def names_made_beside(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The longest names a run on the output ``name`` makes, by what they are: beside the output (its
    temporary, the lock, the parts folder), and inside the parts folder (a temporary of a part, of run.json)."""
    beside = {
        "its temporary .NAME.XXXXXXXX.partial": temporary_name(Path(name)),
        "its lock NAME.lock": name + LOCK_SUFFIX,
        "its parts folder NAME.parts": name + PARTS_SUFFIX,
    }
    part = part_name(9999, _LONGEST_SHARD)
    inside = {
        "a part's temporary": temporary_name(Path(part)),
        "run.json's temporary": temporary_name(Path(PART_RECORD)),
    }
    return beside, inside


class OutsideRootError(Exception):
    """A name that would lead outside the location it is to be read from (``..``, a link, an absolute path)."""


class Location(ABC):
    """A file on disk or an object in a bucket, named like a file: it has a name, siblings and children."""

    # Reads worth keeping in flight per worker to hide each read's latency (object reads wait on the network).
    concurrent_reads: int = 1
    # What a worker needs to read this location's children (None: nothing; the values are never shown).
    storage_options: StorageOptions | None = None
    # Where it is on this machine's file system; None for an object, which only the store can read.
    local_path: Path | None = None

    @property
    @abstractmethod
    def name(self) -> str:
        """The last part of the name (``predictions.parquet``)."""

    @abstractmethod
    def sibling(self, name: str) -> Location:
        """``name`` beside this location (``OUTPUT.lock``, ``OUTPUT.parts``)."""

    @abstractmethod
    def child(self, name: str) -> Location:
        """``name`` inside this location, taken as a folder (or a prefix)."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def is_file(self) -> bool: ...

    @abstractmethod
    def is_folder(self) -> bool:
        """A folder on disk, or a prefix with objects under it."""

    @abstractmethod
    def open_read(self) -> contextlib.AbstractContextManager[BinaryIO]:
        """The content as a binary stream (a context manager)."""

    def arrow_source(self) -> contextlib.AbstractContextManager:
        """What Arrow reads: an open stream unless the implementation has something faster."""
        return self.open_read()

    def read_text(self) -> str:
        with self.open_read() as stream:
            return stream.read().decode("utf-8")

    @abstractmethod
    def atomic_write(self) -> contextlib.AbstractContextManager[BinaryIO]:
        """A binary stream whose content replaces this location only when the block ends without an error.

        Until then readers see the old content; an exception inside the block leaves the old content
        and nothing else behind.
        """

    @abstractmethod
    def lock(self, wait: bool = False, waiting: LockWait | None = None) -> contextlib.AbstractContextManager[None]:
        """Hold ``NAME.lock`` for the block, so two runs never write this location; a second holder is
        refused with ``LockedError`` (or, with ``wait``, queues behind the first, telling ``waiting``)."""

    @abstractmethod
    def children(self) -> list[Location]:
        """Everything inside this location taken as a folder; [] when there is nothing there."""

    @abstractmethod
    def make_folder(self) -> None:
        """Make this location ready to hold children (nothing to do for a prefix)."""

    @abstractmethod
    def unlink(self) -> None:
        """Remove this file or object; one already gone is fine."""

    @abstractmethod
    def remove_tree(self) -> None:
        """Remove this folder (or every object under this prefix) and everything in it."""

    @abstractmethod
    def open_inside(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Open the child ``name`` for reading, never anything outside this location.

        ``name`` may come from a file anyone wrote: one that leads outside raises ``OutsideRootError``
        before a byte is read; one that is not there raises ``FileNotFoundError``.
        """

    def holds(self, other: Location) -> bool:
        """Whether ``other`` lies under this location taken as a folder (or a prefix), at any depth."""
        return False

    def reader(self) -> Callable | None:
        """The function workers read a child's bytes with (URL → ``decode.FileContent``); None: read the file."""
        return None

    @abstractmethod
    def check_input(self, content_hash: bool = False) -> None:
        """Refuse an input that cannot be read, before any work starts (a ``UsageError`` that says what to do)."""

    @abstractmethod
    def check_output(self) -> None:
        """Refuse an output that cannot be written, before any work starts, leaving nothing behind."""

    @abstractmethod
    def __str__(self) -> str:
        """The text shown to users: the path or the URL, never a storage option."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash((type(self).__name__, str(self)))
