"""A storage that fails is not an image that fails: which errors of an object read are tried again, what
stops the shard (``StorageError``) and what stays an error row, and that no storage option reaches a
message. On canned exceptions and a stand-in file system: no server."""

from __future__ import annotations

import errno
import io

import pytest
from PIL import Image

from batchclf.decode import ImageDecodeError, Preprocessing, decode_image
from batchclf.errors import StorageError
from batchclf.store import StorageOptions, objects

botocore = pytest.importorskip("botocore.exceptions")

ENDPOINT = "http://minio.internal.example:9000"
OPTIONS = StorageOptions({"endpoint_url": ENDPOINT, "key": "key", "secret": "fake-secret-Zq81xYvP"})
URL = "s3://bucket/images/a.jpg"


def _client_error(status: int, code: str) -> Exception:
    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.ClientError(response, "GetObject")


def _translated(error: Exception, exception: Exception) -> Exception:
    """What s3fs raises for a ClientError: an OSError of its own, the ClientError as its cause."""
    exception.__cause__ = error
    return exception


@pytest.mark.parametrize(
    "error",
    [
        botocore.EndpointConnectionError(endpoint_url=f"{ENDPOINT}/bucket/images/a.jpg"),
        botocore.ConnectTimeoutError(endpoint_url=ENDPOINT),
        botocore.ReadTimeoutError(endpoint_url=ENDPOINT),
        botocore.ConnectionClosedError(endpoint_url=ENDPOINT),
        _client_error(503, "SlowDown"),
        _client_error(500, "InternalError"),
        _client_error(429, "TooManyRequests"),
        _translated(_client_error(503, "ServiceUnavailable"), OSError(errno.EBUSY, "Service Unavailable")),
        _translated(_client_error(502, "BadGateway"), OSError(errno.EIO, "Bad Gateway")),
        TimeoutError("timed out"),
        ConnectionResetError(errno.ECONNRESET, "reset by peer"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_connection_errors_timeouts_5xx_and_throttling_are_transient(error):
    assert objects.transient(error)


@pytest.mark.parametrize(
    "error",
    [
        _translated(_client_error(404, "NoSuchKey"), FileNotFoundError("NoSuchKey")),
        _translated(_client_error(403, "AccessDenied"), PermissionError("AccessDenied")),
        _client_error(404, "NoSuchKey"),
        _client_error(400, "InvalidArgument"),
        OSError(errno.EINVAL, "Bad Request"),
        ValueError("not a storage failure"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_missing_or_refused_object_and_a_bad_request_are_not(error):
    assert not objects.transient(error)


class StandIn:
    """A file system whose every request fails with the next of ``failures`` (None: answers)."""

    def __init__(self, data: bytes, failures: list):
        self.data, self.failures, self.requests = data, list(failures), 0

    def _answer(self, value):
        self.requests += 1
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise failure
        return value

    def info(self, path):
        return self._answer({"size": len(self.data), "LastModified": "2026-01-01T00:00:00Z"})

    def cat_file(self, path):
        return self._answer(self.data)


@pytest.fixture
def stand_in(monkeypatch):
    slept = []
    monkeypatch.setattr(objects.time, "sleep", slept.append)

    def use(data: bytes, failures: list) -> StandIn:
        fs = StandIn(data, failures)
        monkeypatch.setattr(objects, "filesystem", lambda url, options=None: (fs, url.removeprefix("s3://")))
        fs.slept = slept
        return fs

    return use


def _jpeg() -> bytes:
    stream = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(stream, "JPEG")
    return stream.getvalue()


def test_a_transient_failure_is_tried_again_with_growing_waits(stand_in):
    lost = botocore.EndpointConnectionError(endpoint_url=ENDPOINT)
    fs = stand_in(b"bytes", [lost, lost, None, lost, None])  # HEAD fails twice, then GET once
    content = objects.read_object(URL, OPTIONS)
    assert content.data == b"bytes" and fs.requests == 5
    assert fs.slept == [0.5, 1.0, 0.5]


def test_a_storage_that_keeps_failing_stops_the_shard_without_any_option_in_the_message(stand_in):
    fs = stand_in(_jpeg(), [botocore.EndpointConnectionError(endpoint_url=f"{ENDPOINT}/bucket/images/a.jpg")] * 9)
    with pytest.raises(StorageError) as caught:
        decode_image(URL, Preprocessing(32), read=lambda url: objects.read_object(url, OPTIONS))
    assert fs.requests == objects.READ_TRIES and fs.slept == [0.5, 1.0, 2.0]
    message = str(caught.value)
    assert message.startswith(f"cannot read {URL}: Could not connect to the endpoint URL")
    assert "cannot decode" not in message and "run the same command again to resume" in message
    assert not any(value in message for value in OPTIONS.secrets()) and "minio.internal" not in message


def test_an_object_deleted_during_the_run_stays_an_error_row(stand_in):
    fs = stand_in(_jpeg(), [_translated(_client_error(404, "NoSuchKey"), FileNotFoundError("NoSuchKey"))])
    with pytest.raises(ImageDecodeError, match=r"^file not found \(deleted during the run"):
        decode_image(URL, Preprocessing(32), read=lambda url: objects.read_object(url, OPTIONS))
    assert fs.requests == 1 and fs.slept == []


def test_another_failure_of_the_object_is_its_row_with_options_hidden(stand_in):
    stand_in(_jpeg(), [OSError(errno.EINVAL, f"Bad Request for {ENDPOINT}/bucket/images/a.jpg")])
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(URL, Preprocessing(32), read=lambda url: objects.read_object(url, OPTIONS))
    assert str(caught.value) == "cannot read the object: [Errno 22] Bad Request for ***/bucket/images/a.jpg"


def test_an_object_read_after_a_failure_is_scored(stand_in):
    stand_in(_jpeg(), [TimeoutError("timed out")])
    decoded = decode_image(URL, Preprocessing(32), read=lambda url: objects.read_object(url, OPTIONS))
    assert decoded.pixels.shape == (32, 32, 3) and (decoded.width, decoded.height) == (40, 30)
