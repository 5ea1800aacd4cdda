"""The contract every ``store.Location`` keeps, run against a folder on disk and a prefix in a bucket.

A new kind of location passes these before any stage uses it: the lock excludes a second holder, an
interrupted write leaves the old content and nothing else, parts of another reuse key are never
reused, and what is written is read back the same. The bucket is moto's S3 server, read through s3fs.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid

import pyarrow as pa
import pytest
from conftest import s3_server

from batchclf.decode import read_file
from batchclf.errors import LockedError, UsageError
from batchclf.store import Location, OutsideRootError, StorageOptions, check_output, location, reader_for
from batchclf.store.parquet import atomic_parquet, read_output, read_parts, read_schema
from batchclf.store.parts import PART_KEY, PartsStore
from batchclf.writer import METADATA_KEY, read_run_metadata

BUCKET = "contract"
TABLE = pa.table({"path": ["a.jpg", "b.jpg", "c.jpg"], "score": pa.array([0.5, 0.25, 1.0], pa.float32())})


@pytest.fixture(scope="module")
def bucket():
    with s3_server() as (client, settings):
        client.create_bucket(Bucket=BUCKET)
        yield StorageOptions(settings)


@pytest.fixture(params=["folder", "bucket"])
def root(request, tmp_path) -> Location:
    """An empty folder, or an empty prefix of its own in the bucket; both have room beside them."""
    if request.param == "folder":
        folder = tmp_path / "root"
        folder.mkdir()
        return location(folder)
    return location(f"s3://{BUCKET}/{uuid.uuid4().hex}/root", request.getfixturevalue("bucket"))


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The system temporary folder, for this test alone: what a write stages there must be gone after."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def write(target: Location, data: bytes) -> None:
    with target.atomic_write() as stream:
        stream.write(data)


def names(folder: Location) -> list[str]:
    return sorted(child.name for child in folder.children())


# --- the lock -----------------------------------------------------------------------------------


def test_a_second_lock_is_refused_naming_the_holder_and_a_released_lock_can_be_taken_again(root):
    output = root.child("out.parquet")
    with output.lock():
        again = location(str(output), output.storage_options)  # another run's view of the same output
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            with again.lock():
                pass
    with location(str(output), output.storage_options).lock():
        pass


def test_a_lock_is_released_when_the_block_fails(root):
    output = root.child("out.parquet")
    with pytest.raises(KeyboardInterrupt):  # what SIGINT and SIGTERM raise in the driver
        with output.lock():
            raise KeyboardInterrupt
    with output.lock():
        pass


def test_wait_queues_behind_the_holder(root):
    output = root.child("out.parquet")
    acquired = threading.Event()

    def second() -> None:
        with output.lock(wait=True):
            acquired.set()

    with output.lock():
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(1)
        assert not acquired.is_set()
    waiter.join(timeout=30)
    assert acquired.is_set()


# --- the atomic write ---------------------------------------------------------------------------


def test_an_interrupted_write_leaves_the_old_content_and_nothing_behind(root, scratch):
    target = root.child("out.bin")
    write(target, b"old")
    with pytest.raises(RuntimeError):
        with target.atomic_write() as stream:
            stream.write(b"half of the new content")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert names(root) == ["out.bin"]
    assert list(scratch.iterdir()) == []


def test_an_interrupted_first_write_leaves_nothing(root, scratch):
    target = root.child("out.bin")
    with pytest.raises(RuntimeError):
        with target.atomic_write() as stream:
            stream.write(b"half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert names(root) == []
    assert list(scratch.iterdir()) == []


def test_a_completed_write_replaces_the_old_content(root, scratch):
    target = root.child("out.bin")
    write(target, b"old content, longer than the new")
    write(target, b"new")
    assert target.read_text() == "new"
    with target.open_read() as stream:
        assert stream.read() == b"new"
    assert names(root) == ["out.bin"]
    assert list(scratch.iterdir()) == []


# --- names, existence, listing, removal ---------------------------------------------------------


def test_exists_is_file_read_text_children_and_removal_round_trip(root):
    text = root.child("a.txt")
    assert not text.exists() and not text.is_file()
    write(text, "héllo\n".encode())
    assert text.exists() and text.is_file() and not text.is_folder()
    assert text.read_text() == "héllo\n"
    assert text.name == "a.txt" and text.sibling("b.txt") == root.child("b.txt")
    assert str(text).endswith("/a.txt") and location(str(text), root.storage_options) == text

    folder = root.child("parts")
    assert folder.children() == [] and not folder.is_folder()
    folder.make_folder()
    write(folder.child("one"), b"1")
    write(folder.child("two"), b"2")
    assert folder.is_folder() and names(folder) == ["one", "two"]
    assert names(root) == ["a.txt", "parts"]

    folder.remove_tree()
    assert folder.children() == [] and not folder.child("one").exists()
    text.unlink()
    text.unlink()  # already gone is fine
    assert not text.exists() and names(root) == []


def test_open_inside_reads_children_and_never_anything_outside(root):
    root.child("a").make_folder()
    write(root.child("a").child("b.jpg"), b"inside")
    write(root.sibling("secret.jpg"), b"outside")
    with root.open_inside("a/b.jpg") as stream:
        assert stream.read() == b"inside"
    for name in ("../secret.jpg", "a/../../secret.jpg"):
        with pytest.raises(OutsideRootError):
            with root.open_inside(name) as stream:
                pytest.fail(f"{name} was opened: {stream.read()!r}")
    with pytest.raises(FileNotFoundError):
        with root.open_inside("a/missing.jpg"):
            pass


def test_a_worker_reads_a_child_with_the_reader_the_store_gives(root):
    image = root.child("x.jpg")
    write(image, b"not really a jpeg")
    read = reader_for(str(root), root.storage_options) or read_file
    content = read(str(image))
    assert content.data == b"not really a jpeg" and content.size == len(content.data) and content.mtime > 0


def test_names_with_url_characters_are_names(root):
    odd = ["a?versionId=1.jpg", "b#1.jpg", "c%20d e.jpg", "e::f.jpg"]
    read = reader_for(str(root), root.storage_options) or read_file
    for name in odd:
        write(root.child(name), name.encode())
    assert names(root) == sorted(odd)
    for name in odd:
        assert root.child(name).exists() and read(str(root.child(name))).data == name.encode()
        with root.open_inside(name) as stream:
            assert stream.read() == name.encode()
        root.child(name).unlink()
    assert names(root) == []


# --- checks before a run ------------------------------------------------------------------------


def test_checks_refuse_a_missing_input_and_an_output_that_is_a_folder_and_leave_nothing(root):
    with pytest.raises(UsageError, match="does not exist"):
        root.child("missing").check_input()
    root.child("images").make_folder()
    write(root.child("images").child("x.jpg"), b"x")
    root.child("images").check_input()
    with pytest.raises(UsageError, match="is a (folder|prefix)"):
        root.child("images").check_output()
    root.child("out.parquet").check_output()
    assert names(root) == ["images"]


def test_an_existing_output_is_replaced_only_when_batchclf_wrote_it(root):
    image = root.child("a.jpg")
    write(image, b"\xff\xd8\xff\xe0 an image, not a Parquet file")
    plain = root.child("plain.parquet")
    with atomic_parquet(plain, TABLE.schema) as writer:  # Parquet, without batchclf's run record
        writer.write_table(TABLE)
    for target in (image, plain):
        with pytest.raises(UsageError, match="is not a batchclf output"):
            check_output(str(target), root.storage_options)
    output = root.child("out.parquet")
    schema = TABLE.schema.with_metadata({METADATA_KEY: b"{}"})
    with atomic_parquet(output, schema) as writer:
        writer.write_table(TABLE.replace_schema_metadata(schema.metadata))
    write(root.child("empty.parquet"), b"")
    for target in (output, root.child("empty.parquet"), root.child("new.parquet")):
        check_output(str(target), root.storage_options)
    with image.open_read() as stream:
        assert stream.read().endswith(b"not a Parquet file")
    assert names(root) == ["a.jpg", "empty.parquet", "out.parquet", "plain.parquet"]


def test_a_location_holds_what_lies_under_it_and_nothing_beside_it(root):
    root.child("sub").make_folder()
    write(root.child("sub").child("x.jpg"), b"x")
    assert root.holds(root.child("new.jpg")) and root.holds(root.child("sub").child("y.jpg"))
    assert not root.holds(root) and not root.holds(root.sibling("new.jpg"))
    assert not root.holds(root.sibling(root.name + "-other").child("new.jpg"))  # a name that only starts alike


# --- Parquet and the parts store ----------------------------------------------------------------


def test_readers_read_back_what_was_written(root, scratch):
    output = root.child("out.parquet")
    metadata = {"model": "m", "input_root": "/images"}
    schema = TABLE.schema.with_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    with atomic_parquet(output, schema) as writer:
        writer.write_table(TABLE.slice(0, 2).replace_schema_metadata(schema.metadata))
        writer.write_table(TABLE.slice(2).replace_schema_metadata(schema.metadata))
    assert read_schema(output).names == ["path", "score"]
    assert read_run_metadata(output) == metadata
    batches = list(read_output(output, ["path"], batch_rows=1))
    assert [batch.num_rows for batch in batches] == [1, 1, 1]
    assert pa.concat_tables(batches)["path"].to_pylist() == ["a.jpg", "b.jpg", "c.jpg"]

    second = root.child("second.parquet")
    with atomic_parquet(second, TABLE.schema) as writer:
        writer.write_table(TABLE)
    rows = pa.concat_tables(read_parts([output, second], ["score"]))
    assert rows["score"].to_pylist() == [0.5, 0.25, 1.0] * 2
    assert list(scratch.iterdir()) == []


def test_parts_of_the_same_reuse_key_are_reused_and_of_another_key_are_not(root):
    output = root.child("out.parquet")
    first = PartsStore(output, "key-a")
    assert first.open() is None
    written = first.write("shard-00000", TABLE)
    assert written.name == "attempt-0001-shard-00000.parquet" and written.exists()
    assert read_schema(written).metadata[PART_KEY] == b"key-a"

    again = PartsStore(output, "key-a")
    assert again.open() is None and again.attempt == 2
    [[part]] = again.earlier_attempts()
    assert part == written
    assert pa.concat_tables(read_parts([part]))["path"].to_pylist() == TABLE["path"].to_pylist()

    other = PartsStore(output, "key-b")
    assert "not reusing" in other.open()
    assert other.earlier_attempts() == [] and other.attempt == 1
    assert not written.exists() and names(root) == []


def test_a_part_not_marked_with_this_reuse_key_is_not_reused(root):
    output = root.child("out.parquet")
    store = PartsStore(output, "key-a")
    store.open()
    store.write("shard-00000", TABLE)
    planted = store.folder.child("attempt-0001-shard-00001.parquet")  # right name, made under another key
    with atomic_parquet(planted, TABLE.schema.with_metadata({PART_KEY: b"key-b"})) as writer:
        writer.write_table(TABLE.replace_schema_metadata({PART_KEY: b"key-b"}))
    write(store.folder.child("attempt-0001-shard-00002.parquet"), b"not parquet at all")

    again = PartsStore(output, "key-a")
    again.open()
    assert [[part.name for part in parts] for parts in again.earlier_attempts()] == [
        ["attempt-0001-shard-00000.parquet"]
    ]


def test_an_interrupted_part_is_never_offered(root, scratch):
    output = root.child("out.parquet")
    store = PartsStore(output, "key-a")
    store.open()
    store.write("shard-00000", TABLE)
    with pytest.raises(RuntimeError):
        with atomic_parquet(store.part_path("shard-00001"), TABLE.schema) as writer:
            writer.write_table(TABLE)
            raise RuntimeError("killed mid-write")
    again = PartsStore(output, "key-a")
    again.open()
    assert [[part.name for part in parts] for parts in again.earlier_attempts()] == [
        ["attempt-0001-shard-00000.parquet"]
    ]
    assert names(store.folder) == ["attempt-0001-shard-00000.parquet", "run.json"]
    assert list(scratch.iterdir()) == []
