"""The shipped int8 calibration set: small, credited, decodable, and hashed into the keys that depend on it."""

from __future__ import annotations

import re
import shutil

import pytest
from PIL import Image

from batchclf import plan, worker
from batchclf.config import RunConfig
from batchclf.decode import Preprocessing
from batchclf.models import calibration_set
from batchclf.models.calibration_set import CALIBRATION_FOLDER, calibration_digest, calibration_files
from batchclf.models.registry import ModelSpec


def test_the_set_is_48_to_64_small_images_under_1_5_mb():
    files = calibration_files()
    assert 48 <= len(files) <= 64
    assert sum(f.stat().st_size for f in files) < 1_500_000
    for file in files:
        with Image.open(file) as image:
            assert image.format == "JPEG" and max(image.size) <= 256, file.name


def test_every_image_is_credited_and_every_credit_is_an_image():
    attribution = (CALIBRATION_FOLDER / "ATTRIBUTION.md").read_text(encoding="utf-8")
    credited = set(re.findall(r"^\| `([^`]+)` \|", attribution, re.MULTILINE))
    assert credited == {f.name for f in calibration_files()}


def test_the_images_decode_as_scoring_decodes_them():
    pixels = list(calibration_set.calibration_images(Preprocessing(224)))
    assert len(pixels) == len(calibration_files())
    assert {p.shape for p in pixels} == {(224, 224, 3)}


@pytest.fixture
def copy(tmp_path):
    folder = tmp_path / "calibration"
    shutil.copytree(CALIBRATION_FOLDER, folder)
    return folder


def test_the_digest_follows_the_images_not_the_credits(copy):
    before = calibration_digest(copy)
    assert before == calibration_digest(CALIBRATION_FOLDER)
    (copy / "ATTRIBUTION.md").write_text("corrected credits\n")
    assert calibration_digest(copy) == before
    first = calibration_files(copy)[0]
    first.rename(first.with_name("renamed.jpg"))
    assert calibration_digest(copy) != before
    first.with_name("renamed.jpg").rename(first)
    with open(first, "ab") as stream:
        stream.write(b"\0")
    assert calibration_digest(copy) != before


def test_a_missing_set_is_an_installation_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="reinstall batchclf"):
        calibration_digest(tmp_path)


@pytest.fixture
def spec():
    return ModelSpec("m", "builtin", "nothing-installed", ("a", "b"), Preprocessing(224))


def test_the_int8_keys_change_with_the_calibration_set_and_no_other_key_does(spec, tmp_path, monkeypatch):
    config = RunConfig(input=tmp_path, output=tmp_path / "out.parquet")
    int8 = RunConfig(input=tmp_path, output=tmp_path / "out.parquet", quantize="int8")
    options = worker.ScoringOptions(quantize="int8")
    before = (plan.reuse_key(spec, config, "/r"), plan.reuse_key(spec, int8, "/r"))
    conversions = (worker._conversion_key(spec, worker.ScoringOptions()), worker._conversion_key(spec, options))
    monkeypatch.setattr(plan, "calibration_digest", lambda: "another set")
    monkeypatch.setattr(worker, "calibration_digest", lambda: "another set")
    after = (plan.reuse_key(spec, config, "/r"), plan.reuse_key(spec, int8, "/r"))
    assert after[0] == before[0] and after[1] != before[1]
    assert worker._conversion_key(spec, worker.ScoringOptions()) == conversions[0]
    assert worker._conversion_key(spec, options) != conversions[1]
