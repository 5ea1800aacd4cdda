"""A URL input, against a real S3 API server (moto's standalone server) read through s3fs."""

from __future__ import annotations

import contextlib
import json
import shutil

import pyarrow.parquet as pq
import pytest
from conftest import S3_SECRET, run_cli, s3_server, save_image

from batchclf.store import StorageOptions

SECRET = S3_SECRET
COMPARED = ["path", "label", "score", "topk", "status", "bytes"]
BUCKET = "images-bucket"


@contextlib.contextmanager
def s3_with_images(datasets, tmp_path_factory):
    """The S3 server, a bucket holding the shared images under ``images/``, and the same images on disk."""
    with s3_server() as (client, settings):
        client.create_bucket(Bucket=BUCKET)
        local = tmp_path_factory.mktemp("local") / "images"
        for folder in ("imagenet_objects", "food_toy_appliance"):
            shutil.copytree(datasets / folder, local / folder, ignore=shutil.ignore_patterns("*.tsv", "*.txt"))
        for file in sorted(local.rglob("*")):
            if file.is_file():
                client.upload_file(str(file), BUCKET, f"images/{file.relative_to(local).as_posix()}")
        yield client, local, json.dumps(settings)


@pytest.fixture(scope="module")
def s3(datasets, tmp_path_factory):
    with s3_with_images(datasets, tmp_path_factory) as found:
        yield found


def _rows(path) -> list[dict]:
    return pq.read_table(path, columns=COMPARED).to_pylist()


def _run(*args: str, worker_process: bool = False):
    """``batchclf run ARGS``: its worker in the command's own process (the plan on this machine), or with
    ``worker_process`` in a process of its own, which then lists nothing and reads every object itself
    with the storage options it was sent. The killed and lost-endpoint runs below use a worker process too."""
    return run_cli("run", *args, "--no-progress", *(["--workers", "1"] if worker_process else []))


def test_bucket_run_equals_local_run_and_never_shows_the_secret(s3, tmp_path):
    client, local, options = s3
    summary = tmp_path / "summary.json"
    remote = _run(
        f"s3://{BUCKET}/images",
        str(tmp_path / "s3.parquet"),
        "--storage-options",
        options,
        "--summary",
        str(summary),
        worker_process=True,
    )
    assert remote.returncode == 0, remote.stderr
    on_disk = _run(str(local), str(tmp_path / "local.parquet"))
    assert on_disk.returncode == 0, on_disk.stderr
    rows = _rows(tmp_path / "s3.parquet")
    assert len(rows) > 20
    assert rows == _rows(tmp_path / "local.parquet")
    metadata = pq.read_schema(tmp_path / "s3.parquet").metadata[b"batchclf"].decode()
    assert json.loads(metadata)["input_root"] == f"s3://{BUCKET}/images"
    for text in (remote.stdout, remote.stderr, summary.read_text(), metadata):
        assert SECRET not in text


def test_incremental_after_objects_added_changed_and_deleted_equals_a_full_run(s3, tmp_path):
    client, local, options = s3
    output, full = tmp_path / "nightly.parquet", tmp_path / "full.parquet"
    assert _run(f"s3://{BUCKET}/images", str(output), "--storage-options", options).returncode == 0
    names = sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="images/")["Contents"])
    client.delete_object(Bucket=BUCKET, Key=names[0])
    changed = save_image(tmp_path / "changed.png", size=(80, 60), color=(20, 200, 40))
    client.upload_file(str(changed), BUCKET, names[1])
    client.upload_file(str(changed), BUCKET, "images/new/added.png")
    try:
        nightly = _run(f"s3://{BUCKET}/images", str(output), "--storage-options", options, "--incremental")
        assert nightly.returncode == 0, nightly.stderr
        assert "1 new, 1 changed" in nightly.stderr and "1 dropped" in nightly.stderr
        assert _run(f"s3://{BUCKET}/images", str(full), "--storage-options", options).returncode == 0
        assert _rows(output) == _rows(full)
    finally:  # the other tests compare the bucket with the local copy
        client.delete_object(Bucket=BUCKET, Key="images/new/added.png")
        for key in names[:2]:
            client.upload_file(str(local / key.removeprefix("images/")), BUCKET, key)


ODD_KEYS = ["odd/a?versionId=1.jpg", "odd/b#1.jpg", "odd/c%20d e.jpg", "odd/e::f.jpg", "odd/g?x=1#y.png"]


