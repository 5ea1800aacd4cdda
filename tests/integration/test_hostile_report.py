"""``batchclf report`` on outputs and image folders someone else may have crafted.

The Parquet file and the image folder can both come from other people, so: thumbnails are read
only inside the input root, carry no metadata of their source, and a malformed output, or a report
that cannot be written, is refused with one line before any work.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, save_image
from PIL import Image, ImageCms

from batchclf import cli, writer
from batchclf.report import thumbnails

SECRET = "SECRET-7f3a"
DATA_URI = re.compile(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)")
OPENED: list[str] | None = None  # the files opened while a test records them (see the audit hook below)


def _record_opens(event: str, args: tuple) -> None:
    if OPENED is not None and event == "open" and isinstance(args[0], str | bytes):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_record_opens)  # audit hooks cannot be removed; this one records only while OPENED is a list


def write_output(path: Path, rows: list[dict], metadata: object = None, schema: pa.Schema | None = None) -> Path:
    """A Parquet file shaped like a run's output (or deliberately not); rows need only the keys that differ."""
    defaults = {"label": "cat", "score": 0.9, "topk": [], "status": "ok", "error": None, "model": "m"}
    defaults |= {"width": None, "height": None, "bytes": None, "mtime": None}
    if schema is None:
        schema = pa.schema([field.with_nullable(True) for field in writer.output_schema()])
    table = pa.Table.from_pylist([defaults | row for row in rows], schema=schema)
    if metadata is not None:
        raw = metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode()
        table = table.replace_schema_metadata({writer.METADATA_KEY: raw})
    pq.write_table(table, path)
    return path


