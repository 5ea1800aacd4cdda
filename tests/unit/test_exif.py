"""The EXIF columns (``--exif``): what a photo's EXIF says, read while it is decoded; anything malformed
is a null, never an error row."""

from __future__ import annotations

import io
import struct
from datetime import datetime
from fractions import Fraction

import pytest
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from batchclf import decode
from batchclf.decode import Preprocessing, decode_image, open_image
from batchclf.exif import NO_EXIF, ExifFields, capture_time, coordinate, exif_columns, read_exif, utc_offset
from batchclf.writer import output_schema

Base, GPS, IFD = ExifTags.Base, ExifTags.GPS, ExifTags.IFD


def dms(degrees, minutes, seconds) -> tuple:
    return tuple(IFDRational(Fraction(v).numerator, Fraction(v).denominator) for v in (degrees, minutes, seconds))


NORTH, WEST = ("N", dms(48, 51, 29.5)), ("W", dms(2, 17, 40.2))


def photo_exif(
    time="2023:07:14 18:30:05",
    offset="+02:00",
    subseconds=None,
    make="Canon",
    model="Canon EOS R6",
    lens="RF24-105mm F4 L IS USM",
    orientation=6,
    latitude=NORTH,
    longitude=WEST,
) -> Image.Exif:
    """An ``Image.Exif`` as a camera writes it; a value of None leaves the tag out."""
    exif = Image.Exif()
    for tag, value in ((Base.Make, make), (Base.Model, model), (Base.Orientation, orientation)):
        if value is not None:
            exif[tag] = value
    main = exif.get_ifd(IFD.Exif)
    for tag, value in (
        (Base.DateTimeOriginal, time),
        (Base.OffsetTimeOriginal, offset),
        (Base.SubsecTimeOriginal, subseconds),
        (Base.LensModel, lens),
    ):
        if value is not None:
            main[tag] = value
    location = exif.get_ifd(IFD.GPSInfo)
    for (ref_tag, tag), value in (
        ((GPS.GPSLatitudeRef, GPS.GPSLatitude), latitude),
        ((GPS.GPSLongitudeRef, GPS.GPSLongitude), longitude),
    ):
        if value is not None:
            location[ref_tag], location[tag] = value
    return exif


