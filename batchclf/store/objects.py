"""An object in a bucket: any fsspec URL (``s3://``, ``gs://``, ``az://`` ...) as an input or an output.

An output in a bucket is an ``ObjectLocation``, named like a file, plus the two writes object storage
makes atomic: one PUT (``atomic_write`` builds the content in the system's temporary folder and
uploads it when complete), and a PUT that only creates (``If-None-Match: *``), which is what the lock
is made of. An input prefix is listed here on the driver (size + last-modified are the signature) and
its objects read by the workers (``read_object``).
Credentials come from where the storage library looks for them (environment, profile, instance role)
plus ``--storage-options JSON``; those options are carried in a ``StorageOptions`` whose ``repr`` hides
the values, so a secret never reaches a log line, an error message, the summary or the output.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import io
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import StorageError, UsageError
from .base import Location, OutsideRootError
from .object_lock import object_lock
from .options import StorageOptions

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def filesystem(url: str, options: StorageOptions | None = None):
    """The fsspec file system for ``url`` and the path inside it (fsspec caches instances per process).

    The URL is split here rather than parsed as a URL: an object's key is a name, and a ``?``, ``#``,
    ``%``, ``::`` or space in it is part of the name. Only the part before the first ``/`` after the
    scheme (a bucket, a host) may tell the file system something.
    """
    import fsspec

    options = options or StorageOptions()
    protocol, _, rest = url.partition("://")
    try:
        kind = _opaque_keys(fsspec.get_filesystem_class(protocol))
        settings = {**kind._get_kwargs_from_urls(f"{protocol}://{rest.split('/', 1)[0]}"), **options.options}
        return kind(**settings), kind._strip_protocol(url)
    except ImportError as error:
        raise UsageError(
            f"{protocol}:// needs its fsspec library: {options.redact(str(error))} "
            "(for s3://: pip install 'batchclf[s3]')"
        ) from None
    except (TypeError, ValueError) as error:
        raise UsageError(f"--storage-options not accepted for {url}: {options.redact(str(error))}") from None


def _opaque_keys(kind: type) -> type:
    """``kind``, or for S3 the s3fs class in which a key is only a name (``store.s3``)."""
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return kind
    if kind is not S3FileSystem:
        return kind
    from .s3 import OpaqueKeyS3FileSystem

    return OpaqueKeyS3FileSystem


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


def _check_input(url: str, options: StorageOptions) -> None:
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
            pa.nulls(len(texts), pa.int64()),  # objects have no inode
            pa.nulls(len(texts), pa.int64()),  # nor a ctime
        ],
        schema=schema,
    )
    return table.take(pc.sort_indices(table, [("path", "ascending")]))


READ_TRIES = 4  # per request, when the storage fails for a reason that is not the object's
READ_BACKOFF_SECONDS = 0.5  # doubled after each failed try: 0.5, 1, 2 s
_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,  # s3fs: 503 Service Unavailable, SlowDown
    getattr(errno, "EREMOTEIO", 121),  # s3fs: 500 Internal Error
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
}
# Kinds of the storage libraries (botocore, aiohttp, fsspec), by name: nothing of theirs is imported here.
_TRANSIENT_KINDS = {
    "ConnectionError",  # botocore's EndpointConnectionError, ConnectTimeoutError ...
    "HTTPClientError",  # botocore's ReadTimeoutError, ConnectionClosedError ...
    "ClientConnectionError",
    "ClientPayloadError",
    "ServerTimeoutError",
    "IncompleteRead",
}
_THROTTLING_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}


def transient(error: BaseException) -> bool:
    """Whether a storage error may pass if the request is made again: a connection error, a timeout,
    a 5xx, throttling. A missing object (404) or a refusal (403) is the object's answer, not the storage's."""
    for found in (error, error.__cause__):
        if found is None:
            continue
        if isinstance(found, (FileNotFoundError, PermissionError)):
            return False
        if isinstance(found, (TimeoutError, ConnectionError)):
            return True
        if {kind.__name__ for kind in type(found).__mro__} & _TRANSIENT_KINDS:
            return True
        response = getattr(found, "response", None)
        if isinstance(response, dict):
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
            if status >= 500 or status == 429 or (response.get("Error") or {}).get("Code") in _THROTTLING_CODES:
                return True
        if isinstance(found, OSError) and found.errno in _TRANSIENT_ERRNOS:
            return True
    return False


def read_object(url: str, options: StorageOptions | None, attempts: int = 3):
    """An object's bytes, with the size and last-modified they were read at (one GET after one HEAD).

    When the bytes read do not match the size just looked up, the object changed meanwhile and is
    read again, so the row's size and mtime describe the bytes scored. A storage that fails for a
    reason that is not the object's raises ``StorageError`` after a few tries (the shard fails, never
    an error row); an object that is gone or refused raises ``FileNotFoundError``/``PermissionError``,
    which the decoder turns into its row.
    """
    from ..decode import FileContent, ImageDecodeError

    options = options or StorageOptions()
    fs, path = filesystem(url, options)
    for _ in range(attempts):
        info = _request_with_retries(fs.info, path, url, options)
        data = _request_with_retries(fs.cat_file, path, url, options)
        if len(data) == info.get("size"):
            return FileContent(data, len(data), modified_us(info) or 0)
    raise ImageDecodeError(f"the object kept changing while being read ({attempts} tries); it is scored again next run")


def _request_with_retries(request, path: str, url: str, options: StorageOptions):
    """``request(path)``, made again after a transient failure, waiting longer each time."""
    from ..decode import ImageDecodeError

    for attempt in range(READ_TRIES):
        if attempt:
            time.sleep(READ_BACKOFF_SECONDS * 2 ** (attempt - 1))
        try:
            return request(path)
        except (FileNotFoundError, PermissionError):
            raise
        except Exception as error:  # a storage library raises its own kinds
            reason = options.redact(str(error).splitlines()[0] if str(error) else type(error).__name__)
            if not transient(error):  # the object's own failure: its row says why, without an option value
                raise ImageDecodeError(f"cannot read the object: {reason}") from None
    raise StorageError(
        f"cannot read {url}: {reason} ({READ_TRIES} tries); the storage is failing, not the image: "
        "the finished shards are kept, run the same command again to resume"
    ) from None


def _check_output(url: str, options: StorageOptions) -> None:
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


class ObjectLocation(Location):
    """An object in a bucket (or a prefix, taken as a folder), named like a local file."""

    concurrent_reads = 8  # object reads wait on the network: enough requests in flight to hide the latency

    def __init__(self, url: str, options: StorageOptions | None = None):
        self.url = url
        self.options = options or StorageOptions()

    def __str__(self) -> str:
        return self.url

    @property
    def storage_options(self) -> StorageOptions:
        return self.options

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def sibling(self, name: str) -> ObjectLocation:
        return ObjectLocation(self.url.rstrip("/").rsplit("/", 1)[0] + "/" + name, self.options)

    def child(self, name: str) -> ObjectLocation:
        return ObjectLocation(self.url.rstrip("/") + "/" + name, self.options)

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

    def is_folder(self) -> bool:
        """Whether objects lie under this prefix; a bucket that cannot be reached is a one-line ``UsageError``."""
        fs, path = self._fs()
        try:
            return fs.isdir(path)
        except Exception as error:
            raise storage_error(self.url, error, self.options, "reach") from None

    def open_read(self):
        fs, path = self._fs()
        return fs.open(path, "rb")

    def read_text(self) -> str:
        fs, path = self._fs()
        return fs.cat_file(path).decode("utf-8")

    def create(self, data: bytes) -> bool:
        """Write the object only if none exists (a conditional PUT); False when one already does."""
        fs, path = self._fs()
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    @contextlib.contextmanager
    def atomic_write(self) -> Iterator[io.BufferedWriter]:
        """A file in the system's temporary folder, uploaded when the block ends (one PUT, or a multipart
        upload that appears only when complete): a reader of the bucket sees the old object or the new one."""
        with tempfile.TemporaryDirectory(prefix="batchclf-upload-") as folder:
            local = Path(folder) / "upload"
            with open(local, "wb") as stream:
                yield stream
            fs, path = self._fs()
            fs.put_file(str(local), path)

    def lock(self, wait: bool = False, waiting=None):
        return object_lock(self, wait, waiting)

    def _under(self, recursive: bool) -> list[str]:
        """The names just under this prefix (objects and deeper prefixes), or every object at any depth."""
        fs, path = self._fs()
        prefix = path.rstrip("/") + "/"
        try:
            found = fs.find(path) if recursive else fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return [name[len(prefix) :] for name in found if name.startswith(prefix)]

    def children(self) -> list[ObjectLocation]:
        """What lies just under this prefix, as if it were a folder: objects, and deeper prefixes."""
        return [self.child(name.rstrip("/")) for name in self._under(recursive=False)]

    def make_folder(self) -> None:
        pass  # a prefix exists as soon as an object is written under it

    def unlink(self) -> None:
        fs, path = self._fs()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)

    def remove_tree(self) -> None:
        """Every object under this prefix, at any depth."""
        for name in self._under(recursive=True):
            self.child(name).unlink()

    @contextlib.contextmanager
    def open_inside(self, name: str) -> Iterator[io.BytesIO]:
        """The object ``name`` under this prefix; a name with an empty, ``.`` or ``..`` segment is refused,
        so no object outside the prefix is read."""
        if any(part in ("", ".", "..") for part in name.split("/")):
            raise OutsideRootError(name)
        yield io.BytesIO(read_object(self.child(name).url, self.options).data)

    def holds(self, other: Location) -> bool:
        return isinstance(other, ObjectLocation) and other.url.startswith(self.url.rstrip("/") + "/")

    def reader(self):
        return functools.partial(read_object, options=self.options)

    def check_input(self, content_hash: bool = False) -> None:
        if content_hash:
            raise UsageError("--hash reads every file on the driver; for a URL input leave it out")
        _check_input(self.url, self.options)

    def check_output(self) -> None:
        _check_output(self.url, self.options)
