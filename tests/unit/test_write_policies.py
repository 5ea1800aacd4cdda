"""The write policies every writer shares (``fsutil``): the mode a new file gets, what an interrupted
write leaves, links planted where a cache writes, and the mass-drop rule of an incremental run."""

from __future__ import annotations

import os
import stat

import pyarrow as pa
import pytest

from batchclf.errors import UsageError
from batchclf.fsutil import atomic_file, is_temporary_name, private_folder, temporary_name, write_atomically
from batchclf.plan import RunPlan


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    saved = os.umask(0o022)
    os.umask(saved)
    yield set_mask
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path, umask, mask, mode):
    umask(mask)
    write_atomically(tmp_path / "out.parquet", b"data")
    assert (tmp_path / "out.parquet").stat().st_mode & 0o777 == mode


def test_the_output_parquet_is_written_with_that_mode(tmp_path, umask):
    from batchclf.store.parquet import atomic_parquet

    umask(0o022)
    table = pa.table({"path": ["a.jpg"]})
    with atomic_parquet(tmp_path / "out.parquet", table.schema) as writer:
        writer.write_table(table)
    assert (tmp_path / "out.parquet").stat().st_mode & 0o777 == 0o644


def test_an_interrupted_write_leaves_the_old_file_and_nothing_else(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as stream:
            stream.write(b"half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_the_temporary_names_made_are_the_ones_the_cleanup_recognises(tmp_path):
    target = tmp_path / "out.parquet"
    with atomic_file(target) as stream:
        [made] = [p.name for p in tmp_path.iterdir()]
        stream.write(b"data")
    assert is_temporary_name(made, target) and is_temporary_name(made)
    assert all(is_temporary_name(temporary_name(target), target) for _ in range(100))
    for name in (".out.parquet.html.1234.partial", ".out.parquet.1234.partial", ".out.parquet.ABCDEFGH.partial"):
        assert not is_temporary_name(name, target)
    assert not is_temporary_name(made, tmp_path / "out")  # another output's prefix
    assert is_temporary_name(".attempt-0001-shard-000000.parquet.abcd_123.partial")


def test_the_conversion_cache_never_follows_a_planted_link(tmp_path, monkeypatch):
    from batchclf import backends

    monkeypatch.setenv("BATCHCLF_CACHE", str(tmp_path / "cache"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "cache" / "litert"
    folder.mkdir(parents=True)
    (folder / "key.lock").symlink_to(victim)
    with pytest.raises(UsageError, match="a symlink there is refused"):
        backends.convert_to_tflite(lambda: pytest.fail("nothing is built"), "key")
    assert victim.read_text() == "precious"


def _plan(reusable: int, dropped: int) -> RunPlan:
    gone = pa.array([f"{i}.jpg" for i in range(dropped)], pa.string())
    return RunPlan(to_score=pa.chunked_array([], pa.string()), dropped=gone, reusable=reusable)


@pytest.mark.parametrize(
    "reusable, dropped, max_drop, refused",
    [(30, 20, 0.5, True), (30, 15, 0.5, False), (30, 30, 1.0, False), (30, 1, 0.0, True), (0, 0, 0.5, False)],
)
def test_an_incremental_run_refuses_a_mass_drop(reusable, dropped, max_drop, refused):
    assert _plan(reusable, dropped).drops_too_much(max_drop) is refused


@pytest.fixture
def system_tmp(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_the_private_folder_is_made_for_this_user_alone(system_tmp, monkeypatch, umask):
    umask(0o277)  # a umask that would leave the folder unwritable does not change its mode
    folder = private_folder()
    assert folder == system_tmp / f"batchclf-{os.getuid()}" and private_folder() == folder
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o700 and folder.lstat().st_uid == os.getuid()
    runtime = system_tmp / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert private_folder() == runtime
    runtime.chmod(0o755)  # not private: the folder in the temporary folder is used instead
    assert private_folder() == folder


@pytest.mark.parametrize("planted", ["a link", "open to others", "a file"])
def test_a_private_folder_planted_by_someone_else_is_refused(system_tmp, planted):
    folder, elsewhere = system_tmp / f"batchclf-{os.getuid()}", system_tmp / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if planted == "a link":
        folder.symlink_to(elsewhere)
    elif planted == "open to others":
        folder.mkdir()
        folder.chmod(0o777)
    else:
        folder.write_text("")
    with pytest.raises(UsageError, match="only this user can open"):
        private_folder()
