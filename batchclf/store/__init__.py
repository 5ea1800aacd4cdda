"""Where bytes live: a folder on disk or an object in a bucket, behind one ``Location`` interface.

This package is the only one that knows a folder from a bucket. ``location`` chooses, once, at the
edge: a URL (``s3://``, ``gs://`` ... any fsspec URL) becomes an ``objects.ObjectLocation``, anything
else a ``local.LocalLocation``. The stages then ask the location (exists, read, write atomically,
lock, list, remove) and never which kind it is. ``store.parts`` (the parts store) and
``store.parquet`` (Parquet files written and read at a location) are built on the interface alone;
they load Arrow, so they are imported on their own and the command line can parse a location
without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from ..fsutil import can_create_files_in
from ..paths import is_image_name
from .base import Location, LockWait, OutsideRootError
from .local import LocalLocation
from .objects import ObjectLocation, list_objects, read_object, sorted_listing
from .options import StorageOptions

__all__ = [
    "Location",
    "LocalLocation",
    "LockWait",
    "ObjectLocation",
    "OutsideRootError",
    "StorageOptions",
    "check_changes",
    "check_input",
    "check_output",
    "is_url",
    "list_objects",
    "location",
    "location_argument",
    "read_object",
    "reader_for",
    "sorted_listing",
]

URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(place) -> bool:
    """A ``scheme://`` text (``file://`` included) rather than a local path."""
    return isinstance(place, str) and bool(URL_PATTERN.match(place))


def location_argument(text: str) -> Path | str:
    """A command-line location: a URL stays text (``Path`` would fold ``s3://`` into ``s3:/``), the rest a path."""
    return text if is_url(text) else Path(text)


def location(place: Location | Path | str, options: StorageOptions | None = None) -> Location:
    """The one choice: an object location when ``place`` is a URL (read and written with ``options``),
    a local one otherwise; a ``Location`` is returned as it is."""
    if isinstance(place, Location):
        return place
    return ObjectLocation(place, options) if is_url(place) else LocalLocation(place)


def reader_for(root: Path | str, options: StorageOptions | None = None) -> Callable | None:
    """How a worker reads the images under ``root``: a function of a full name, or None to read files."""
    return location(root, options).reader()


def check_input(place: Path | str, options: StorageOptions | None = None, content_hash: bool = False) -> None:
    """Refuse an input that cannot be read (``content_hash``: one the driver must hash) before any work."""
    location(place, options).check_input(content_hash)


def check_locations(config) -> None:
    """Refuse a run's input and output (a ``RunConfig``'s) before any work: the input first; the
    output last, since in a bucket that check writes (a probe object, removed at once)."""
    check_input(config.input, config.storage_options, content_hash=config.hash)
    source = location(config.input, config.storage_options)
    target = location(config.output, config.storage_options)
    if is_image_name(target.name) and source.holds(target):
        raise UsageError(
            f"output {target} is an image name inside the input {source}: it would be overwritten or scored "
            "as an image; write the output outside the input, as NAME.parquet"
        )
    check_output(config.output, config.storage_options)
    if getattr(config, "changes", None) is not None:
        check_changes(config.changes, config.storage_options)


def check_changes(place: Path | str, options: StorageOptions | None = None) -> None:
    """Refuse a ``--changes`` file the run could not write, before any work (a bucket is probed like an output)."""
    target = location(place, options)
    if target.local_path is None:
        try:
            target.check_output()
        except UsageError as error:
            raise UsageError(f"--changes: {error}") from None
        return
    path = target.local_path
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"--changes {path} is a folder; give a file name such as {path}/changes.parquet")
    if not folder.is_dir():
        raise UsageError(f"--changes folder {folder} does not exist; create it first")
    if not can_create_files_in(folder):
        raise UsageError(f"--changes folder {folder} is not writable; choose another path")


def check_output(place: Path | str, options: StorageOptions | None = None) -> None:
    """Refuse an output that cannot be written before any work, leaving nothing behind (a bucket is
    probed with an object written and removed: call this last among the checks), and an output that
    exists but is not one batchclf wrote: replacing it would destroy someone's file (an input image)."""
    target = location(place, options)
    target.check_output()
    if target.is_file():
        _check_replaceable(target)


def _check_replaceable(target: Location) -> None:
    """Only a batchclf output (or an empty file) is replaced; Arrow is loaded only when there is a file."""
    from .parquet import is_batchclf_output

    try:
        with target.open_read() as stream:
            empty = not stream.read(1)
        if empty or is_batchclf_output(target):
            return
    except OSError as error:
        reason = (target.storage_options or StorageOptions()).redact(error.strerror or str(error))
        raise UsageError(f"cannot read output {target} to check it is a batchclf output: {reason}") from None
    raise UsageError(
        f"output {target} exists and is not a batchclf output (a Parquet file with batchclf's metadata); "
        "it is left as it is: choose another output name, or remove it first"
    )
