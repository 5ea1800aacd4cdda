"""Object storage: any fsspec URL (``s3://``, ``gs://``, ``az://`` ...) as the input or the output of a run.

Everything that knows about URLs lives here; discovery, the workers, the writer and the config only
call in. An output in a bucket is an ``ObjectPath``: the few things the writer asks of a ``Path``
(name, sibling, exists, open), plus the two writes object storage makes atomic: one PUT, and a PUT
that only creates (``If-None-Match: *``), which is what the lock is made of.
Credentials come from where the storage library looks for them (environment, profile, instance role)
plus ``--storage-options JSON``; those options are carried in a ``StorageOptions`` whose ``repr`` hides
the values, so a secret never reaches a log line, an error message, the summary or the output.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError

URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
URL_DECODE_THREADS = 8  # object reads wait on the network: enough requests in flight to hide the latency
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def is_url(location) -> bool:
    """A ``scheme://`` location (``file://`` included) rather than a local path."""
    return isinstance(location, str) and bool(URL_PATTERN.match(location))


class StorageOptions:
    """Keyword arguments for the fsspec file system; printed as their keys only, never their values."""

    def __init__(self, options: dict | None = None):
        self.options = dict(options or {})

    @classmethod
    def parse(cls, text: str | None) -> StorageOptions:
        """``--storage-options`` text: a JSON object, refused with a message that never echoes it."""
        if not text:
            return cls()
        try:
            value = json.loads(text)
        except ValueError:
            raise UsageError(
                '--storage-options must be a JSON object, e.g. \'{"endpoint_url": "https://..."}\''
            ) from None
        if not isinstance(value, dict):
            raise UsageError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
        return cls(value)

    def __repr__(self) -> str:
        return f"StorageOptions(keys={sorted(self.options)})"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, StorageOptions) and self.options == other.options

    def __hash__(self) -> int:
        return hash(json.dumps(self.options, sort_keys=True, default=str))

    def secrets(self) -> list[str]:
        """Every text value, nested ones included: what must never be shown."""
        found: list[str] = []

        def walk(value) -> None:
            if isinstance(value, dict):
                for item in value.values():
                    walk(item)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    walk(item)
            elif isinstance(value, str) and len(value) >= 4:
                found.append(value)

        walk(self.options)
        return found

    def redact(self, text: str) -> str:
        for secret in self.secrets():
            text = text.replace(secret, "***")
        return text


def filesystem(url: str, options: StorageOptions | None = None):
    """The fsspec file system for ``url`` and the path inside it (fsspec caches instances per process)."""
    import fsspec.core

    options = options or StorageOptions()
    try:
        return fsspec.core.url_to_fs(url, **options.options)
    except ImportError as error:
        scheme = url.split("://", 1)[0]
        raise UsageError(
            f"{scheme}:// needs its fsspec library: {options.redact(str(error))} "
            "(for s3://: pip install 'batchclf[s3]')"
        ) from None
    except (TypeError, ValueError) as error:
        raise UsageError(f"--storage-options not accepted for {url}: {options.redact(str(error))}") from None


def storage_error(url: str, error: Exception, options: StorageOptions, doing: str) -> UsageError:
    """One line saying what failed and what to do; the storage options' values never appear in it."""
    if isinstance(error, FileNotFoundError):
        reason = "not found (check the bucket and prefix)"
    elif isinstance(error, PermissionError):
        reason = "access denied (check the credentials: environment, profile, or --storage-options)"
    else:
        detail = options.redact(str(error).splitlines()[0] if str(error) else type(error).__name__)
        reason = f"{detail} (check the endpoint, the network and --storage-options)"
    return UsageError(f"cannot {doing} {url}: {reason}")


