"""Phone formats and what the walk leaves out: AVIF (Pillow) and HEIC (the ``heif`` extra, pillow-heif)
score like the JPEG they were made from; without the extra a HEIC file is an error row saying how to
install it; files of other extensions are counted by extension on the console and in the summary.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import pillow_heif
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from PIL import Image

from batchclf.decode import HEIF_MISSING

PHOTOS = ("pizza.jpg", "canoe2.jpg", "teddy1.jpg")


def _phone_tree(datasets, root):
    """Each photo as JPEG, AVIF and HEIC, beside files of other extensions; the expected skip counts."""
    for name in PHOTOS:
        stem = name.removesuffix(".jpg")
        shutil.copy(datasets / "imagenet_objects" / name, root / name)
        with Image.open(root / name) as photo:
            photo.save(root / "avif" / f"{stem}.avif", quality=95)
            pillow_heif.from_pillow(photo).save(root / "heic" / f"{stem}.HEIC", quality=95)
    (root / "notes.txt").write_text("not an image\n")
    (root / "heic" / "list.TXT").write_text("not an image either\n")
    (root / "README").write_text("no extension\n")
    (root / "avif" / "photo.xmp").write_text("<x:xmpmeta/>\n")
    (root / ".hidden.txt").write_text("hidden: skipped for that, not counted\n")
    return {".txt": 2, "": 1, ".xmp": 1}


@pytest.fixture(scope="module")
def phone_run(datasets, tmp_path_factory):
    base = tmp_path_factory.mktemp("phone")
    root = base / "photos"
    (root / "avif").mkdir(parents=True)
    (root / "heic").mkdir()
    skipped = _phone_tree(datasets, root)
    summary = base / "summary.json"
    result = run_cli("run", str(root), str(base / "out.parquet"), "--summary", str(summary), "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = {row["path"]: row for row in pq.read_table(base / "out.parquet").to_pylist()}
    return result, rows, json.loads(summary.read_text()), skipped


def test_avif_and_heic_score_like_their_jpeg(phone_run):
    _, rows, _, _ = phone_run
    assert len(rows) == 3 * len(PHOTOS)
    for name in PHOTOS:
        stem = name.removesuffix(".jpg")
        jpeg, avif, heic = rows[name], rows[f"avif/{stem}.avif"], rows[f"heic/{stem}.HEIC"]
        assert [jpeg["status"], avif["status"], heic["status"]] == ["ok"] * 3, (avif["error"], heic["error"])
        assert avif["label"] == heic["label"] == jpeg["label"], name
        assert (avif["width"], avif["height"]) == (heic["width"], heic["height"]) == (jpeg["width"], jpeg["height"])


def test_files_of_other_extensions_are_counted_on_the_console_and_in_the_summary(phone_run):
    result, _, summary, skipped = phone_run
    assert summary["skipped_by_extension"] == skipped
    assert "skipped 4 files by extension: .txt 2, (none) 1, .xmp 1" in result.stderr.splitlines()


def test_a_list_file_counts_the_lines_it_leaves_out(tmp_path, datasets):
    from batchclf.discover import list_images

    listing = tmp_path / "list.txt"
    listing.write_text(f"{datasets}/imagenet_objects/pizza.jpg\n{datasets}/imagenet_objects/notes.md\n#x.txt\nREADME\n")
    found = list_images(listing)
    assert sum(batch.num_rows for batch in found.batches) == 1
    assert found.skipped == {".md": 1, "": 1}


BLOCK_PILLOW_HEIF = """
    import importlib.abc
    import sys


    class NoPillowHeif(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "pillow_heif":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, NoPillowHeif())
"""


def test_without_the_heif_extra_a_heic_file_is_an_error_row(tmp_path, datasets):
    """pillow-heif made unimportable in every process of the run (a ``sitecustomize`` on PYTHONPATH)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent(BLOCK_PILLOW_HEIF))
    root = tmp_path / "photos"
    root.mkdir()
    shutil.copy(datasets / "imagenet_objects" / "pizza.jpg", root / "pizza.jpg")
    with Image.open(root / "pizza.jpg") as photo:
        pillow_heif.from_pillow(photo).save(root / "pizza.heic")
    path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH")) if p)
    result = run_cli("run", str(root), str(tmp_path / "out.parquet"), "--no-progress", env={"PYTHONPATH": path})
    assert result.returncode == 0, result.stderr
    rows = {row["path"]: row for row in pq.read_table(tmp_path / "out.parquet").to_pylist()}
    assert rows["pizza.jpg"]["status"] == "ok"
    assert (rows["pizza.heic"]["status"], rows["pizza.heic"]["error"]) == ("error", HEIF_MISSING)
    assert 'pip install "batchclf[heif]"' in HEIF_MISSING
    assert "Traceback" not in result.stderr


def test_a_bucket_listing_counts_the_objects_it_leaves_out():
    """fsspec's in-memory file system stands for a bucket: the same listing code as s3:// or gs://."""
    import fsspec

    from batchclf.discover import list_images

    memory = fsspec.filesystem("memory")
    for name in ("photos/a.jpg", "photos/b.HEIC", "photos/notes.txt", "photos/raw/README", "photos/.cache/x.txt"):
        memory.pipe(f"/skipped-bucket/{name}", b"x")
    try:
        found = list_images("memory://skipped-bucket/photos")
        assert sum(batch.num_rows for batch in found.batches) == 2
        assert found.skipped == {".txt": 1, "": 1}
    finally:
        memory.rm("/skipped-bucket", recursive=True)
