"""Files other people can write to: links planted at the lock or at temporary names, leftovers of a
killed merge, list files that are not lists. Nothing outside the output may be touched, and bad input
is one line with exit 2 before any work."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from batchclf.errors import EXIT_USAGE
from batchclf.store import location
from batchclf.store.parquet import atomic_parquet


@pytest.fixture
def images(datasets, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("pizza.jpg", "teddy2.jpg"):
        shutil.copy(datasets / "food_toy_appliance" / name, folder / name)
    return folder


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchclf: error:"), result.stderr
    return lines[0]


def test_a_symlink_at_the_lock_is_refused_and_its_target_untouched(images, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    output = tmp_path / "out.parquet"
    os.symlink(victim, tmp_path / "out.parquet.lock")
    result = run_cli("run", str(images), str(output), "--no-progress")
    assert result.returncode == EXIT_USAGE
    assert "symlink" in _one_line_error(result)
    assert victim.read_text() == "precious\n" and not output.exists()


def test_the_lock_file_is_never_written(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    output = tmp_path / "out.parquet"
    os.link(victim, tmp_path / "out.parquet.lock")  # a hard link cannot be refused by O_NOFOLLOW
    with location(output).lock():
        pass
    assert victim.read_text() == "precious\n"


def test_a_fifo_at_the_lock_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "out.parquet.lock")
    with pytest.raises(Exception, match="not a regular file"):
        with location(tmp_path / "out.parquet").lock():
            pass


def test_links_at_predictable_temporary_names_are_not_followed(images, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in (".out.parquet.partial", f".out.parquet.partial{os.getpid()}", ".out.parquet.k2j4m6p8.partial"):
        os.symlink(victim, tmp_path / name)
    output = tmp_path / "out.parquet"
    result = run_cli("run", str(images), str(output), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    assert pq.read_table(output).num_rows == 2
    assert not (tmp_path / ".out.parquet.k2j4m6p8.partial").is_symlink()  # a killed merge's name: cleared, not followed


def test_leftovers_of_a_killed_merge_are_removed_and_other_programs_temporaries_kept(tmp_path):
    output = tmp_path / "out.parquet"
    leftover = tmp_path / ".out.parquet.k2j4m6p8.partial"  # what the atomic write names a temporary
    leftover.write_bytes(b"half a parquet file")
    others = [".out.parquet.html.k2j4.partial", ".out.parquet.k2j4.partial", ".out.parquet.K2J4M6P8.partial"]
    others += [".out.parquet.k2j4m6p8.partial.bak", ".out.parquet.k2j4m6p89.partial", ".out.parquet..partial"]
    for name in others:  # another program's temporaries beside the output: not this writer's to remove
        (tmp_path / name).write_bytes(b"someone else's")
    with location(output).lock():
        pass
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "out.parquet.lock"])


def test_the_output_is_fsynced_before_it_is_renamed(tmp_path, monkeypatch):
    import batchclf.fsutil as fsutil

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(fsutil.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    table = pa.table({"path": ["a"]})
    with atomic_parquet(tmp_path / "out.parquet", table.schema) as parquet:
        parquet.write_table(table)
    assert events[:2] == ["fsync", "replace"] and events.count("fsync") == 2  # the file, then its folder
    assert pq.read_table(tmp_path / "out.parquet").equals(table)
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_a_file_that_is_not_a_list_of_images_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# A title\n\nSome text about images.\n")
    result = run_cli("run", str(readme), str(tmp_path / "out.parquet"), "--no-progress")
    assert result.returncode == EXIT_USAGE
    assert "line 3 is not an image path" in _one_line_error(result)
    assert not (tmp_path / "out.parquet").exists()


def test_a_list_file_that_is_not_utf8_is_refused(tmp_path, images):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"images/pizza.jpg\nimages/caf\xe9.jpg\n")
    result = run_cli("run", str(listing), str(tmp_path / "out.parquet"), "--no-progress")
    assert result.returncode == EXIT_USAGE
    assert "not UTF-8" in _one_line_error(result)


def test_a_list_file_with_a_bom_lists_its_first_path(tmp_path, images):
    listing = tmp_path / "list.txt"
    listing.write_text("images/pizza.jpg\nimages/teddy2.jpg\n", encoding="utf-8-sig")
    output = tmp_path / "out.parquet"
    result = run_cli("run", str(listing), str(output), "--no-progress")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(output)
    assert table["path"].to_pylist() == ["pizza.jpg", "teddy2.jpg"]
    assert table["status"].to_pylist() == ["ok", "ok"]


def test_the_first_run_on_a_machine_says_it_converts_a_keras_model_once(images, tmp_path):
    """The built-in model is written for LiteRT without converting (tests/integration/test_direct_litert.py);
    a user's Keras model goes through TensorFlow's converter, once per machine, and the run says so."""
    import keras

    folder = tmp_path / "model"
    folder.mkdir()
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    keras.Model(inputs, outputs).save(folder / "tiny.keras")
    (folder / "labels.txt").write_text("a\nb\nc\n")
    environment = {**os.environ, "BATCHCLF_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "batchclf", "run", str(images), str(tmp_path / "out.parquet"), "--no-progress"]
    command += ["--model", str(folder / "tiny.keras"), "--workers", "1"]
    first = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert first.returncode == 0, first.stderr
    assert re.search(r"converting tiny\.keras@\w+ for LiteRT: once per machine", first.stderr), first.stderr
    second = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert second.returncode == 0 and "converting" not in second.stderr, second.stderr
    builtin = subprocess.run(command[:7], capture_output=True, text=True, env=environment, timeout=600)
    assert builtin.returncode == 0 and "converting" not in builtin.stderr, builtin.stderr


def test_a_run_that_scores_nothing_reports_no_speed(images, tmp_path):
    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    assert run_cli("run", str(images), str(output), "--incremental", "--no-progress").returncode == 0
    again = run_cli("run", str(images), str(output), "--incremental", "--no-progress", "--summary", str(summary))
    assert again.returncode == 0, again.stderr
    assert "2 files (0 scored), 2 ok, 0 errors" in again.stderr and "nothing needed scoring" in again.stderr
    assert json.loads(summary.read_text())["images_per_second"] == 0


# --- outputs that would destroy a file, or fail after all the work ------------------------------


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "output, message",
    [
        ("images/pizza.jpg", "is an image name inside the input"),  # batchclf run photos photos/a.jpg
        ("photo.jpg", "is not a batchclf output"),
        ("notes.txt", "is not a batchclf output"),
        ("other.parquet", "is not a batchclf output"),
    ],
)
def test_an_output_that_exists_and_is_not_a_batchclf_output_is_refused_and_kept(images, tmp_path, output, message):
    shutil.copy(images / "pizza.jpg", tmp_path / "photo.jpg")
    (tmp_path / "notes.txt").write_text("someone's notes\n")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "other.parquet")  # Parquet, not written by batchclf
    target = tmp_path / output
    before = {p: p.read_bytes() for p in [*tmp_path.iterdir(), *images.iterdir()] if p.is_file()}
    result = run_cli("run", str(images), str(target), "--no-progress")
    assert result.returncode == EXIT_USAGE
    assert message in _one_line_error(result)
    assert {p: p.read_bytes() for p in [*tmp_path.iterdir(), *images.iterdir()] if p.is_file()} == before
    assert _names(tmp_path) == ["images", "notes.txt", "other.parquet", "photo.jpg"]


def test_an_image_name_inside_the_input_folder_is_refused_as_output(images, tmp_path):
    (images / "sub").mkdir()
    for output in (images / "new.jpg", images / "sub" / "new.PNG", tmp_path / "link" / "new.webp"):
        (tmp_path / "link").unlink(missing_ok=True)
        (tmp_path / "link").symlink_to(images)  # the same folder through a link
        result = run_cli("run", str(images), str(output), "--no-progress")
        assert result.returncode == EXIT_USAGE
        assert "is an image name inside the input" in _one_line_error(result)
        assert not output.exists()
    assert _names(images) == ["pizza.jpg", "sub", "teddy2.jpg"] and _names(images / "sub") == []


def test_a_batchclf_output_and_an_empty_file_are_replaced(images, tmp_path):
    from batchclf.store import check_output

    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    check_output(empty)  # nothing in it to lose: made by mktemp, say
    made = tmp_path / "made.parquet"
    pq.write_table(pa.table({"a": [1]}).replace_schema_metadata({b"batchclf": b"{}"}), made)
    check_output(made)
    check_output(tmp_path / "images.parquet")  # an output beside the input folder, not in it


def test_an_output_name_too_long_for_the_folder_is_refused_before_any_work(images, tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    fits = "p" * (limit - len(".lock") - 100) + ".parquet"
    too_long = "p" * (limit - len(".parquet") - 10) + ".parquet"  # fits, but its temporary name does not
    result = run_cli("run", str(images), str(tmp_path / too_long), "--no-progress")
    assert result.returncode == EXIT_USAGE
    line = _one_line_error(result)
    assert f"{limit}-byte limit" in line and "NAME_MAX" in line and f"at most {limit - 18} bytes" in line
    assert _names(tmp_path) == ["images"]
    result = run_cli("run", str(images), str(tmp_path / fits), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / fits).num_rows == 2
