"""An OUTPUT in a bucket (parts, resume, --incremental, the lock, the report), against moto's S3 server via s3fs.

Every run here is compared with the same run written to a local file.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, save_image
from test_storage import BUCKET, COMPARED, SECRET, _rows, _run, s3_with_images

from batchclf.errors import LockedError
from batchclf.fsutil import boot_id, process_start
from batchclf.store import StorageOptions, location

IMAGES = f"s3://{BUCKET}/images"


def _keys(client, prefix: str) -> list[str]:
    found = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in found)


def _object_rows(client, key: str) -> list[dict]:
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body), columns=COMPARED).to_pylist()


def _object_metadata(client, key: str) -> str:
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return pq.read_schema(io.BytesIO(body)).metadata[b"batchclf"].decode()


@pytest.fixture(scope="module")
def s3(datasets, tmp_path_factory):
    """The S3 server of ``test_storage``, with the shared images in the bucket and on disk."""
    with s3_with_images(datasets, tmp_path_factory) as found:
        yield found


@pytest.fixture(scope="module")
def local_rows(s3, tmp_path_factory) -> list[dict]:
    """The rows of the same images run from disk to a local file: what every bucket run must equal."""
    _, local, _ = s3
    output = tmp_path_factory.mktemp("reference") / "local.parquet"
    result = _run(str(local), str(output))
    assert result.returncode == 0, result.stderr
    rows = _rows(output)
    assert len(rows) > 20
    return rows


def test_a_run_into_a_bucket_equals_the_local_run_and_keeps_parts_only_when_asked(s3, local_rows, tmp_path):
    client, local, options = s3
    summary = tmp_path / "summary.json"
    target = f"s3://{BUCKET}/out-a/predictions.parquet"
    result = _run(IMAGES, target, "--storage-options", options, "--keep-parts", "--summary", str(summary))
    assert result.returncode == 0, result.stderr
    assert _object_rows(client, "out-a/predictions.parquet") == local_rows
    parts = _keys(client, "out-a/predictions.parquet.parts/")
    assert "out-a/predictions.parquet.parts/run.json" in parts
    assert any(key.rsplit("/", 1)[1].startswith("attempt-0001-") for key in parts)
    assert "out-a/predictions.parquet.lock" not in _keys(client, "out-a/")  # released at the end
    assert list(tmp_path.iterdir()) == [summary]  # nothing written beside the command but the summary
    run_json = client.get_object(Bucket=BUCKET, Key="out-a/predictions.parquet.parts/run.json")["Body"].read()
    metadata = _object_metadata(client, "out-a/predictions.parquet")
    for text in (result.stdout, result.stderr, summary.read_text(), metadata, run_json.decode()):
        assert SECRET not in text
    assert json.loads(summary.read_text())["output"] == target

    # A local input into the bucket, without --keep-parts: same rows, and no parts left behind.
    result = _run(str(local), f"s3://{BUCKET}/out-b/predictions.parquet", "--storage-options", options)
    assert result.returncode == 0, result.stderr
    assert _object_rows(client, "out-b/predictions.parquet") == local_rows
    assert _keys(client, "out-b/") == ["out-b/predictions.parquet"]


def test_a_killed_run_into_a_bucket_resumes_to_the_same_rows(s3, local_rows):
    client, _, options = s3
    target = f"s3://{BUCKET}/out-killed/predictions.parquet"
    command = [sys.executable, "-m", "batchclf", "run", IMAGES, target, "--storage-options", options]
    driver = subprocess.Popen(
        [*command, "--shard-size", "4", "--no-progress", "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not any("/attempt-" in key for key in _keys(client, "out-killed/predictions.parquet.parts/")):
        assert driver.poll() is None, driver.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    keys = _keys(client, "out-killed/")
    assert "out-killed/predictions.parquet" not in keys
    assert "out-killed/predictions.parquet.lock" in keys  # SIGKILL leaves it: its pid on this host is gone
    resumed = _run(IMAGES, target, "--storage-options", options, "--shard-size", "4")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: " in resumed.stderr
    assert _object_rows(client, "out-killed/predictions.parquet") == local_rows
    assert _keys(client, "out-killed/") == ["out-killed/predictions.parquet"]


def test_incremental_into_a_bucket_after_objects_added_changed_and_deleted_equals_a_local_run(s3, tmp_path):
    client, local, options = s3
    target = f"s3://{BUCKET}/out-nightly/predictions.parquet"
    assert _run(IMAGES, target, "--storage-options", options).returncode == 0
    names = _keys(client, "images/")
    changed = save_image(tmp_path / "changed.png", size=(80, 60), color=(20, 200, 40))
    client.delete_object(Bucket=BUCKET, Key=names[0])
    client.upload_file(str(changed), BUCKET, names[1])
    client.upload_file(str(changed), BUCKET, "images/new/added.png")
    mirror = tmp_path / "mirror"  # the bucket's images as they are now, on disk
    for key in _keys(client, "images/"):
        (mirror / key).parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(mirror / key))
    try:
        nightly = _run(IMAGES, target, "--storage-options", options, "--incremental")
        assert nightly.returncode == 0, nightly.stderr
        assert "1 new, 1 changed" in nightly.stderr and "1 dropped" in nightly.stderr
        assert _run(str(mirror / "images"), str(tmp_path / "full.parquet")).returncode == 0
        assert _object_rows(client, "out-nightly/predictions.parquet") == _rows(tmp_path / "full.parquet")
        again = _run(IMAGES, target, "--storage-options", options, "--incremental")
        assert again.returncode == 0, again.stderr
        assert "nothing needed scoring" in again.stderr  # last night's output was read back from the bucket
    finally:  # the other tests compare the bucket with the local copy
        client.delete_object(Bucket=BUCKET, Key="images/new/added.png")
        for key in names[:2]:
            client.upload_file(str(local / key.removeprefix("images/")), BUCKET, key)


def test_a_lock_held_elsewhere_is_exit_4_says_how_to_remove_it_and_is_left_alone(s3, tmp_path):
    client, local, options = s3
    holder = {"host": "another-host", "pid": 1234, "started": "2026-01-01T00:00:00Z", "token": "t"}
    client.put_object(Bucket=BUCKET, Key="out-held/predictions.parquet.lock", Body=json.dumps(holder).encode())
    result = _run(str(local), f"s3://{BUCKET}/out-held/predictions.parquet", "--storage-options", options)
    assert result.returncode == 4, result.stderr
    assert result.stderr.count("\n") == 1 and "another-host" in result.stderr
    assert f"delete s3://{BUCKET}/out-held/predictions.parquet.lock" in result.stderr
    assert SECRET not in result.stderr
    assert _keys(client, "out-held/") == ["out-held/predictions.parquet.lock"]  # not broken, nothing written
    body = client.get_object(Bucket=BUCKET, Key="out-held/predictions.parquet.lock")["Body"].read()
    assert json.loads(body) == holder


def _lock_options(s3) -> StorageOptions:
    return StorageOptions(json.loads(s3[2]))


@pytest.fixture
def system_tmp(tmp_path, monkeypatch) -> Path:
    """The system temporary folder, for this test alone (where the lock's guard file goes)."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _holder(**fields) -> dict:
    """A lock record naming this process, as this run would write it, with ``fields`` changed."""
    this = {"host": socket.gethostname(), "boot_id": boot_id(), "pid": os.getpid()}
    this.update(process_start=process_start(os.getpid()), started="2026-01-01T00:00:00Z", token="t")
    return {**this, **fields}


def _lock_body(client, key: str) -> dict:
    return json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_the_object_lock_is_an_object_naming_its_holder_released_on_failure_and_taken_over_when_dead(s3, system_tmp):
    """The object-store side of the lock (the contract suite checks exclusion and --wait on both kinds)."""
    client, _, _ = s3
    output = location(f"s3://{BUCKET}/out-stale/predictions.parquet", _lock_options(s3))
    with pytest.raises(KeyboardInterrupt):  # what SIGINT and SIGTERM raise in the driver
        with output.lock():
            assert _keys(client, "out-stale/") == ["out-stale/predictions.parquet.lock"]
            record = _lock_body(client, "out-stale/predictions.parquet.lock")
            assert record == _holder(started=record["started"], token=record["token"]) and len(record["token"]) == 16
            with pytest.raises(LockedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
                with output.lock():
                    pass
            raise KeyboardInterrupt
    assert _keys(client, "out-stale/") == []
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"host": socket.gethostname(), "pid": dead.pid, "started": "2026-01-01T00:00:00Z", "token": "t"}
    client.put_object(Bucket=BUCKET, Key="out-stale/predictions.parquet.lock", Body=json.dumps(holder).encode())
    with output.lock():
        body = client.get_object(Bucket=BUCKET, Key="out-stale/predictions.parquet.lock")["Body"].read()
        assert json.loads(body)["pid"] == os.getpid()
    assert _keys(client, "out-stale/") == []


@pytest.mark.parametrize("case", ["this run's pid", "a running pid started later", "another boot"])
def test_a_lock_whose_process_is_gone_is_taken_over_though_its_pid_runs(s3, system_tmp, case):
    """In a container every run is a fresh pid namespace under one host name: the next night's run gets the
    pid of the run that was killed, and a pid alone would make it see that run alive in itself (exit 4)."""
    client, key = s3[0], "out-gone/predictions.parquet.lock"
    output = location(f"s3://{BUCKET}/out-gone/predictions.parquet", _lock_options(s3))
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        holder = {
            "this run's pid": _holder(process_start="1"),  # a killed run that had this pid, in an earlier pod
            "a running pid started later": _holder(pid=running.pid, process_start="1"),
            "another boot": _holder(pid=running.pid, process_start=process_start(running.pid), boot_id="rebooted"),
        }[case]
        client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(holder).encode())
        with output.lock():
            assert _lock_body(client, key)["token"] != "t" and _lock_body(client, key)["pid"] == os.getpid()
        assert _keys(client, "out-gone/") == []
    finally:
        running.kill()
        running.wait()


