from __future__ import annotations

import os

import pytest
from conftest import save_image

from batchclf.discover import discover_images
from batchclf.errors import UsageError


@pytest.fixture
def tree(tmp_path):
    for name in (
        "b/2.JPG",
        "b/1.png",
        "a.jpeg",
        "c/d/e/f.TIFF",
        "z.gif",
        "x.BMP",
        "w.webp",
        ".hid/h.jpg",
        "b/.dot.jpg",
    ):
        save_image(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "noext").write_text("x")
    return tmp_path


def test_walk_is_sorted_recursive_and_case_insensitive(tree):
    root, paths = discover_images(tree)
    assert root == tree.resolve()
    assert paths == ["a.jpeg", "b/1.png", "b/2.JPG", "c/d/e/f.TIFF", "w.webp", "x.BMP", "z.gif"]


def test_hidden_included_on_request(tree):
    _, paths = discover_images(tree, include_hidden=True)
    assert ".hid/h.jpg" in paths and "b/.dot.jpg" in paths


def test_include_exclude(tree):
    assert discover_images(tree, include=("*.png", "*.JPG"))[1] == ["b/1.png", "b/2.JPG"]
    assert discover_images(tree, include=("b/*",))[1] == ["b/1.png", "b/2.JPG"]
    assert discover_images(tree, exclude=("c/*", "*.gif"))[1] == ["a.jpeg", "b/1.png", "b/2.JPG", "w.webp", "x.BMP"]


def test_symlinks_followed_once(tree):
    os.symlink(tree, tree / "b" / "loop")  # a loop back to the root
    os.symlink(tree / "c", tree / "c-again")  # a second way into one folder
    os.symlink(tree / "a.jpeg", tree / "link.jpg")
    _, paths = discover_images(tree)
    assert "link.jpg" in paths
    assert sum(p.endswith("f.TIFF") for p in paths) == 1
    assert not any("loop" in p for p in paths)


def test_missing_input_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        discover_images(tmp_path / "missing")


def test_list_file_relative_and_absolute(tree, tmp_path):
    listing = tree / "list.txt"
    listing.write_text(f"b/1.png\n\n# comment\n{tree}/c/d/e/f.TIFF\nb/1.png\n")
    root, paths = discover_images(listing)
    assert root == tree.resolve()
    assert paths == ["b/1.png", "c/d/e/f.TIFF"]


def test_files_of_other_extensions_are_counted_once_and_hidden_ones_not(tree):
    from batchclf.discover import list_images

    (tree / "b" / "photo.XMP").write_text("x")
    (tree / ".hid" / "notes.txt").write_text("hidden: left out for that")
    os.symlink(tree / "b", tree / "b-again")  # a folder reached twice is counted once
    listing = list_images(tree)
    assert sum(batch.num_rows for batch in listing.batches) == 7
    assert listing.skipped == {".txt": 1, "": 1, ".xmp": 1}
    hidden = list_images(tree, include_hidden=True)
    assert sum(batch.num_rows for batch in hidden.batches) == 9
    assert hidden.skipped == {".txt": 2, "": 1, ".xmp": 1}


def test_a_list_file_that_names_no_image_is_refused(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\nnotes.txt\nREADME\n")
    with pytest.raises(UsageError, match=r"line 2 is not an image path \('notes.txt'\) and no line is"):
        discover_images(listing)
