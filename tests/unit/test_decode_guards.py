"""What decoding refuses before any decoder runs, and what it costs in memory: special files, other
formats in disguise, oversized files, and wide (16-bit, float) pixels."""

from __future__ import annotations

import os
import sys
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from batchclf import decode
from batchclf.decode import MAX_FILE_BYTES, ImageDecodeError, Preprocessing, decode_image, to_rgb
from batchclf.fsutil import NotRegularFileError, read_blocks

PRE = Preprocessing(32)


def test_a_fifo_named_jpg_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageDecodeError, match=r"^not a regular file: a FIFO \(named pipe\)$"):
        decode_image(str(fifo), PRE)
    with pytest.raises(NotRegularFileError):  # the content hash (--hash, training) refuses it too
        list(read_blocks(fifo))


def test_a_socket_named_png_is_refused_by_its_kind(tmp_path):
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.png"))
    with pytest.raises(ImageDecodeError, match=r"^not a regular file: a socket$"):
        decode_image(str(tmp_path / "sock.png"), PRE)
    with pytest.raises(NotRegularFileError, match="a socket"):
        list(read_blocks(tmp_path / "sock.png"))


def test_a_link_to_a_device_is_refused(tmp_path):
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")
    with pytest.raises(ImageDecodeError, match="not a regular file: a character device"):
        decode_image(str(link), PRE)
    with pytest.raises(NotRegularFileError):
        list(read_blocks(link))


def test_a_socket_is_refused_saying_what_it_is(tmp_path, monkeypatch):
    """A socket cannot even be opened (ENXIO): it is still named for what it is, by decoding and the hash."""
    import socket

    monkeypatch.chdir(tmp_path)  # a short name: AF_UNIX paths are limited to about 100 bytes
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("sock.jpg")
        with pytest.raises(ImageDecodeError, match=r"^not a regular file: a socket$"):
            decode_image("sock.jpg", PRE)
        with pytest.raises(NotRegularFileError, match="a socket"):
            list(read_blocks("sock.jpg"))


@pytest.mark.parametrize(
    "content, name",
    [
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "PostScript"),
        (b"\xc5\xd0\xd3\xc6" + b"\0" * 40, "PostScript (binary EPS)"),
        (b"%PDF-1.7\n1 0 obj\n", "PDF"),
        (b"8BPS\0\x01" + b"\0" * 40, "Photoshop (PSD)"),
    ],
)
def test_another_format_in_disguise_is_named_and_never_decoded(tmp_path, content, name):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as raised:  # the unit tier's guard fails any subprocess (Ghostscript)
        decode_image(str(path), PRE)
    assert str(raised.value) == f"not an image batchclf reads: the content is {name}"


def test_an_unknown_content_says_so(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"just some text, not an image")
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        decode_image(str(path), PRE)


def test_a_file_over_the_limit_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "padded.jpg"
    Image.new("RGB", (8, 8)).save(path)
    with open(path, "r+b") as stream:  # sparse: gigabytes of nothing cost no disk
        stream.truncate(MAX_FILE_BYTES + 1)
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match="file too large"):
            decode_image(str(path), PRE)
        assert tracemalloc.get_traced_memory()[1] < 10_000_000
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "mode, values, expected",
    [
        ("I;16", [0, 256, 65535, 32768], [0, 1, 255, 128]),
        ("I", [0, 255, 100, 7], [0, 255, 100, 7]),  # 8-bit data in a 32-bit image stays as it is
        ("I", [0, 65535, 300, 257], [0, 255, 1, 1]),
        ("F", [0.0, 255.0, 127.5, -3.0], [0, 255, 127, 0]),
    ],
)
def test_wide_pixels_are_scaled_to_eight_bits(mode, values, expected):
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(np.array([values], dtype=dtype))
    assert image.mode == mode
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == expected


def test_a_16_bit_image_costs_two_copies_of_its_pixels_not_a_dozen():
    image = Image.fromarray(np.full((2000, 2000), 40000, np.uint16))
    raw = 2000 * 2000 * 2
    tracemalloc.start()
    try:
        rgb = to_rgb(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rgb.getpixel((0, 0)) == (156, 156, 156)
    assert peak < 2.5 * raw, f"{peak / raw:.1f} times the 16-bit pixels"  # the float64 copies cost 12 times


def _heic(path):
    import pillow_heif  # the writer only: registering the opener is the decoder's business

    pillow_heif.from_pillow(Image.new("RGB", (64, 48), (10, 200, 30))).save(path)


def test_heic_is_decoded_through_the_heif_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "_heif_registered", None)  # as in a fresh process: registered on first use
    _heic(tmp_path / "phone.heic")
    decoded = decode_image(str(tmp_path / "phone.heic"), PRE)
    assert (decoded.width, decoded.height) == (64, 48)
    assert np.abs(decoded.pixels.astype(int) - (10, 200, 30)).max() <= 8


def test_heic_without_the_heif_extra_says_how_to_install_it(tmp_path, monkeypatch):
    _heic(tmp_path / "phone.jpg")  # the content decides, not the name
    monkeypatch.setattr(decode, "_heif_registered", None)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # "import pillow_heif" raises ImportError
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(str(tmp_path / "phone.jpg"), PRE)
    assert str(raised.value) == 'cannot decode HEIC/HEIF without the heif extra: pip install "batchclf[heif]"'
    assert raised.value.size == (tmp_path / "phone.jpg").stat().st_size  # still a row with its signature


def test_the_decoder_gets_a_whole_file_in_one_call(tmp_path, monkeypatch):
    """Each call into Pillow's decoder takes the GIL back: a large JPEG fed 64 KiB at a time waited for it a
    dozen times while other threads ran Python, and decoded three times slower (docs/performance.md)."""
    noise = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    path = tmp_path / "noisy.jpg"
    Image.fromarray(noise).save(path, quality=95)
    assert path.stat().st_size > 4 * 65536  # what Pillow would read and decode in five calls or more
    calls = []
    real = Image._getdecoder

    class Counting:
        def __init__(self, decoder):
            self.decoder = decoder

        def decode(self, data):
            calls.append(len(data))
            return self.decoder.decode(data)

        def __getattr__(self, name):
            return getattr(self.decoder, name)

    monkeypatch.setattr(Image, "_getdecoder", lambda *args, **kwargs: Counting(real(*args, **kwargs)))
    image = decode_image(str(path), Preprocessing(224))
    assert image.width == 800 and len(calls) == 1
