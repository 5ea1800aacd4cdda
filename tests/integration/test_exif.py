"""`batchclf run --exif` end to end: the EXIF columns of a tree of photos, the location only with
`--exif gps`, malformed EXIF as nulls, and `--incremental` scoring again when `--exif` changes."""

from __future__ import annotations

from datetime import datetime

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, save_image
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from batchclf.writer import output_schema, read_run_metadata

Base, GPS, IFD = ExifTags.Base, ExifTags.GPS, ExifTags.IFD
GPS_COLUMNS = ["exif_latitude", "exif_longitude"]


def rational(*values: tuple[int, int]) -> tuple:
    return tuple(IFDRational(numerator, denominator) for numerator, denominator in values)


def save_photo(path, camera: dict, exif_ifd: dict, gps_ifd: dict) -> None:
    exif = Image.Exif()
    exif.update(camera)
    exif.get_ifd(IFD.Exif).update(exif_ifd)
    exif.get_ifd(IFD.GPSInfo).update(gps_ifd)
    save_image(path, size=(96, 64), exif=exif)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    save_photo(
        root / "trip/day1/harbour.jpg",
        {Base.Make: "Canon", Base.Model: "Canon EOS R6", Base.Orientation: 6},
        {
            Base.DateTimeOriginal: "2023:07:14 18:30:05",
            Base.OffsetTimeOriginal: "+02:00",
            Base.LensModel: "RF24-105mm F4 L IS USM",
        },
        {
            GPS.GPSLatitudeRef: "S",
            GPS.GPSLatitude: rational((33, 1), (51, 1), (3600, 100)),
            GPS.GPSLongitudeRef: "E",
            GPS.GPSLongitude: rational((151, 1), (12, 1), (36, 1)),
        },
    )
    save_photo(  # a camera whose clock was never set and whose GPS fix failed
        root / "trip/day2/broken exif.jpg",
        {Base.Make: "NIKON CORPORATION\x00", Base.Model: "NIKON D750", Base.Orientation: 1},
        {Base.DateTimeOriginal: "0000:00:00 00:00:00", Base.OffsetTimeOriginal: "+99:99"},
        {
            GPS.GPSLatitudeRef: "N",
            GPS.GPSLatitude: rational((48, 0), (51, 1), (0, 1)),
            GPS.GPSLongitudeRef: "W",
            GPS.GPSLongitude: rational((2, 1), (17, 1), (40, 1)),
        },
    )
    save_photo(root / "phone/no offset.jpg", {Base.Make: "Apple"}, {Base.DateTimeOriginal: "2021:01:02 03:04:05"}, {})
    save_image(root / "scan.png")  # no EXIF at all
    (root / "notes.jpg").write_text("not a picture")  # an error row
    return root


def run(photos, output, *options):
    result = run_cli("run", str(photos), str(output), "--no-progress", *options)
    assert result.returncode == 0, result.stderr
    return result


def rows(output) -> dict:
    table = pq.read_table(output)
    return {row.pop("path"): row for row in table.to_pylist()}


@pytest.fixture(scope="module")
def gps_output(photos, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "photos.parquet"
    run(photos, output, "--incremental", "--exif", "gps")
    return output


def test_exif_gps_columns(gps_output):
    found = rows(gps_output)
    assert pq.read_schema(gps_output).remove_metadata() == output_schema(exif="gps")
    harbour = found["trip/day1/harbour.jpg"]
    assert harbour["status"] == "ok" and (harbour["width"], harbour["height"]) == (64, 96)  # turned by orientation 6
    assert {k: v for k, v in harbour.items() if k.startswith("exif_") and k not in GPS_COLUMNS} == {
        "exif_time": datetime(2023, 7, 14, 18, 30, 5),
        "exif_utc_offset": 120,
        "exif_make": "Canon",
        "exif_model": "Canon EOS R6",
        "exif_lens": "RF24-105mm F4 L IS USM",
        "exif_orientation": 6,
    }
    assert harbour["exif_latitude"] == pytest.approx(-(33 + 51 / 60 + 36 / 3600))
    assert harbour["exif_longitude"] == pytest.approx(151.21)


def test_malformed_exif_is_null_in_an_ok_row(gps_output):
    broken = rows(gps_output)["trip/day2/broken exif.jpg"]
    assert broken["status"] == "ok" and broken["label"] is not None
    camera = (broken["exif_make"], broken["exif_model"], broken["exif_orientation"])
    assert camera == ("NIKON CORPORATION", "NIKON D750", 1)
    assert broken["exif_time"] is broken["exif_utc_offset"] is broken["exif_lens"] is None
    assert broken["exif_latitude"] is None  # a zero denominator
    assert broken["exif_longitude"] == pytest.approx(-(2 + 17 / 60 + 40 / 3600))


def test_rows_without_exif_and_error_rows_have_null_columns(gps_output):
    found = rows(gps_output)
    phone = found["phone/no offset.jpg"]
    assert phone["exif_time"] == datetime(2021, 1, 2, 3, 4, 5) and phone["exif_utc_offset"] is None
    assert phone["exif_make"] == "Apple" and phone["exif_latitude"] is None
    for name in ("scan.png", "notes.jpg"):
        assert all(value is None for key, value in found[name].items() if key.startswith("exif_")), name
    assert found["notes.jpg"]["status"] == "error"


def test_changing_exif_with_incremental_scores_again(photos, gps_output, tmp_path):
    output = tmp_path / gps_output.name
    output.write_bytes(gps_output.read_bytes())
    again = run(photos, output, "--incremental", "--exif", "gps")
    assert "4 unchanged rows reused, 1 to score" in again.stderr  # same --exif: only the error row is retried

    camera = run(photos, output, "--incremental", "--exif")
    assert "incremental: scoring everything (exif gps → camera)" in camera.stderr
    schema = pq.read_schema(output)
    assert schema.remove_metadata() == output_schema(exif="camera")  # no location without --exif gps
    assert not set(GPS_COLUMNS) & set(schema.names)
    assert rows(output)["trip/day1/harbour.jpg"]["exif_make"] == "Canon"
    assert read_run_metadata(output)["result_options"]["exif"] == "camera"

    plain = run(photos, output, "--incremental")
    assert "incremental: scoring everything (exif camera → none)" in plain.stderr
    assert pq.read_schema(output).remove_metadata() == output_schema()  # without --exif: the schema it always had


def test_a_bad_exif_value_is_refused_before_any_work(photos, tmp_path):
    output = tmp_path / "out.parquet"
    for arguments in (["--exif", str(photos), str(output)], [str(photos), str(output), "--exif", "everything"]):
        result = run_cli("run", *arguments)
        assert result.returncode == 2, result.stderr
        assert "argument --exif: takes 'camera' or 'gps' or nothing" in result.stderr.splitlines()[-1]
        assert "Traceback" not in result.stderr and not output.exists()