def jpeg(exif: Image.Exif | bytes | None, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    options = {} if exif is None else {"exif": exif}
    Image.new("RGB", (40, 24), (200, 30, 30)).save(buffer, fmt, **options)
    return buffer.getvalue()


def fields_of(data: bytes, mode: str = "gps") -> ExifFields:
    with open_image(data) as image:
        return read_exif(image.getexif(), mode)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_cameras_exif_is_read_in_every_format_that_carries_it(fmt):
    fields = fields_of(jpeg(photo_exif(), fmt))
    assert fields == ExifFields(
        time=datetime(2023, 7, 14, 18, 30, 5),
        utc_offset=120,
        make="Canon",
        model="Canon EOS R6",
        lens="RF24-105mm F4 L IS USM",
        orientation=6,
        latitude=pytest.approx(48 + 51 / 60 + 29.5 / 3600),
        longitude=pytest.approx(-(2 + 17 / 60 + 40.2 / 3600)),
    )


def test_the_location_is_read_only_with_gps():
    fields = fields_of(jpeg(photo_exif()), mode="camera")
    assert fields.latitude is None and fields.longitude is None
    assert fields.make == "Canon" and fields.time is not None


def test_south_and_west_are_negative_and_subseconds_are_kept():
    fields = fields_of(
        jpeg(
            photo_exif(
                subseconds="25", offset="-05:30", latitude=("S", dms(33, 52, 4)), longitude=("E", dms(151, 12, 36))
            )
        )
    )
    assert fields.time == datetime(2023, 7, 14, 18, 30, 5, 250000)
    assert fields.utc_offset == -330
    assert fields.latitude == pytest.approx(-(33 + 52 / 60 + 4 / 3600))
    assert fields.longitude == pytest.approx(151.21)


def test_a_time_without_an_offset_keeps_the_cameras_clock():
    fields = fields_of(jpeg(photo_exif(offset=None)))
    assert fields.time == datetime(2023, 7, 14, 18, 30, 5) and fields.time.tzinfo is None
    assert fields.utc_offset is None


def test_padding_is_stripped_from_text():
    fields = fields_of(jpeg(photo_exif(make="NIKON CORPORATION\x00\x00", model="  NIKON D750 ", lens="")))
    assert (fields.make, fields.model, fields.lens) == ("NIKON CORPORATION", "NIKON D750", None)


@pytest.mark.parametrize(
    "changes, column",
    [
        ({"time": "0000:00:00 00:00:00"}, "time"),  # what cameras write when the clock was never set
        ({"time": "    :  :     :  :  "}, "time"),  # the EXIF spelling of "unknown"
        ({"time": "2023:02:30 10:00:00"}, "time"),
        ({"time": "\x8f\x01garbage\xff\x00 bytes"}, "time"),
        ({"offset": "+99:00"}, "utc_offset"),
        ({"offset": "+02:75"}, "utc_offset"),
        ({"offset": "CEST"}, "utc_offset"),
        ({"make": "\x8f\x01\x02\x9f"}, "make"),
        ({"model": ""}, "model"),
        ({"orientation": 9}, "orientation"),
        ({"orientation": 0}, "orientation"),
        ({"latitude": ("N", (IFDRational(48, 0), IFDRational(51, 1), IFDRational(0, 1)))}, "latitude"),
        ({"latitude": ("N", dms(91, 0, 0))}, "latitude"),
        ({"latitude": ("X", dms(48, 51, 0))}, "latitude"),
        ({"latitude": ("N", (IFDRational(48, 1),))}, "latitude"),
        ({"longitude": ("E", (IFDRational(2, 1), IFDRational(17, 0), IFDRational(1, 1)))}, "longitude"),
        ({"longitude": ("W", dms(181, 0, 0))}, "longitude"),
    ],
)
def test_a_malformed_value_is_null_and_the_others_are_kept(changes, column):
    fields = fields_of(jpeg(photo_exif(**changes)))
    assert getattr(fields, column) is None
    others = {name: value for name, value in vars(fields).items() if name != column}
    assert all(value is not None for value in others.values()), others


@pytest.mark.parametrize(
    "block",
    [
        b"Exif\x00\x00" + bytes(range(7, 80)),  # not a TIFF structure at all
        b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + bytes(40),  # the first IFD's offset points past the end
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02\x87\x69\x00\x04\x00\x00\x00\x01\xff\xff\x00\x00" + bytes(20),
    ],
)
def test_a_garbage_exif_block_gives_nulls_and_the_image_still_decodes(tmp_path, block):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(jpeg(block))
    decoded = decode_image(str(path), Preprocessing(16), exif="gps")
    assert decoded.pixels.shape == (16, 16, 3)
    assert decoded.exif == NO_EXIF


class DamagedExif(Image.Exif):
    """Pillow unpacks a tag's value when it is asked for: what a damaged Make raises then."""

    def __getitem__(self, tag):
        if tag == Base.Make:
            raise struct.error("unpack requires a buffer of 4 bytes")
        return super().__getitem__(tag)


def test_a_tag_that_fails_to_unpack_is_null_and_the_others_are_kept():
    exif = DamagedExif()
    exif.load(photo_exif().tobytes())
    fields = read_exif(exif, "gps")
    assert fields.make is None
    assert fields.model == "Canon EOS R6" and fields.latitude is not None and fields.time is not None


def test_the_decoder_reads_the_exif_it_opened_and_only_when_asked(tmp_path, monkeypatch):
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg(photo_exif()))
    assert decode_image(str(path), Preprocessing(16)).exif is None
    opened = []
    monkeypatch.setattr(decode, "open_image", lambda data: opened.append(data) or open_image(data))
    reads = []
    decoded = decode_image(
        str(path), Preprocessing(16), read=lambda p: reads.append(p) or decode.read_file(p), exif="camera"
    )
    assert len(reads) == len(opened) == 1  # one read, one open: the pixels and the EXIF come from the same image
    assert decoded.exif.make == "Canon" and decoded.exif.latitude is None
    assert (decoded.width, decoded.height) == (24, 40)  # orientation 6 read from the same EXIF: turned upright
    assert decode_image(str(path), Preprocessing(16), exif="gps").exif.latitude == pytest.approx(48.858, abs=1e-3)


def test_an_image_without_exif_has_no_fields():
    assert fields_of(jpeg(None)) == NO_EXIF


def test_the_parsers_alone():
    assert capture_time("2023-07-14 18:30:05\x00") == datetime(2023, 7, 14, 18, 30, 5)
    assert capture_time("2023:07:14 18:30:05", "12x") == datetime(2023, 7, 14, 18, 30, 5)  # bad subseconds: ignored
    assert capture_time(b"2023:07:14 18:30:05") is None  # not text
    assert utc_offset("+14:00") == 840 and utc_offset("-12:00") == -720 and utc_offset("+14:30") is None
    assert coordinate((0.0, 0.0, 0.0), "S", "NS", 90) == 0.0
    assert coordinate((1.0, float("inf"), 0.0), "N", "NS", 90) is None
    assert coordinate((1.0, -30.0, 0.0), "N", "NS", 90) is None
    assert coordinate([1.0, 2.0, 3.0], "N", "NS", 90) is None


def test_the_columns_are_the_schemas_exif_columns():
    rows = [ExifFields(time=datetime(2020, 1, 1), make="Sony", latitude=1.5), NO_EXIF]
    columns = exif_columns(rows)
    assert list(columns) == output_schema(exif="gps").names[-8:]
    assert columns["exif_make"] == ["Sony", None] and columns["exif_latitude"] == [1.5, None]