def test_a_lock_whose_process_runs_is_refused_and_left_alone(s3, system_tmp):
    client, key = s3[0], "out-live/predictions.parquet.lock"
    output = location(f"s3://{BUCKET}/out-live/predictions.parquet", _lock_options(s3))
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        holder = _holder(pid=running.pid, process_start=process_start(running.pid))
        client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(holder).encode())
        with pytest.raises(LockedError, match=f"pid {running.pid} on {socket.gethostname()}"):
            with output.lock():
                pass
        assert _lock_body(client, key) == holder
    finally:
        running.kill()
        running.wait()
        client.delete_object(Bucket=BUCKET, Key=key)


def test_breaking_a_stale_lock_is_not_held_up_by_a_file_another_user_made(s3, system_tmp):
    """The guard taken while breaking a stale lock lies in a folder only this user can write; at its old name
    in the shared temporary folder, anyone could create it first and hold it for ever."""
    client, key = s3[0], "out-guard/predictions.parquet.lock"
    output = location(f"s3://{BUCKET}/out-guard/predictions.parquet", _lock_options(s3))
    planted = system_tmp / f".batchclf-lock-{hashlib.sha256(f's3://{BUCKET}/{key}'.encode()).hexdigest()[:24]}"
    held = os.open(planted, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(_holder(pid=dead.pid, process_start="1")).encode())
    taken = threading.Event()

    def take() -> None:
        with output.lock():
            taken.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    try:
        thread.join(timeout=30)
        assert taken.is_set(), "held up by the planted guard file"
    finally:
        os.close(held)
        thread.join(timeout=30)
    private = system_tmp / f"batchclf-{os.getuid()}"
    assert stat.S_IMODE(private.lstat().st_mode) == 0o700 and private.lstat().st_uid == os.getuid()
    assert [p.name for p in private.iterdir()] == [planted.name]


