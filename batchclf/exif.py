"""The EXIF columns of ``--exif``: what a photo says about when, with what and (``--exif gps``) where it
was taken, read from the image the decoder already opened.

Every value is checked, and anything missing, damaged or out of range is a null, never an error
row: a date of ``0000:00:00 00:00:00``, an offset of ``+99:00``, text that is not printable, a GPS
coordinate with a zero denominator or past the poles.

The capture time is the camera's wall clock (``DateTimeOriginal`` with ``SubsecTimeOriginal``), kept
as a timestamp without a time zone, because most cameras record no offset; ``OffsetTimeOriginal``,
where recorded, goes in its own column as minutes east of UTC, so the UTC instant is
``exif_time - exif_utc_offset minutes``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from datetime import datetime

from PIL import ExifTags, Image

from .config import EXIF_WITH_LOCATION

Base, GPS = ExifTags.Base, ExifTags.GPS
TIME_FORMATS = ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S")  # EXIF's, and the dashes some writers use
OFFSET_PATTERN = re.compile(r"([+-])(\d\d):(\d\d)")
MAX_OFFSET_MINUTES = 14 * 60  # UTC-12:00 to UTC+14:00 are the offsets in use
SUBSECOND_PATTERN = re.compile(r"\d{1,9}")


@dataclass(frozen=True)
class ExifFields:
    time: datetime | None = None  # naive: the camera's clock
    utc_offset: int | None = None  # minutes east of UTC
    make: str | None = None
    model: str | None = None
    lens: str | None = None
    orientation: int | None = None
    latitude: float | None = None  # decimal degrees, north positive
    longitude: float | None = None  # decimal degrees, east positive


NO_EXIF = ExifFields()


def read_exif(exif: Image.Exif | None, mode: str) -> ExifFields:
    """The fields of an image's EXIF (``Image.getexif()``) for an ``--exif`` mode: the location only
    with ``gps``."""
    if not exif:
        return NO_EXIF
    main = _ifd(exif, ExifTags.IFD.Exif)
    location = _ifd(exif, ExifTags.IFD.GPSInfo) if mode == EXIF_WITH_LOCATION else {}
    orientation = _tag(exif, Base.Orientation)
    return ExifFields(
        time=capture_time(_tag(main, Base.DateTimeOriginal), _tag(main, Base.SubsecTimeOriginal)),
        utc_offset=utc_offset(_tag(main, Base.OffsetTimeOriginal)),
        make=text(_tag(exif, Base.Make)),
        model=text(_tag(exif, Base.Model)),
        lens=text(_tag(main, Base.LensModel)),
        orientation=orientation if type(orientation) is int and 1 <= orientation <= 8 else None,
        latitude=coordinate(_tag(location, GPS.GPSLatitude), _tag(location, GPS.GPSLatitudeRef), "NS", 90),
        longitude=coordinate(_tag(location, GPS.GPSLongitude), _tag(location, GPS.GPSLongitudeRef), "EW", 180),
    )


def _tag(tags, tag: int):
    """One tag's value; Pillow unpacks a value when it is first asked for, and a damaged one is None."""
    try:
        return tags.get(tag)
    except Exception:  # whatever the unpacking of a damaged value raises
        return None


def _ifd(exif: Image.Exif, ifd: ExifTags.IFD):
    """A sub-IFD; one that cannot be read (an offset past the end, a loop) is empty."""
    try:
        return exif.get_ifd(ifd)
    except Exception:  # Pillow raises what its TIFF parser meets on damaged data
        return {}


def text(value) -> str | None:
    """An ASCII tag as text: padding (NULs, spaces) stripped; empty or unprintable text is null."""
    if not isinstance(value, str):
        return None
    value = value.strip("\x00 \t\r\n")
    return value if value and value.isprintable() else None


def capture_time(value, subseconds=None) -> datetime | None:
    """``DateTimeOriginal`` (plus ``SubsecTimeOriginal``'s fraction) as a naive datetime, or None."""
    value = text(value)
    if value is None:
        return None
    for layout in TIME_FORMATS:
        try:
            moment = datetime.strptime(value, layout)
            break
        except ValueError:
            continue
    else:
        return None
    fraction = text(subseconds)
    if fraction and SUBSECOND_PATTERN.fullmatch(fraction):
        moment = moment.replace(microsecond=int(fraction[:6].ljust(6, "0")))
    return moment


def utc_offset(value) -> int | None:
    """``OffsetTimeOriginal`` (``+HH:MM``) in minutes east of UTC, or None."""
    match = OFFSET_PATTERN.fullmatch(text(value) or "")
    if not match:
        return None
    sign, hours, minutes = match.groups()
    if int(minutes) >= 60:
        return None
    total = int(hours) * 60 + int(minutes)
    return None if total > MAX_OFFSET_MINUTES else (-total if sign == "-" else total)


def coordinate(parts, reference, hemispheres: str, limit: int) -> float | None:
    """Degrees, minutes and seconds with their hemisphere (``N``/``S`` or ``E``/``W``) as signed degrees."""
    reference = text(reference)
    if reference is None or reference.upper() not in hemispheres or not isinstance(parts, tuple) or len(parts) != 3:
        return None
    try:
        degrees, minutes, seconds = (float(part) for part in parts)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = degrees + minutes / 60 + seconds / 3600
    if not all(math.isfinite(v) and v >= 0 for v in (degrees, minutes, seconds)) or value > limit:
        return None
    return -value if reference.upper() == hemispheres[1] else value


def exif_columns(rows: list[ExifFields]) -> dict[str, list]:
    """The fields of each row as the output's columns (``writer.EXIF_FIELDS``, ``GPS_FIELDS``): ``exif_`` + name."""
    names = [field.name for field in dataclasses.fields(ExifFields)]
    return {f"exif_{name}": [getattr(row, name) for row in rows] for name in names}
