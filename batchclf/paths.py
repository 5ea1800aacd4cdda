"""Path texts and names: which files are images, and the one text of each path that every stage
sorts by, writes in the ``path`` column and turns back into a file name."""

from __future__ import annotations

import re

# The one list of what the walk takes: each extension and the Pillow format that decodes it. The
# decoder opens these formats and no other; HEIF is decoded by the ``heif`` extra (pillow-heif).
IMAGE_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".avif": "AVIF",
    ".heic": "HEIF",
    ".heif": "HEIF",
}
IMAGE_EXTENSIONS = frozenset(IMAGE_FORMATS)


def extension(name: str) -> str:
    """The extension in lower case with its dot, or ``""``: as ``pathlib`` reads a suffix (``.jpg`` alone is
    a hidden file's name, ``a.`` has none)."""
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def is_image_name(name: str) -> bool:
    """An image extension, in any case, after a name."""
    return extension(name) in IMAGE_EXTENSIONS


def path_text(relative: str) -> str:
    """``relative`` as the output's ``path`` text: valid Unicode, one text per file name.

    A file name that is not UTF-8 reaches Python with its odd bytes as lone surrogates, which
    Arrow refuses; they are written as ``\\xNN``. A backslash in a name is written ``\\\\``, so no
    two names share a text (``x_\\xff.jpg`` spelled out and ``x_`` + byte 0xff stay apart) and
    ``fs_path`` turns the text back into the name. Sorting these texts is the one order of the output.
    """
    escaped = relative.replace("\\", "\\\\")
    return escaped.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f])")  # path_text escapes only the bytes 0x80-0xff


def fs_path(text: str) -> str:
    """The file name ``path_text`` wrote as ``text`` (odd bytes back as surrogates, for ``open``)."""
    if "\\" not in text:
        return text
    return _ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(0xDC00 + int(m.group(1)[1:], 16)), text)