CONTAINER_RUN = """
import json, os, signal, sys
from batchclf.store import StorageOptions, location
with location(sys.argv[1], StorageOptions(json.loads(sys.argv[2]))).lock():
    print(os.getpid(), flush=True)
    if sys.argv[3] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_run_killed_in_a_container_leaves_a_lock_the_next_container_takes_over(s3, tmp_path):
    """Each run in a fresh pid namespace (as every pod of a Kubernetes CronJob), under this host's name."""
    unshare = shutil.which("unshare")
    container = [unshare or "unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
    if not unshare or subprocess.run([*container, "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare cannot make a pid namespace here")
    client, _, options = s3
    target = f"s3://{BUCKET}/out-pod/predictions.parquet"
    environment = {**os.environ, "TMPDIR": str(tmp_path)}
    environment.pop("XDG_RUNTIME_DIR", None)

    def pod(ending: str) -> subprocess.CompletedProcess:
        run = [sys.executable, "-c", CONTAINER_RUN, target, options, ending]
        # sh is the namespace's pid 1 and Python its pid 2, in every pod alike.
        return subprocess.run(
            [*container, "sh", "-c", '"$@"; true', "sh", *run], capture_output=True, text=True, env=environment
        )

    killed = pod("killed")
    assert _keys(client, "out-pod/") == ["out-pod/predictions.parquet.lock"], killed.stderr
    next_night = pod("ends")
    assert next_night.stdout == killed.stdout, next_night.stderr  # the same pid, in another namespace
    assert "LockedError" not in next_night.stderr and next_night.stdout.strip(), next_night.stderr
    assert _keys(client, "out-pod/") == []


@pytest.mark.parametrize(
    "case", ["missing bucket", "unreachable endpoint", "a prefix", "an image object", "an image name in the input"]
)
def test_an_output_that_cannot_be_written_is_one_line_exit_2_and_nothing_written(s3, tmp_path, case):
    client, local, options = s3
    settings, target = json.loads(options), f"s3://{BUCKET}/out-refused/predictions.parquet"
    source, image = str(local), _keys(client, "images/")[0]
    if case == "missing bucket":
        target = "s3://no-such-bucket/out/predictions.parquet"
    elif case == "unreachable endpoint":
        settings["endpoint_url"] = "http://127.0.0.1:9"
    elif case == "a prefix":
        target = f"s3://{BUCKET}/images"
    elif case == "an image object":  # an object of another input, not a batchclf output: never replaced
        target = f"s3://{BUCKET}/{image}"
    else:  # batchclf run s3://bucket/images s3://bucket/images/new.jpg: it would be scored next time
        source, target = IMAGES, f"s3://{BUCKET}/images/new.jpg"
    before = {key: client.get_object(Bucket=BUCKET, Key=key)["ETag"] for key in _keys(client, "")}
    result = _run(source, target, "--storage-options", json.dumps(settings))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("batchclf: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and SECRET not in result.stderr
    assert {key: client.get_object(Bucket=BUCKET, Key=key)["ETag"] for key in _keys(client, "")} == before
    assert list(tmp_path.iterdir()) == []
    if case.startswith("an image"):
        assert ("not a batchclf output" if case == "an image object" else "image name inside") in result.stderr


def test_report_of_a_bucket_run_reads_the_output_and_its_thumbnails_from_the_bucket(s3, tmp_path):
    client, _, options = s3
    target = f"s3://{BUCKET}/out-report/predictions.parquet"
    assert _run(IMAGES, target, "--storage-options", options).returncode == 0
    # The input root the output records is a URL: read only when the user names it with --root.
    unnamed = run_cli("report", target, str(tmp_path / "unnamed.html"), "--storage-options", options)
    assert unnamed.returncode == 0, unnamed.stderr
    assert ", 0 thumbnails" in unnamed.stderr
    assert (tmp_path / "unnamed.html").read_text().count(f"pass --root {IMAGES} to show them") == 1
    html, document = tmp_path / "report.html", tmp_path / "report.json"
    result = run_cli(
        "report", target, str(html), "--root", IMAGES, "--storage-options", options, "--json", str(document)
    )
    assert result.returncode == 0, result.stderr
    thumbnails = int(result.stderr.split(" thumbnails")[0].rsplit(", ", 1)[1].replace(",", ""))
    assert thumbnails > 20
    page = html.read_text()
    assert page.count("data:image/jpeg;base64,") >= thumbnails
    assert "not here" not in page
    for text in (page, document.read_text(), result.stderr, result.stdout):
        assert SECRET not in text
    unreachable = json.dumps({**json.loads(options), "endpoint_url": "http://127.0.0.1:9"})
    refused = run_cli("report", target, str(tmp_path / "r.html"), "--storage-options", unreachable)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert SECRET not in refused.stderr and not (tmp_path / "r.html").exists()


def test_classify_reads_from_and_writes_to_a_bucket(s3, local_rows):
    """The Python API takes URLs and storage options as the command line does."""
    import batchclf

    client, _, options = s3
    target = f"s3://{BUCKET}/out-api/predictions.parquet"
    table = batchclf.classify(IMAGES, target, workers=1, storage_options=json.loads(options))
    assert table.select(COMPARED).to_pylist() == local_rows
    assert _object_rows(client, "out-api/predictions.parquet") == local_rows
