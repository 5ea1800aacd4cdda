"""Path texts (``paths.py``): one valid Unicode text per file name, turned back into the name by ``fs_path``."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from batchclf.paths import IMAGE_EXTENSIONS, extension, fs_path, is_image_name, path_text

ODD_NAMES = [
    "plain.jpg",
    "é/ü.jpg",  # UTF-8 is its own text
    os.fsdecode(b"caf\xe9.jpg"),  # Latin-1 bytes: lone surrogates in Python
    os.fsdecode(b"x_\xff.jpg"),
    "x_\\xff.jpg",  # the same text spelled out, with a real backslash
    "back\\slash.png",
    "two\\\\backslashes.png",
    "ends with a backslash\\",
    "new\nline.jpg",
    "tab\tand\rreturn.jpg",
    os.fsdecode(b"dir\xff/in.jpg"),
    os.fsdecode(b"\x80\x9f\xa0\xc3.jpg"),  # bytes 0x80-0xff that are not UTF-8
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_fs_path_turns_the_text_back_into_the_name(name):
    assert fs_path(path_text(name)) == name


def test_every_name_has_its_own_text():
    texts = [path_text(name) for name in ODD_NAMES]
    assert len(set(texts)) == len(ODD_NAMES)
    assert path_text(os.fsdecode(b"x_\xff.jpg")) == "x_\\xff.jpg"
    assert path_text("x_\\xff.jpg") == "x_\\\\xff.jpg"


def test_texts_are_valid_unicode_that_arrow_takes():
    texts = [path_text(name) for name in ODD_NAMES]
    for text in texts:
        text.encode("utf-8")  # a lone surrogate would raise here
    assert pa.array(texts, pa.string()).to_pylist() == texts


def test_names_without_a_backslash_or_odd_bytes_are_their_own_text():
    for name in ("a/b.jpg", "é/ü.jpg", "new\nline.jpg", "space d.png"):
        assert path_text(name) == name
        assert fs_path(name) == name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True),
        ("a.JPG", True),
        ("b.jpeg", True),
        ("x.TiFf", True),
        ("archive.tar.png", True),
        ("w.webp", True),
        (".jpg", False),  # a hidden file's name, not an extension
        ("a.", False),
        ("noext", False),
        ("notes.txt", False),
        ("a.jpg.txt", False),
        ("a.svg", False),
    ],
)
def test_is_image_name(name, expected):
    assert is_image_name(name) is expected


def test_every_image_extension_is_a_lower_case_suffix():
    assert all(extension.startswith(".") and extension == extension.lower() for extension in IMAGE_EXTENSIONS)
    assert all(is_image_name("x" + extension.upper()) for extension in IMAGE_EXTENSIONS)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.JPG", ".jpg"),
        ("archive.tar.gz", ".gz"),
        ("IMG_0001.HEIC", ".heic"),
        ("noext", ""),
        (".bashrc", ""),
        ("a.", ""),
    ],
)
def test_extension_is_lower_case_with_its_dot(name, expected):
    assert extension(name) == expected


def test_phone_formats_are_image_names():
    assert all(is_image_name(name) for name in ("a.avif", "IMG_0001.HEIC", "b.heif"))