def modified_us(info: dict) -> int | None:
    """An object's last-modified time in µs, from whichever key its file system reports."""
    for key in ("LastModified", "last_modified", "updated", "mtime", "modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return (value - _EPOCH) // datetime.timedelta(microseconds=1)
        if isinstance(value, (int, float)):
            return int(value * 1_000_000)
    return None


def check_input(url: str, options: StorageOptions) -> None:
    """Refuse an input prefix that cannot be reached before any work starts."""
    fs, path = filesystem(url, options)
    try:
        found = fs.exists(path)
    except Exception as error:  # a storage library raises its own kinds: all mean "cannot reach it"
        raise storage_error(url, error, options, "reach the input") from None
    if not found:
        raise UsageError(f"input {url} does not exist (no such bucket or prefix); check the URL")


def list_objects(url: str, options: StorageOptions) -> Iterator[tuple[str, int | None, int | None]]:
    """(relative name, size, last-modified µs) of every object under the prefix ``url``, unsorted."""
    fs, path = filesystem(url, options)
    prefix = path.rstrip("/") + "/"
    try:
        found = fs.find(path, detail=True)
    except Exception as error:
        raise storage_error(url, error, options, "list the input") from None
    for name, info in found.items():
        if info.get("type", "file") != "file" or not name.startswith(prefix):
            continue
        yield name[len(prefix) :], info.get("size"), modified_us(info)


def sorted_listing(rows: list[tuple], schema):
    """The listing of a prefix as one table sorted by path text (object stores list in key order,
    which is not the output's order once names are escaped, so the listing is sorted in memory)."""
    import pyarrow as pa  # here, so the command line can parse a location without loading Arrow
    import pyarrow.compute as pc

    texts, sizes, mtimes = (list(column) for column in zip(*rows)) if rows else ([], [], [])
    table = pa.table(
        [
            pa.array(texts, pa.string()),
            pa.array(sizes, pa.int64()),
            pa.array(mtimes, pa.int64()),
            pa.array([True] * len(texts), pa.bool_()),
        ],
        schema=schema,
    )
    return table.take(pc.sort_indices(table, [("path", "ascending")]))


class ObjectChanged(Exception):
    """The object was rewritten while it was read."""


def read_object(url: str, options: StorageOptions | None, attempts: int = 3):
    """An object's bytes, with the size and last-modified they were read at (one GET after one HEAD).

    When the bytes read do not match the size just looked up, the object changed meanwhile and is
    read again, so the row's size and mtime describe the bytes scored.
    """
    from .decode import FileContent, ImageDecodeError

    fs, path = filesystem(url, options)
    for _ in range(attempts):
        info = fs.info(path)
        data = fs.cat_file(path)
        if len(data) == info.get("size"):
            return FileContent(data, len(data), modified_us(info) or 0)
    raise ImageDecodeError(f"the object kept changing while being read ({attempts} tries); it is scored again next run")


def check_output(url: str, options: StorageOptions) -> None:
    """Refuse an output location that cannot be written, before any work starts, leaving nothing behind.

    A probe object is written beside the output and removed: that is the one test that catches a
    missing bucket, an unreachable endpoint and missing write permission alike.
    """
    if url.endswith("/"):
        raise UsageError(f"output {url} ends with /; give an object name such as {url}predictions.parquet")
    fs, path = filesystem(url, options)
    probe = f"{path}.probe-{secrets.token_hex(4)}"
    try:
        is_prefix = fs.isdir(path)
        if not is_prefix:
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
    except Exception as error:  # a storage library raises its own kinds: all mean "cannot write there"
        raise storage_error(url, error, options, "write the output to") from None
    if is_prefix:
        raise UsageError(f"output {url} is a prefix holding objects; give a name such as {url}/predictions.parquet")


class ObjectPath:
    """An object in a bucket, named like a local file: enough of ``Path`` for the writer and the report."""

    def __init__(self, url: str, options: StorageOptions | None = None):
        self.url = url
        self.options = options or StorageOptions()

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectPath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectPath) and self.url == other.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def with_name(self, name: str) -> ObjectPath:
        return ObjectPath(self.url.rstrip("/").rsplit("/", 1)[0] + "/" + name, self.options)

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(self.url.rstrip("/") + "/" + name, self.options)

    def _fs(self):
        fs, path = filesystem(self.url, self.options)
        fs.invalidate_cache(path)  # another process may have written here since this one last listed
        return fs, path

    def exists(self) -> bool:
        fs, path = self._fs()
        return fs.exists(path)

    def is_file(self) -> bool:
        """Whether the object exists; a bucket that cannot be reached is a one-line ``UsageError``."""
        fs, path = self._fs()
        try:
            return fs.isfile(path)
        except Exception as error:
            raise storage_error(self.url, error, self.options, "reach") from None

    def open(self, mode: str = "rb"):
        fs, path = self._fs()
        return fs.open(path, mode)

    def read_text(self) -> str:
        fs, path = self._fs()
        return fs.cat_file(path).decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """One PUT: readers see the old object or the new one."""
        fs, path = self._fs()
        fs.pipe_file(path, data)

    def create(self, data: bytes) -> bool:
        """Write the object only if none exists (a conditional PUT); False when one already does."""
        fs, path = self._fs()
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def upload(self, local: Path) -> None:
        """Upload a finished local file (one PUT, or a multipart upload that appears only when complete)."""
        fs, path = self._fs()
        fs.put_file(str(local), path)

    def children(self) -> list[ObjectPath]:
        """The objects under this prefix, as if it were a folder."""
        fs, path = self._fs()
        prefix = path.rstrip("/") + "/"
        try:
            found = fs.find(path)
        except FileNotFoundError:
            return []
        return [self / name[len(prefix) :] for name in found if name.startswith(prefix)]

    def unlink(self, missing_ok: bool = True) -> None:
        fs, path = self._fs()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)

    def remove_prefix(self) -> None:
        """Every object under this prefix."""
        for child in self.children():
            child.unlink()


def location_argument(text: str) -> Path | str:
    """A command-line location: a URL stays text (``Path`` would fold ``s3://`` into ``s3:/``), the rest a path."""
    return text if is_url(text) else Path(text)


def location(place, options: StorageOptions | None = None) -> Path | ObjectPath:
    """A local ``Path``, or an ``ObjectPath`` when ``place`` is a URL (reading it uses ``options``)."""
    if isinstance(place, ObjectPath):
        return place
    return ObjectPath(place, options) if is_url(str(place)) else Path(place)