def jpeg_segments(data: bytes) -> list[int]:
    """The marker bytes of a JPEG's segments up to the image data (0xE0 APP0, 0xE1 EXIF/XMP, 0xFE comment...)."""
    assert data[:2] == b"\xff\xd8"
    markers, at = [], 2
    while at < len(data):
        marker = data[at + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: the compressed pixels follow
            return markers
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return markers


def embedded_jpegs(page: str) -> list[bytes]:
    return [base64.b64decode(match) for match in DATA_URI.findall(page)]


# --- thumbnails are read only inside the input root ------------------------------------------------


def test_thumbnails_outside_the_input_root_are_never_opened(tmp_path):
    global OPENED
    secret_folder = tmp_path / "secret"
    outside = save_image(secret_folder / "outside.jpg", size=(80, 60), comment=SECRET.encode())
    root = tmp_path / "images"
    save_image(root / "ok.jpg")
    (root / "link.jpg").symlink_to(outside)
    (root / "linked").symlink_to(secret_folder, target_is_directory=True)
    (root / "inner.jpg").symlink_to(root / "ok.jpg")  # a link that stays inside is fine
    save_image(root / "back\\slash.jpg")  # path text "back\\\\slash.jpg"
    save_image(Path(os.fsdecode(bytes(root) + b"/caf\xe9.jpg")))  # not UTF-8: path text "caf\\xe9.jpg"
    crafted = ["../" * 12 + str(outside).lstrip("/"), str(outside), "link.jpg", "linked/outside.jpg"]
    allowed = ["ok.jpg", "inner.jpg", "back\\\\slash.jpg", "caf\\xe9.jpg"]
    output = write_output(tmp_path / "out.parquet", [{"path": p} for p in crafted + allowed], {"input_root": str(root)})

    OPENED = []
    try:
        assert cli.main(["report", str(output), str(tmp_path / "r.html")]) == 0
    finally:
        opened, OPENED = OPENED, None
    page = (tmp_path / "r.html").read_text(encoding="utf-8")

    assert page.count('<div class="ph">outside the input root</div>') == len(crafted)
    assert page.count("<img ") == len(allowed)
    assert all(SECRET.encode() not in jpeg for jpeg in embedded_jpegs(page))
    assert not [name for name in opened if os.path.realpath(name).startswith(str(secret_folder))]
    assert any(os.path.realpath(name) == str(root / "ok.jpg") for name in opened)  # the recording works


def test_root_option_confines_thumbnails_to_that_folder(tmp_path):
    images = tmp_path / "images"
    save_image(images / "a.jpg")
    save_image(tmp_path / "beside.jpg")
    output = write_output(tmp_path / "out.parquet", [{"path": "a.jpg"}, {"path": "../beside.jpg"}], {})
    assert cli.main(["report", str(output), str(tmp_path / "r.html"), "--root", str(images)]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("<img ") == 1 and page.count('<div class="ph">outside the input root</div>') == 1


def test_a_folder_swapped_for_a_link_after_the_check_is_caught_by_what_was_opened(tmp_path, monkeypatch):
    secret_folder = tmp_path / "secret"
    save_image(secret_folder / "outside.jpg")
    root = tmp_path / "images"
    root.mkdir()
    (root / "linked").symlink_to(secret_folder, target_is_directory=True)
    # As if "linked" was a real folder when the path was resolved and became a link just before the open:
    monkeypatch.setattr(thumbnails.os.path, "realpath", os.path.normpath)
    assert thumbnails.thumbnail_inside(str(root), "linked/outside.jpg") == thumbnails.Thumbnail(
        None, "outside the input root"
    )
    assert thumbnails.thumbnail_inside(str(secret_folder), "outside.jpg").uri  # the same file from its own folder


def test_a_fifo_or_folder_named_like_an_image_is_a_placeholder_and_never_read(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    os.mkfifo(root / "pipe.jpg")  # opening it for a blocking read would hang the report
    (root / "folder.jpg").mkdir()
    output = write_output(
        tmp_path / "out.parquet", [{"path": "pipe.jpg"}, {"path": "folder.jpg"}], {"input_root": str(root)}
    )
    assert cli.main(["report", str(output), str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count('<div class="ph">unreadable</div>') == 1 and page.count('<div class="ph">missing</div>') == 1


@pytest.mark.parametrize(
    "recorded",
    ["http://169.254.169.254/latest/meta-data/", "s3://someone-elses-bucket/photos", "file:///etc"],
)
def test_a_url_input_root_named_by_the_output_is_never_fetched(tmp_path, monkeypatch, recorded):
    import fsspec.core

    fetched = []

    def refuse(url, *args, **kwargs):
        fetched.append(url)
        raise AssertionError(f"the report reached {url}")

    monkeypatch.setattr(fsspec.core, "url_to_fs", refuse)  # how every bucket or URL is reached
    rows = [{"path": "a.jpg"}, {"path": "b.jpg", "score": 0.2}]
    output = write_output(tmp_path / "out.parquet", rows, {"input_root": recorded})
    assert cli.main(["report", str(output), str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert fetched == []
    assert "<img " not in page and page.count('<div class="ph">unavailable</div>') == 3  # b.jpg is low too
    assert page.count('<p class="warning">') == 1 and page.count(f"pass --root {recorded} to show them") == 1


def test_a_postscript_file_named_jpg_is_a_placeholder_and_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    started = []

    def refuse(self, args, *rest, **kwargs):
        started.append(args)
        raise FileNotFoundError(args[0])

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # as on a machine where Ghostscript is yet to be found
    root = tmp_path / "images"
    save_image(root / "ok.jpg")
    (root / "photo.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{} loop\nshowpage\n")
    output = write_output(
        tmp_path / "out.parquet", [{"path": "ok.jpg"}, {"path": "photo.jpg"}], {"input_root": str(root)}
    )
    assert cli.main(["report", str(output), str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert started == []
    assert page.count("<img ") == 1
    reason = "not an image batchclf reads: the content is PostScript"
    assert f'<div class="ph">unreadable</div><p class="why">{reason}</p>' in page
    assert f"photo.jpg\ncat 0.900\nunreadable: {reason}" in page  # and in the tile's hover text


# --- thumbnails carry pixels only ------------------------------------------------------------------


def test_thumbnails_drop_exif_comments_xmp_and_icc_of_the_source(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    exif = Image.Exif()
    exif[0x010E] = f"{SECRET}-exif-description"  # ImageDescription
    exif[0x013B] = f"{SECRET}-exif-artist"  # Artist
    xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>{SECRET}-xmp</rdf:RDF></x:xmpmeta>'.encode()
    source = root / "tagged.jpg"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.new("RGB", (300, 200), (20, 120, 200))
    image.save(source, exif=exif, comment=f"{SECRET}-comment", xmp=xmp, icc_profile=icc)
    raw = source.read_bytes()
    assert raw.count(SECRET.encode()) == 4 and {0xE1, 0xE2, 0xFE} <= set(jpeg_segments(raw))  # it has them all

    output = write_output(tmp_path / "out.parquet", [{"path": "tagged.jpg"}], {"input_root": str(root)})
    result = run_cli("report", str(output), str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    (thumbnail,) = embedded_jpegs(page)
    assert SECRET.encode() not in thumbnail and SECRET not in page
    assert set(jpeg_segments(thumbnail)) <= {0xE0, 0xDB, 0xC0, 0xC4, 0xDA}  # JFIF, tables, frame, scan: no metadata
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert image.size == (112, 75) and not image.getexif() and "comment" not in image.info


# --- images that are small files and large decodes -----------------------------------------------

# Each runs in its own process and measures the peak resident memory of the step alone: Linux's
# high-water mark, reset just before (``clear_refs``), less what was resident then.
MEASURE = """
import sys
from pathlib import Path


def resident(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))


def peak_of(step):
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = resident("VmRSS:")
    result = step()
    return resident("VmHWM:") - before, result
"""
ESTIMATE_SCRIPT = (
    MEASURE
    + """
from batchclf.decode import open_image
from batchclf.report.thumbnails import THUMBNAIL_SIZE, peak_bytes, thumbnail_from
with open(sys.argv[1], "rb") as stream, open_image(stream) as image:
    image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    estimate = peak_bytes(image)
with open(sys.argv[1], "rb") as stream:
    peak, thumbnail = peak_of(lambda: thumbnail_from(stream))
print(peak, estimate, thumbnail.uri is not None)
"""
)
POOL_SCRIPT = (
    MEASURE
    + """
from batchclf.report import ReportConfig, build_report
output, report, memory = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
build_report(ReportConfig(output, report, per_label=0, gallery=0))  # everything but thumbnails, once
peak, summary = peak_of(lambda: build_report(ReportConfig(output, report, threads=4, memory=memory)))
print(peak, summary.thumbnails)
"""
)
SIDE = 3000
IMAGES_BY_MODE = {
    "1": lambda: Image.new("1", (SIDE, SIDE), 1),
    "L": lambda: Image.new("L", (SIDE, SIDE), 50),
    "P": lambda: Image.new("P", (SIDE, SIDE), 3),
    "LA": lambda: Image.new("LA", (SIDE, SIDE), (50, 100)),
    "RGB": lambda: Image.new("RGB", (SIDE, SIDE), (1, 2, 3)),
    "RGBA": lambda: Image.new("RGBA", (SIDE, SIDE), (1, 2, 3, 100)),
    "I;16": lambda: Image.fromarray(np.full((SIDE, SIDE), 40000, np.uint16)),
    "I": lambda: Image.fromarray(np.full((SIDE, SIDE), 70000, np.int32)),
    "F": lambda: Image.fromarray(np.full((SIDE, SIDE), 0.5, np.float32)),
    "CMYK": lambda: Image.new("CMYK", (SIDE, SIDE), (1, 2, 3, 4)),
}


def _python(script: str, *args: str) -> list[str]:
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("measures memory with Linux's /proc/self/clear_refs")
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("mode", list(IMAGES_BY_MODE))
def test_the_memory_estimate_read_from_the_header_covers_what_a_thumbnail_takes(tmp_path, mode):
    path = tmp_path / ("image.tif" if mode in ("I", "F", "CMYK") else "image.png")
    IMAGES_BY_MODE[mode]().save(path, **({"transparency": 0} if mode == "P" else {}))
    with Image.open(path) as image:
        assert image.mode == mode
    peak, estimate, made = _python(ESTIMATE_SCRIPT, str(path))
    assert made == "True"
    assert int(peak) <= int(estimate), f"{mode}: {int(peak) / SIDE**2:.2f} bytes a pixel at the peak"


def test_large_16_bit_pngs_are_decoded_within_the_memory_budget(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(np.zeros((6000, 6000), np.uint16)).save(root / "0.png")  # 70 kB; 288 MB at the peak
    for index in range(1, 4):
        shutil.copy(root / "0.png", root / f"{index}.png")
    rows = [{"path": f"{index}.png"} for index in range(4)]
    output = write_output(tmp_path / "out.parquet", rows, {"input_root": str(root)})
    budget = 300 << 20  # room for one at a time: four threads would otherwise decode all four at once
    peak, made = _python(POOL_SCRIPT, str(output), str(tmp_path / "r.html"), str(budget))
    assert int(made) == 4
    assert int(peak) <= budget + (32 << 20), f"{int(peak) >> 20} MiB"


# --- malformed outputs: one line, exit 2, nothing written ------------------------------------------


def _schema_with(name: str, kind: pa.DataType) -> pa.Schema:
    fields = [field.with_nullable(True) for field in writer.output_schema()]
    return pa.schema([pa.field(name, kind) if field.name == name else field for field in fields])


def _without(name: str) -> pa.Schema:
    return pa.schema([field.with_nullable(True) for field in writer.output_schema() if field.name != name])


def _corrupt_data_pages(path: Path) -> None:
    write_output(path, [{"path": f"{i:05}.jpg"} for i in range(3000)], {})
    data = bytearray(path.read_bytes())
    data[60:400] = bytes(b ^ 0x5A for b in data[60:400])  # inside the first column's compressed pages
    path.write_bytes(bytes(data))


GOOD = [{"path": "a.jpg"}, {"path": "b.jpg", "label": None, "score": None, "status": "error", "error": "truncated"}]
MALFORMED = {
    "null path": (lambda p: write_output(p, [*GOOD, {"path": None}], {}), "1 row(s) have no path"),
    "null status": (lambda p: write_output(p, [*GOOD, {"path": "c.jpg", "status": None}], {}), "have no status"),
    "unknown status": (lambda p: write_output(p, [*GOOD, {"path": "c.jpg", "status": "maybe"}], {}), "'maybe'"),
    "path twice": (lambda p: write_output(p, [*GOOD, {"path": "a.jpg"}], {}), "1 path(s) appear more than once"),
    "score as text": (
        lambda p: write_output(p, [{"path": "a.jpg", "score": "0.9"}], {}, _schema_with("score", pa.string())),
        "column score is string, expected float",
    ),
    "path as numbers": (
        lambda p: write_output(p, [{"path": 7}], {}, _schema_with("path", pa.int64())),
        "column path is int64, expected string",
    ),
    "status as booleans": (
        lambda p: write_output(p, [{"path": "a.jpg", "status": True}], {}, _schema_with("status", pa.bool_())),
        "column status is bool, expected string",
    ),
    "missing columns": (
        lambda p: write_output(p, [{"path": "a.jpg"}], {}, _without("status")),
        "has no status column",
    ),
    "metadata a JSON list": (lambda p: write_output(p, GOOD, [1, 2]), "metadata is a JSON list, not an object"),
    "metadata a JSON string": (lambda p: write_output(p, GOOD, "root"), "metadata is a JSON str, not an object"),
    "metadata not JSON": (lambda p: write_output(p, GOOD, b"{not json"), "metadata is not valid JSON"),
    "metadata not UTF-8": (lambda p: write_output(p, GOOD, b'{"model": "\xff"}'), "metadata is not valid JSON"),
    "seconds as text": (lambda p: write_output(p, GOOD, {"seconds": "fast"}), "field 'seconds' is \"fast\""),
    "negative seconds": (lambda p: write_output(p, GOOD, {"seconds": -3}), "field 'seconds' is -3"),
    "input root a number": (lambda p: write_output(p, GOOD, {"input_root": 5}), "field 'input_root' is 5"),
    "files a boolean": (lambda p: write_output(p, GOOD, {"files": True}), "field 'files' is true"),
    "not Parquet": (lambda p: p.write_text("path,label\na.jpg,cat\n"), "is not a Parquet file"),
    "empty file": (lambda p: p.write_bytes(b""), "is not a Parquet file"),
    "truncated Parquet": (
        lambda p: (write_output(p, GOOD, {}), p.write_bytes(p.read_bytes()[:-40])),
        "is not a Parquet file",
    ),
    "corrupt data pages": (_corrupt_data_pages, "is it a complete 'batchclf run' output?"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_output_is_refused_in_one_line_and_nothing_is_written(tmp_path, case):
    make, message = MALFORMED[case]
    crafted = tmp_path / "crafted.parquet"
    make(crafted)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("report", str(crafted), str(out / "r.html"), "--json", str(out / "r.json"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("batchclf: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and str(crafted) in result.stderr
    assert list(out.iterdir()) == []


def test_malformed_compared_run_is_refused_too(tmp_path):
    good = write_output(tmp_path / "good.parquet", GOOD, {})
    bad = write_output(tmp_path / "bad.parquet", [*GOOD, {"path": "c.jpg", "status": None}], {})
    result = run_cli("report", str(good), str(tmp_path / "r.html"), "--compare", str(bad))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"--compare {bad}: 1 row(s) have no status" in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_other_text_and_float_encodings_are_read_like_the_run_writes_them(tmp_path):
    schema = pa.schema(
        [
            ("path", pa.large_string()),
            ("label", pa.dictionary(pa.int32(), pa.string())),
            ("score", pa.float64()),
            ("status", pa.large_string()),
            ("error", pa.string()),
        ]
    )
    rows = [{"path": "a.jpg", "label": "cat", "score": 0.9, "status": "ok", "error": None}]
    rows += [{"path": "b.jpg", "label": None, "score": None, "status": "error", "error": "truncated"}]
    output = tmp_path / "other.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), output)
    assert cli.main(["report", str(output), str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json")]) == 0
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert (summary["files"], summary["ok"], summary["errors"]) == (2, 1, 1)
    assert summary["labels"] == [{"label": "cat", "count": 1, "share": 1.0}]


# --- a report that could not be written is refused before anything is read -----------------------


@pytest.mark.parametrize(
    ("option", "target", "message"),
    [
        ("REPORT", "/sys/batchclf-report.html", "REPORT: cannot write in folder /sys ("),  # not even root may write
        ("REPORT", "{tmp}/missing/r.html", "REPORT: {tmp}/missing does not exist"),
        ("REPORT", "{tmp}/notes.txt/r.html", "REPORT: {tmp}/notes.txt is not a folder"),
        ("--json", "/sys/batchclf-report.json", "--json: cannot write in folder /sys ("),
        ("--json", "{tmp}/missing/r.json", "--json: {tmp}/missing does not exist"),
    ],
)
def test_unwritable_or_missing_report_folder_is_refused_before_reading_the_output(tmp_path, option, target, message):
    (tmp_path / "notes.txt").write_text("not a folder")
    not_parquet = tmp_path / "big.parquet"
    not_parquet.write_text("not Parquet: had it been read first, the error would say so instead")
    target = target.format(tmp=tmp_path)
    args = [target] if option == "REPORT" else [str(tmp_path / "r.html"), "--json", target]
    result = run_cli("report", str(not_parquet), *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message.format(tmp=tmp_path) in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.parquet", "notes.txt"]
