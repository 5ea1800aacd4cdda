"""Nightly runs never lose, keep stale or double a row: resume checks every file, unreadable folders keep
their rows, error rows are retried, path texts are one per file in one order, and a row's size and mtime
describe the bytes that were scored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchclf.discover import list_images
from batchclf.errors import EXIT_INCOMPLETE
from batchclf.merge import aligned, newest_rows
from batchclf.models.registry import imagenet_labels
from batchclf.paths import fs_path, path_text

# Root reads whatever the mode; without these capabilities file modes apply to it as to anyone.
DROP_READ_OVERRIDE = (
    ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--"]
    if os.geteuid() == 0
    else []
)


def _run(*args: str, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    """``batchclf run``, scoring in-process (the plan on this machine): what these tests check is the driver's."""
    command = [*prefix, sys.executable, "-m", "batchclf", "run", *args, "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _rows(path: Path) -> dict[str, dict]:
    return {row["path"]: row for row in pq.read_table(path).to_pylist()}


def _plain(path: Path) -> pa.Table:
    """The rows, without the file metadata (which records the run) and scored_at (when each row was scored)."""
    return pq.read_table(path).drop_columns(["scored_at"]).replace_schema_metadata(None)


@pytest.fixture
def images(datasets, tmp_path) -> Path:
    folder = tmp_path / "images"
    shutil.copytree(datasets / "food_toy_appliance", folder, ignore=shutil.ignore_patterns("*.tsv", "*.md"))
    return folder


# 1. Resume reuses a part's row only for a file that did not change, and only under the same class names.


def test_resume_rescores_a_file_replaced_since_its_part_was_made(images, datasets, tmp_path):
    output = tmp_path / "out.parquet"
    first = _run(str(images), str(output), "--keep-parts")
    assert first.returncode == 0, first.stderr
    assert _rows(output)["broccoli.jpg"]["label"] == "broccoli"
    shutil.copy(datasets / "imagenet_objects" / "toaster.jpg", images / "broccoli.jpg")

    again = _run(str(images), str(output))
    assert again.returncode == 0, again.stderr
    assert "resuming: 11 rows reused" in again.stderr
    row = _rows(output)["broccoli.jpg"]
    assert row["label"] == "toaster"
    assert row["bytes"] == (images / "broccoli.jpg").stat().st_size


def test_parts_and_outputs_made_with_other_class_names_are_not_reused(images, tmp_path):
    output = tmp_path / "out.parquet"
    assert _run(str(images), str(output), "--keep-parts", "--incremental").returncode == 0
    before = _rows(output)
    renamed = tmp_path / "renamed.txt"
    renamed.write_text("".join(f"class {i}\n" for i in range(1000)))

    again = _run(str(images), str(output), "--keep-parts", "--incremental", "--labels", str(renamed))
    assert again.returncode == 0, again.stderr
    assert "resuming" not in again.stderr and "scoring everything" in again.stderr
    index = {name: i for i, name in enumerate(imagenet_labels())}
    after = _rows(output)
    assert {p: r["label"] for p, r in after.items()} == {p: f"class {index[r['label']]}" for p, r in before.items()}

    third = _run(str(images), str(output), "--incremental", "--labels", str(renamed))  # reuses, from parts or output
    assert "0 to score" in third.stderr and "resuming: 12 rows reused" in third.stderr, third.stderr
    assert _rows(output) == after


# 2. An unreadable folder is reported, and its rows are kept, marked, not dropped.


def test_unreadable_folder_keeps_its_rows_marked_unverified(images, tmp_path):
    (images / "sub").mkdir()
    for name in ("pizza.jpg", "teddy2.jpg"):
        shutil.copy(images / name, images / "sub" / name)
    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    assert _run(str(images), str(output), "--incremental").returncode == 0
    before = _rows(output)
    (images / "sub").chmod(0)
    try:
        night = _run(str(images), str(output), "--incremental", "--summary", str(summary), prefix=DROP_READ_OVERRIDE)
    finally:
        (images / "sub").chmod(0o755)
    assert night.returncode == EXIT_INCOMPLETE, night.stderr
    assert "cannot read folder sub/ (Permission denied)" in night.stderr
    assert "0 dropped, 2 kept unverified" in night.stderr
    record = json.loads(summary.read_text())
    assert record["exit_code"] == EXIT_INCOMPLETE and record["unreadable_folders"] == ["sub/"]
    after = _rows(output)
    assert set(after) == set(before)
    assert {p for p, r in after.items() if r["unverified"]} == {"sub/pizza.jpg", "sub/teddy2.jpg"}
    assert {p: r["label"] for p, r in after.items()} == {p: r["label"] for p, r in before.items()}

    readable = _run(str(images), str(output), "--incremental")
    assert readable.returncode == 0, readable.stderr
    assert not any(r["unverified"] for r in _rows(output).values())


# 3. Error rows are scored again by default, even when the file's size and mtime did not change.


def test_error_rows_are_retried_unless_kept(images, tmp_path):
    output = tmp_path / "out.parquet"
    (images / "pizza.jpg").chmod(0)
    try:
        first = _run(str(images), str(output), "--incremental", prefix=DROP_READ_OVERRIDE)
    finally:
        (images / "pizza.jpg").chmod(0o644)  # chmod keeps the mtime: only the error says to look again
    assert first.returncode == 0, first.stderr
    assert _rows(output)["pizza.jpg"]["error"] == "permission denied; make the file readable"

    # chmod keeps the mtime but moves the ctime: the file counts as changed, even with --keep-error-rows
    kept = _run(str(images), str(output), "--incremental", "--keep-error-rows")
    assert "11 unchanged rows reused, 1 to score (0 new, 1 changed, 0 errors retried)" in kept.stderr, kept.stderr
    assert _rows(output)["pizza.jpg"]["label"] == "pizza"

    broken = images / "broken.jpg"  # an error row whose file does not change at all
    broken.write_bytes(b"not an image")
    try:
        assert _run(str(images), str(output), "--incremental").returncode == 0
        kept = _run(str(images), str(output), "--incremental", "--keep-error-rows")
        assert "13 unchanged rows reused, 0 to score" in kept.stderr, kept.stderr
        retried = _run(str(images), str(output), "--incremental")
        assert "1 to score (0 new, 0 changed, 1 errors retried)" in retried.stderr, retried.stderr
        assert _rows(output)["broken.jpg"]["status"] == "error"
    finally:
        broken.unlink()


# 4. One path text per file name, and one order for every code path.


def test_names_that_escape_alike_stay_apart_and_incremental_equals_full(images, tmp_path):
    jpeg = (images / "pizza.jpg").read_bytes()
    root = os.fsencode(images)
    for name in (b"x_\\xff.jpg", b"x_\xff.jpg", b"caf\xe9.jpg", "caf\u00e9.jpg".encode(), b"a\\b.jpg"):
        with open(os.path.join(root, name), "wb") as stream:
            stream.write(jpeg)
    output, full = tmp_path / "out.parquet", tmp_path / "full.parquet"
    assert _run(str(images), str(output), "--incremental").returncode == 0
    paths = pq.read_table(output)["path"].to_pylist()
    assert len(paths) == len(set(paths)) == 17
    assert {"x_\\\\xff.jpg", "x_\\xff.jpg", "caf\\xe9.jpg", "caf\u00e9.jpg", "a\\\\b.jpg"} <= set(paths)
    assert paths == sorted(paths)
    assert all(os.path.exists(os.path.join(images, fs_path(p))) for p in paths)

    os.unlink(os.path.join(root, b"x_\xff.jpg"))
    shutil.copy(images / "toaster.jpg", os.path.join(root, b"caf\xe9.jpg"))
    assert _run(str(images), str(output), "--incremental").returncode == 0
    assert _run(str(images), str(full)).returncode == 0
    assert _plain(output).equals(_plain(full))


def test_path_text_round_trips_and_sorts_like_the_walk(tmp_path):
    names = [b"a/b.jpg", b"a.b/c.jpg", b"a-/x.jpg", b"a/b/c.jpg", b"caf\xe9.jpg", b"x_\\xff.jpg", b"x_\xff.jpg"]
    for name in names:
        path = os.path.join(os.fsencode(tmp_path), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    listing = list_images(tmp_path)
    texts = [p for batch in listing.batches for p in batch["path"].to_pylist()]
    assert texts == sorted(path_text(os.fsdecode(n)) for n in names)
    assert {fs_path(t) for t in texts} == {os.fsdecode(n) for n in names}


# 5. A row's size and mtime describe the bytes that were decoded.


def test_size_and_mtime_come_from_the_bytes_decoded(tmp_path, monkeypatch):
    from PIL import Image

    import batchclf.decode as decode

    path = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    original = path.stat()
    opened = decode.Image.open

    def rewrite_while_decoding(stream, *args, **kwargs):  # the file changes once its bytes are read
        Image.new("RGB", (300, 200), (0, 0, 255)).save(path)
        os.utime(path, ns=(original.st_mtime_ns + 10**9, original.st_mtime_ns + 10**9))
        return opened(stream, *args, **kwargs)

    monkeypatch.setattr(decode.Image, "open", rewrite_while_decoding)
    image = decode.decode_image(str(path), decode.Preprocessing(32))
    assert (image.width, image.size, image.mtime) == (64, original.st_size, original.st_mtime_ns // 1000)
    assert path.stat().st_size != original.st_size  # so a later incremental run sees the change


def test_a_file_changing_while_read_is_read_again(tmp_path, monkeypatch):
    import batchclf.decode as decode

    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 100)
    real_fstat, calls = os.fstat, []

    def fstat(descriptor):
        result = real_fstat(descriptor)
        calls.append(1)
        if len(calls) == 2:  # the first read looks torn: mtime moved between before and after
            return os.stat_result((*result[:8], result.st_mtime + 5, result[9]))
        return result

    monkeypatch.setattr(decode.os, "fstat", fstat)
    content = decode.read_file(str(path))
    assert content.data == b"x" * 100 and len(calls) == 6  # open, before and after: twice


# The merge machinery the plan and the output share.


def _table(paths, value):
    return pa.table({"path": paths, "value": [value] * len(paths)})


def test_newest_rows_merges_sorted_streams_and_keeps_the_latest():
    old = [_table(["a", "c", "e"], 0), _table(["g", "i"], 0)]
    parts = [_table(["b", "c"], 1), _table(["h", "i", "j"], 1)]
    schema = pa.schema([("path", pa.string()), ("value", pa.int64())])
    merged = pa.concat_tables(newest_rows([old, parts], schema))
    assert merged["path"].to_pylist() == list("abceghij")
    assert dict(zip(merged["path"].to_pylist(), merged["value"].to_pylist())) == {
        "a": 0,
        "b": 1,
        "c": 1,
        "e": 0,
        "g": 0,
        "h": 1,
        "i": 1,
        "j": 1,
    }


def test_aligned_steps_are_ordered_and_disjoint_and_lose_nothing():
    left = [_table(["a", "b", "c"], 0), _table(["x"], 0)]
    right = [_table(["b"], 1), _table(["c", "d", "y", "z"], 1)]
    steps = [[t["path"].to_pylist() if t is not None else [] for t in step] for step in aligned([left, right])]
    ranges = [(min(p for s in step for p in s), max(p for s in step for p in s)) for step in steps if any(step)]
    assert all(earlier[1] < later[0] for earlier, later in zip(ranges, ranges[1:]))  # a path lives in one step
    assert [p for step in steps for p in step[0]] == list("abcx")
    assert [p for step in steps for p in step[1]] == list("bcdyz")
