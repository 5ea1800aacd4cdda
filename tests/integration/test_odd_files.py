"""Odd files: every image file is a row with the right status, none crashes the job, exit 0.

The corpus is built by ``corpus.build_corpus``, which also says what each file must become; one real
``batchclf run`` goes over it (module-scoped), and the tests read its output.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from corpus import build_corpus, jpeg_bytes, pattern, png_bomb_bytes, restore_permissions, write_exif_rotated
from PIL import Image

from batchclf.decode import ImageDecodeError, Preprocessing, decode_image
from batchclf.discover import discover_images
from batchclf.errors import EXIT_INCOMPLETE

PREPROCESSING = Preprocessing(224)


# Root reads files whatever their mode; without these two capabilities it gets "permission denied"
# like anyone else, so the unreadable files are tested for real.
DROP_READ_OVERRIDE = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
    "--",
]
CAN_DROP = os.geteuid() == 0 and shutil.which("setpriv") is not None


def run_cli(*args: str, timeout: float = 600, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    command = [
        *prefix,
        sys.executable,
        "-m",
        "batchclf",
        "run",
        *args,
        "--no-progress",
        "--dashboard-address",
        "127.0.0.1:0",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("odd")
    root = base / "corpus"
    expected = build_corpus(root, reader_bypasses_permissions=False if CAN_DROP else None)
    output = base / "out.parquet"
    try:
        result = run_cli(
            str(root), str(output), "--workers", "1", "--shard-size", "8", prefix=DROP_READ_OVERRIDE if CAN_DROP else []
        )
        table = pq.read_table(output) if output.exists() else None
    finally:
        restore_permissions(root)
    return expected, result, table


def test_run_over_odd_files_writes_every_row_and_names_the_unreadable_folder(corpus_run):
    _, result, table = corpus_run
    if CAN_DROP or os.geteuid() != 0:  # the locked folder cannot be listed: the output is written, exit 5
        assert result.returncode == EXIT_INCOMPLETE, result.stderr[-3000:]
        assert "cannot read folder permissions/locked_folder/ (Permission denied)" in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-3000:]
    assert table is not None
    assert "Traceback" not in result.stderr


def test_one_row_per_image_file(corpus_run):
    expected, _, table = corpus_run
    paths = table["path"].to_pylist()
    assert len(paths) == len(set(paths)), "a path appears twice"
    assert set(paths) == set(expected)
    assert not any(p.startswith("../") or "link_above_root" in p for p in paths)


def test_status_and_error_text_of_each_file(corpus_run):
    expected, _, table = corpus_run
    rows = {row["path"]: row for row in table.to_pylist()}
    wrong = []
    for path, want in expected.items():
        row = rows[path]
        if row["status"] != want.status:
            wrong.append(f"{path!r}: status {row['status']} ({row['error']}), expected {want.status}")
        elif want.status == "error" and want.error not in (row["error"] or "").lower():
            wrong.append(f"{path!r}: error {row['error']!r} does not mention {want.error!r}")
        elif want.status == "ok" and (row["label"] is None or (row["width"], row["height"]) != want.size):
            wrong.append(f"{path!r}: label {row['label']!r}, size {row['width']}x{row['height']}, expected {want.size}")
    assert not wrong, "\n".join(wrong)


def test_corpus_has_both_outcomes(corpus_run):
    """The corpus itself must exercise successes and every kind of failure."""
    expected, _, table = corpus_run
    errors = [w.error for w in expected.values() if w.status == "error"]
    assert len(errors) >= 7 and len(expected) - len(errors) >= 20
    assert table.num_rows == len(expected)


def test_folder_without_images_is_a_usage_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here\n")
    result = run_cli(str(tmp_path / "empty"), str(tmp_path / "out.parquet"), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "no image files found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.parquet").exists()


# Decoding, checked pixel by pixel against references made independently of batchclf.


def test_exif_rotation_is_applied(tmp_path):
    stored = write_exif_rotated(tmp_path / "rotated.jpg", width=80, height=48, orientation=6)
    Image.fromarray(np.rot90(stored, k=-1)).save(tmp_path / "upright.png")  # 6: turn 90° clockwise
    Image.fromarray(stored).save(tmp_path / "as_stored.png")
    rotated = decode_image(str(tmp_path / "rotated.jpg"), PREPROCESSING)
    upright = decode_image(str(tmp_path / "upright.png"), PREPROCESSING)
    as_stored = decode_image(str(tmp_path / "as_stored.png"), PREPROCESSING)
    assert (rotated.width, rotated.height) == (48, 80)
    assert np.abs(rotated.pixels.astype(int) - upright.pixels.astype(int)).max() <= 2
    assert np.abs(rotated.pixels.astype(int) - as_stored.pixels.astype(int)).mean() > 20


@pytest.mark.parametrize(
    "orientation,turn", [(3, lambda a: np.rot90(a, 2)), (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])]
)
def test_other_exif_orientations(tmp_path, orientation, turn):
    stored = write_exif_rotated(tmp_path / "o.jpg", width=80, height=48, orientation=orientation)
    Image.fromarray(np.ascontiguousarray(turn(stored))).save(tmp_path / "ref.png")
    got = decode_image(str(tmp_path / "o.jpg"), PREPROCESSING)
    want = decode_image(str(tmp_path / "ref.png"), PREPROCESSING)
    assert np.abs(got.pixels.astype(int) - want.pixels.astype(int)).max() <= 2


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 64), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    pixels = decode_image(str(tmp_path / "a.gif"), PREPROCESSING).pixels
    assert pixels[..., 0].mean() > 200 and pixels[..., 1].mean() < 30 and pixels[..., 2].mean() < 30


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.full((40, 40), 32896, np.uint16)  # half of 65535
    Image.fromarray(values).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode.startswith("I")
    pixels = decode_image(str(tmp_path / "g.png"), PREPROCESSING).pixels
    assert abs(int(pixels.mean()) - 128) <= 1


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba).convert("LA").save(tmp_path / "la.png")
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.save(tmp_path / "p.png", transparency=0)
    for name in ("la.png", "p.png"):
        assert decode_image(str(tmp_path / name), PREPROCESSING).pixels.min() >= 250, name


def test_cmyk_colours_survive(tmp_path):
    Image.new("RGB", (48, 48), (230, 20, 20)).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    pixels = decode_image(str(tmp_path / "c.jpg"), PREPROCESSING).pixels.reshape(-1, 3).mean(axis=0)
    assert pixels[0] > 180 and pixels[1] < 70 and pixels[2] < 70


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bomb_bytes(20_000, 10_000))  # over the limit, under twice it
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(str(tmp_path / "bomb.png"), PREPROCESSING)


def test_special_files_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageDecodeError, match="FIFO"):
        decode_image(str(tmp_path / "pipe.jpg"), PREPROCESSING)
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match="directory"):
        decode_image(str(tmp_path / "folder.jpg"), PREPROCESSING)


def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes(jpeg_bytes())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads it anyway: then it must simply decode
            assert decode_image(str(path), PREPROCESSING).width == 96
        else:
            with pytest.raises(ImageDecodeError, match="permission denied"):
                decode_image(str(path), PREPROCESSING)
    finally:
        path.chmod(0o600)


def test_permission_denied_for_real(tmp_path):
    """As a reader that file modes apply to: root without its read-override capabilities, or any user."""
    if os.geteuid() == 0 and not CAN_DROP:
        pytest.skip("running as root without setpriv (util-linux): file modes do not apply to this process")
    path = tmp_path / "secret.jpg"
    path.write_bytes(jpeg_bytes())
    path.chmod(0)
    probe = (
        "import sys\nfrom batchclf.decode import ImageDecodeError, Preprocessing, decode_image\n"
        "try:\n    decode_image(sys.argv[1], Preprocessing(224))\nexcept ImageDecodeError as e:\n"
        "    print(e)\nelse:\n    print('decoded')\n"
    )
    prefix = DROP_READ_OVERRIDE if CAN_DROP else []
    try:
        result = subprocess.run(
            [*prefix, sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60
        )
    finally:
        path.chmod(0o600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "permission denied; make the file readable"


# Discovery.


def test_links_above_the_root_are_not_followed(tmp_path):
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes())
    inside = tmp_path / "data" / "sub"
    inside.mkdir(parents=True)
    (inside / "a.jpg").write_bytes(jpeg_bytes())
    os.symlink("../..", inside / "up_two")  # points at tmp_path, above the root
    os.symlink("..", inside / "up_one")  # points at the root itself
    os.symlink(tmp_path / "data" / "sub", tmp_path / "data" / "same")  # a second way into sub
    _, paths = discover_images(tmp_path / "data")
    assert paths == ["same/a.jpg"] or paths == ["sub/a.jpg"]


def test_very_deep_tree_does_not_hit_the_recursion_limit(tmp_path):
    directory = tmp_path
    for level in range(150):
        directory = directory / f"{level}"
        directory.mkdir()
    (directory / "x.jpg").write_bytes(b"")
    depth = len(inspect.stack(0))
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 60)  # a walk that recursed once a level would fail here
    try:
        _, paths = discover_images(tmp_path)
    finally:
        sys.setrecursionlimit(previous)
    assert len(paths) == 1 and paths[0].count("/") == 150


def test_pattern_is_asymmetric():
    image = pattern(80, 48)
    assert not np.array_equal(image, image[:, ::-1]) and not np.array_equal(image, image[::-1])
