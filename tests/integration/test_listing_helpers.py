"""Folders listed by helper processes give exactly the listing of a walk in one process: same rows,
same order, same unreadable folders, loops entered once; a helper that dies loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

import batchclf.discover as discover
import batchclf.folders as folders

# Root reads whatever the mode; without these capabilities file modes apply to it as to anyone.
DROP_READ_OVERRIDE = (
    ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--"]
    if os.geteuid() == 0
    else []
)

LIST_AND_PRINT = """
import json, sys
from pathlib import Path
import pyarrow as pa
import batchclf.discover as discover
import batchclf.folders as folders
discover.LISTING_HELPERS_AFTER = int(sys.argv[2])
started = []
original = folders.ListingHelpers.start
def start(*args):
    helpers = original(*args)
    started.append(len(helpers.processes))
    return helpers
folders.ListingHelpers.start = start
listing = discover.list_images(Path(sys.argv[1]))
table = pa.concat_tables(listing.batches)
print(json.dumps({"rows": table.to_pylist(), "unreadable": listing.unreadable, "helpers": started}))
"""


@pytest.fixture
def hostile_tree(tmp_path):
    root = tmp_path / "tree"
    for folder in range(12):
        for sub in range(3):
            path = root / f"f{folder:02d}" / f"s{sub}"
            path.mkdir(parents=True)
            for i in range(5):
                (path / f"{i}.jpg").write_bytes(b"x" * (folder + i))
    odd = os.fsencode(root / "f03")
    for name in (b"caf\xe9.jpg", b"x_\xff.jpg", b"x_\\xff.jpg", b"back\\slash.png", "é.jpg".encode()):
        with open(os.path.join(odd, name), "wb") as file:
            file.write(b"y")
    os.mkdir(os.path.join(odd, b"dir\xff"))
    with open(os.path.join(odd, b"dir\xff", b"in.jpg"), "wb") as file:
        file.write(b"z")
    os.symlink(root, root / "f05" / "loop")  # back to the root: entered never
    os.symlink(root / "f01", root / "f07" / "again")  # a second way into f01: entered once
    os.symlink(root / "missing.jpg", root / "f08" / "broken.jpg")  # a row, whose error says so
    (root / "f09" / ".hidden").mkdir()
    (root / "f09" / ".hidden" / "h.jpg").write_bytes(b"h")
    (root / "f10" / "s1").chmod(0)
    yield root
    (root / "f10" / "s1").chmod(0o755)


def _listed(root, helpers_after: int) -> dict:
    command = [*DROP_READ_OVERRIDE, sys.executable, "-c", LIST_AND_PRINT, str(root), str(helpers_after)]
    result = subprocess.run(command, capture_output=True, text=True, errors="surrogateescape", timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_helpers_list_exactly_what_one_process_lists(hostile_tree):
    alone = _listed(hostile_tree, helpers_after=10**9)
    helped = _listed(hostile_tree, helpers_after=0)
    assert alone["helpers"] == [] and helped["helpers"] and helped["helpers"][0] >= 1
    assert helped["rows"] == alone["rows"]
    assert helped["unreadable"] == alone["unreadable"] == [["f10/s1/", "Permission denied"]]
    paths = [row["path"] for row in alone["rows"]]
    assert paths == sorted(paths)
    assert {"f03/caf\\xe9.jpg", "f03/x_\\xff.jpg", "f03/x_\\\\xff.jpg", "f03/dir\\xff/in.jpg"} <= set(paths)
    assert sum(p.startswith("f07/again/") for p in paths) == 0  # f01 was walked first, as itself
    assert not any("loop" in p or ".hidden" in p for p in paths)
    assert "f08/broken.jpg" in paths


def test_a_helper_that_dies_loses_nothing(hostile_tree, monkeypatch):
    (hostile_tree / "f10" / "s1").chmod(0o755)
    alone = pa.concat_tables(discover.list_images(hostile_tree).batches)
    original, seen = folders.ListingHelpers.start, []

    def start_and_kill_one(*args):
        helpers = original(*args)
        helpers.processes[0].kill()
        seen.append(helpers)
        return helpers

    monkeypatch.setattr(discover, "LISTING_HELPERS_AFTER", 0)
    monkeypatch.setattr(folders.ListingHelpers, "start", start_and_kill_one)
    helped = pa.concat_tables(discover.list_images(hostile_tree).batches)
    assert seen and helped.equals(alone)
    assert all(process is None for process in seen[0].processes)  # every helper stopped with the walk


def test_helpers_stop_when_the_walk_is_abandoned(hostile_tree, monkeypatch):
    original, seen = folders.ListingHelpers.start, []

    def start(*args):
        helpers = original(*args)
        seen.append(list(helpers.processes))
        return helpers

    monkeypatch.setattr(discover, "LISTING_HELPERS_AFTER", 0)
    monkeypatch.setattr(folders.ListingHelpers, "start", start)
    batches = discover.list_images(hostile_tree, batch_rows=1).batches
    next(batches)
    next(batches)
    batches.close()
    assert seen and all(process.poll() is not None for process in seen[0])
