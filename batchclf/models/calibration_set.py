"""The images ``--quantize int8`` calibrates on: a fixed set shipped in ``calibration/``, never the input.

Calibrated on the files a run scores, the int8 model (and so every row) would depend on which files
that run happened to score, and an incremental or resumed run would disagree with a full one. With
one set for every run the int8 model is a function of the model alone: one converted file per model,
and the same row for the same file whichever run scored it. ``calibration/ATTRIBUTION.md`` lists the
images, their sources and licences.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..decode import Preprocessing, decode_image
from ..fsutil import sha256_tree

CALIBRATION_FOLDER = Path(__file__).parent / "calibration"


def calibration_files(folder: Path = CALIBRATION_FOLDER) -> list[Path]:
    """The calibration images, in name order; a set that is missing is an installation error."""
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"the int8 calibration images are missing from {folder}; reinstall batchclf")
    return files


def calibration_digest(folder: Path = CALIBRATION_FOLDER) -> str:
    """A hash of the images' names and bytes: what the int8 model and its rows were calibrated with.

    ``ATTRIBUTION.md`` is left out: correcting a credit changes no model and no row.
    """
    listing = "".join(f"{file.name}\0{sha256_tree(file)}\n" for file in calibration_files(folder))
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def calibration_images(preprocessing: Preprocessing, folder: Path = CALIBRATION_FOLDER) -> Iterator[np.ndarray]:
    """The calibration set decoded exactly as scoring decodes a file (uint8, HxWx3)."""
    for file in calibration_files(folder):
        yield decode_image(str(file), preprocessing).pixels