def test_keys_with_url_characters_are_names_listed_scored_and_reused(s3, tmp_path):
    """An object's key is a name: ``?versionId=``, ``#``, ``%``, ``::`` and spaces are part of it, never
    a query, a fragment, an escape or a chain."""
    client, local, options = s3
    for key in ODD_KEYS:
        client.upload_file(str(local / "food_toy_appliance" / "pizza.jpg"), BUCKET, key)
    try:
        output = tmp_path / "odd.parquet"
        first = _run(f"s3://{BUCKET}/odd", str(output), "--storage-options", options)
        assert first.returncode == 0, first.stderr
        rows = pq.read_table(output, columns=["path", "status", "error", "label", "bytes"]).to_pylist()
        assert [row["path"] for row in rows] == sorted(key.removeprefix("odd/") for key in ODD_KEYS)
        assert {(row["status"], row["error"], row["label"]) for row in rows} == {("ok", None, rows[0]["label"])}
        again = _run(f"s3://{BUCKET}/odd", str(output), "--storage-options", options, "--incremental")
        assert again.returncode == 0, again.stderr
        assert "5 unchanged rows reused, 0 to score" in again.stderr and "nothing needed scoring" in again.stderr
        assert pq.read_table(output, columns=["path", "status", "error", "label", "bytes"]).to_pylist() == rows
    finally:
        for key in ODD_KEYS:
            client.delete_object(Bucket=BUCKET, Key=key)


@pytest.mark.parametrize("case", ["missing bucket", "unreachable endpoint"])
def test_a_bucket_that_cannot_be_read_is_one_line_exit_2_and_nothing_written(s3, tmp_path, case):
    _, _, options = s3
    bucket, settings = BUCKET, json.loads(options)
    if case == "missing bucket":
        bucket = "no-such-bucket"
    else:
        settings["endpoint_url"] = "http://127.0.0.1:9"
    result = _run(f"s3://{bucket}/images", str(tmp_path / "out.parquet"), "--storage-options", json.dumps(settings))
    assert result.returncode == 2
    assert result.stderr.startswith("batchclf: error: ") and result.stderr.count("\n") == 1
    assert SECRET not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_storage_options_are_refused_when_not_a_json_object_and_never_printed():
    with pytest.raises(Exception, match="JSON object") as caught:
        StorageOptions.parse('["' + SECRET + '"]')
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(StorageOptions({"secret": SECRET}))


def test_a_killed_run_from_a_bucket_resumes_to_the_same_rows(s3, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    _, local, options = s3
    output, reference = tmp_path / "out.parquet", tmp_path / "reference.parquet"
    command = ["run", f"s3://{BUCKET}/images", str(output), "--storage-options", options, "--shard-size", "4"]
    assert _run(f"s3://{BUCKET}/images", str(reference), "--storage-options", options).returncode == 0
    driver = subprocess.Popen(
        [sys.executable, "-m", "batchclf", *command, "--no-progress", "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    parts, deadline = tmp_path / "out.parquet.parts", time.time() + 300
    while not (parts.is_dir() and any(n.startswith("attempt-") for n in os.listdir(parts))):
        assert driver.poll() is None, driver.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not output.exists()
    resumed = _run(*command[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: " in resumed.stderr
    assert _rows(output) == _rows(reference)


# Loaded by each Dask worker (a preload): after FAULT_AFTER object reads, every read fails as it does
# when the endpoint goes away, quoting the endpoint URL, a storage option.
ENDPOINT_LOST = """
import os
import s3fs.core
from botocore.exceptions import EndpointConnectionError

S3 = s3fs.core.S3FileSystem
if not hasattr(S3, "reads_so_far"):  # a preload may be loaded more than once in a process
    S3.reads_so_far = 0
    read = S3._cat_file

    async def _cat_file(self, path, *args, **kwargs):
        S3.reads_so_far += 1
        if S3.reads_so_far > int(os.environ["FAULT_AFTER"]):
            raise EndpointConnectionError(endpoint_url=os.environ["FAULT_ENDPOINT"] + "/" + path)
        return await read(self, path, *args, **kwargs)

    S3._cat_file = _cat_file
"""


def test_an_endpoint_lost_mid_run_fails_the_run_keeps_its_parts_and_a_rerun_resumes(s3, tmp_path):
    client, local, options = s3
    endpoint = json.loads(options)["endpoint_url"]
    output, reference, summary = tmp_path / "out.parquet", tmp_path / "reference.parquet", tmp_path / "summary.json"
    assert _run(f"s3://{BUCKET}/images", str(reference), "--storage-options", options).returncode == 0
    preload = tmp_path / "endpoint_lost.py"
    preload.write_text(ENDPOINT_LOST)
    fault = {
        "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(preload)]),
        "FAULT_AFTER": "12",
        "FAULT_ENDPOINT": endpoint,
    }
    command = ["run", f"s3://{BUCKET}/images", str(output), "--storage-options", options, "--shard-size", "4"]
    lost = run_cli(*command, "--no-progress", "--workers", "1", "--retries", "1", "--summary", str(summary), env=fault)
    assert lost.returncode == 1, lost.stderr
    [line] = lost.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"batchclf: error: cannot read s3://{BUCKET}/images/") and "cannot decode" not in line
    for text in (lost.stdout, lost.stderr, summary.read_text()):
        assert SECRET not in text and endpoint not in text
    assert not output.exists()
    parts = sorted((tmp_path / "out.parquet.parts").glob("attempt-0001-*.parquet"))
    assert parts, "the shards finished before the endpoint went away are kept"
    kept = pq.read_table(parts, columns=["status", "error"]).to_pylist()
    assert kept and all(row == {"status": "ok", "error": None} for row in kept)

    resumed = _run(*command[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(kept)} rows reused" in resumed.stderr
    assert _rows(output) == _rows(reference)
