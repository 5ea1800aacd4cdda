"""A file given new content with the same size and mtime (``rsync -a``, ``cp -p``, ``tar x`` of a
re-export; any uncompressed BMP of the same dimensions) is scored again without ``--hash``; a tree of
hard links that gains links (a snapshot tool) is not."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, save_image

ARGS = ("--incremental", "--no-progress", "--dashboard-address", "127.0.0.1:0")


def _rows(output):
    return {r["path"]: r for r in pq.read_table(output).to_pylist()}


def _same_stamp(path, like):
    info = os.stat(like)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


@pytest.mark.slow
def test_new_content_with_the_same_size_and_mtime_is_scored_again(tmp_path):
    root = tmp_path / "images"
    for name in ("inplace.bmp", "renamed.bmp", "linked.bmp", "kept.bmp"):
        save_image(root / name, size=(32, 32), color=(250, 10, 10), format="BMP")
    os.link(root / "linked.bmp", tmp_path / "snapshot-link.bmp")  # the file already has two links
    output = tmp_path / "out.parquet"
    assert run_cli("run", str(root), str(output), *ARGS).returncode == 0
    first = _rows(output)

    # cp -p onto the file: rewritten in place, mtime set back (same inode, new ctime)
    save_image(tmp_path / "blue.bmp", size=(32, 32), color=(10, 10, 250), format="BMP")
    before = os.stat(root / "inplace.bmp")
    (root / "inplace.bmp").write_bytes((tmp_path / "blue.bmp").read_bytes())
    os.utime(root / "inplace.bmp", ns=(before.st_atime_ns, before.st_mtime_ns))
    # rsync -a: a new file renamed over it, with the old mtime (new inode)
    save_image(tmp_path / "new.bmp", size=(32, 32), color=(10, 250, 10), format="BMP")
    _same_stamp(tmp_path / "new.bmp", root / "renamed.bmp")
    os.replace(tmp_path / "new.bmp", root / "renamed.bmp")
    # a snapshot tool links the tree once more: ctime moves, the content does not
    os.link(root / "linked.bmp", tmp_path / "snapshot-link-2.bmp")

    result = run_cli("run", str(root), str(output), *ARGS)
    assert result.returncode == 0, result.stderr
    assert "2 changed" in result.stderr and "2 unchanged rows reused" in result.stderr
    second = _rows(output)
    assert second["inplace.bmp"]["label"] != first["inplace.bmp"]["label"] or (
        second["inplace.bmp"]["score"] != first["inplace.bmp"]["score"]
    )
    assert second["renamed.bmp"]["inode"] != first["renamed.bmp"]["inode"]
    assert second["linked.bmp"]["ctime"] is None  # several links: ctime is not recorded
    assert second["kept.bmp"] == first["kept.bmp"]
