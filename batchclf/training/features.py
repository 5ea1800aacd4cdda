"""Pooled features of labelled images, extracted by the same Dask job as ``run`` and cached on disk.

The trainer needs the 1280-d ``avg_pool`` output of the pretrained network for every image. Those come
from ``job.run(..., embeddings=True)`` so training sees exactly the features that ``run --embeddings``
writes, decoded and batched the same way. Each image's features are cached under
``cache_dir()/features/<featurizer>/`` keyed by the SHA-256 of the file's content, so training again
with other settings, or on a re-arranged dataset, decodes nothing.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..backends import cache_dir
from ..decode import error_message
from ..errors import AllFilesFailedError
from ..fsutil import atomic_file, sha256_file

FEATURES_FORMAT = 1  # bump when the cached arrays change meaning
LINK_SUFFIX = ".jpg"  # of the scratch links the scoring job reads (see score_files)


@dataclass(frozen=True)
class ExtractionConfig:
    model: str = "efficientnet-lite0"
    backend: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    scheduler: str | None = None
    progress: bool = True


@dataclass
class Features:
    """Features of the readable images; ``errors`` maps each unreadable path to the reason."""

    vectors: np.ndarray  # (readable images, feature size) float32, in the order of ``paths``
    paths: list[str]
    digests: list[str]
    errors: dict[str, str] = field(default_factory=dict)
    decoded: int = 0  # images decoded now; the rest came from the cache


def featurizer_id(config: ExtractionConfig) -> str:
    """What the cached features depend on: the network, its feature layer and preprocessing."""
    from ..models.registry import resolve_model

    spec = resolve_model(config.model)
    size = spec.preprocessing.image_size if spec.preprocessing else "model"
    crop = spec.preprocessing.crop_fraction if spec.preprocessing else "model"
    return f"{spec.id}:{spec.feature_layer}:{size}px:crop{crop}:v{FEATURES_FORMAT}"


def extract_concatenated(
    paths: list[str], config: ExtractionConfig, featurizers: tuple[str, ...], log=print
) -> Features:
    """Each featurizer's features (each cached under its own key), concatenated image by image.

    An image unreadable by any network is left out, with the first reason given.
    """
    parts = [extract_features(paths, replace(config, model=name), log=log) for name in featurizers]
    if len(parts) == 1:
        return parts[0]
    errors: dict[str, str] = {}
    for part in parts:
        for path, error in part.errors.items():
            errors.setdefault(path, error)
    kept = [path for path in parts[0].paths if path not in errors]
    blocks = []
    for part in parts:
        row = {path: i for i, path in enumerate(part.paths)}
        blocks.append(part.vectors[[row[path] for path in kept]] if kept else np.zeros((0, 0), np.float32))
    digest = dict(zip(parts[0].paths, parts[0].digests))
    vectors = np.concatenate(blocks, axis=1) if kept else np.zeros((0, 0), np.float32)
    return Features(vectors, kept, [digest[path] for path in kept], errors, sum(part.decoded for part in parts))


def _cache_folder(featurizer: str) -> Path:
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in featurizer.split(":")[0])
    return cache_dir() / "features" / f"{readable}-{hashlib.sha256(featurizer.encode()).hexdigest()[:12]}"


def _load_cached(folder: Path, digest: str) -> np.ndarray | None:
    try:
        return np.load(folder / f"{digest}.npy")
    except (OSError, ValueError):
        return None


def _store(folder: Path, digest: str, vector: np.ndarray) -> None:
    """Write through ``fsutil.atomic_file``: an unpredictable name, never a followed link."""
    with atomic_file(folder / f"{digest}.npy") as stream:
        np.save(stream, vector.astype(np.float32))


def extract_features(paths: list[str], config: ExtractionConfig, log=print) -> Features:
    """Features for ``paths`` (absolute), from the cache or by running the scoring job on the rest."""
    featurizer = featurizer_id(config)
    folder = _cache_folder(featurizer)
    folder.mkdir(parents=True, exist_ok=True)
    errors: dict[str, str] = {}
    digests: dict[str, str] = {}
    for path in paths:
        try:
            digests[path] = sha256_file(path)
        except OSError as error:  # a FIFO, socket or device is refused at once (fsutil.open_regular)
            errors[path] = error_message(error)
    vectors = {d: v for d in set(digests.values()) if (v := _load_cached(folder, d)) is not None}
    missing = sorted({d: p for p, d in digests.items() if d not in vectors}.items())
    failed: dict[str, str] = {}
    if missing:
        log(f"extracting features of {len(missing)} images ({len(vectors)} cached)", file=sys.stderr)
        failed = _run_job(missing, config, folder)
        for digest, _ in missing:
            if digest not in failed:
                vectors[digest] = _load_cached(folder, digest)
    return _assemble(paths, digests, vectors, failed, errors, len(missing))


def score_files(paths: list[str], columns: list[str], **options) -> list[dict]:
    """Run the scoring job on ``paths`` (absolute, anywhere) and return one row per path, in order.

    ``options`` are ``RunConfig`` fields. Files are linked under plain names in a scratch folder, so
    any file name, in any folder, becomes a safe line of the job's path list. Every link ends in
    ``LINK_SUFFIX`` whatever the file's own extension (``.jfif``, none): the path list takes only
    image extensions, and decoding goes by the content, so the name must not decide what is scored.
    """
    import pyarrow.parquet as pq

    from ..config import RunConfig
    from ..job import run
    from ..runlog import logger

    with tempfile.TemporaryDirectory(prefix="batchclf-files-") as scratch:
        links = Path(scratch) / "images"
        links.mkdir()
        names = []
        for index, path in enumerate(paths):
            names.append(f"{index:07d}{LINK_SUFFIX}")
            os.symlink(path, links / names[-1])
        listing = links / "images.txt"
        listing.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
        output = Path(scratch) / "scores.parquet"
        options.setdefault("dashboard_address", ":0")
        quiet, logger.disabled = logger.disabled, True  # the scoring job's own lines are not the training's
        try:
            run(RunConfig(input=listing, output=output, **options))
        except AllFilesFailedError:
            pass  # every row is an error row; the caller counts them
        finally:
            logger.disabled = quiet
        table = pq.read_table(output, columns=["path", *columns]).to_pylist()
    rows = {row["path"]: row for row in table}
    return [rows[name] for name in names]


def _run_job(missing: list[tuple[str, str]], config: ExtractionConfig, folder: Path) -> dict[str, str]:
    """Run the scoring job on the uncached images; store their features; return digest → error."""
    rows = score_files(
        [path for _, path in missing],
        ["status", "error", "embedding"],
        model=config.model,
        backend=config.backend,
        batch_size=config.batch_size,
        top_k=1,
        embeddings=True,
        workers=config.workers,
        scheduler=config.scheduler,
        progress=config.progress,
    )
    failed = {}
    for (digest, _), row in zip(missing, rows):
        if row["status"] == "ok":
            _store(folder, digest, np.asarray(row["embedding"], dtype=np.float32))
        else:
            failed[digest] = row["error"]
    return failed


def _assemble(paths, digests, vectors, failed, errors, decoded) -> Features:
    kept, kept_digests, rows = [], [], []
    for path in paths:
        if path in errors:
            continue
        digest = digests[path]
        if digest in failed:
            errors[path] = failed[digest]
            continue
        kept.append(path)
        kept_digests.append(digest)
        rows.append(vectors[digest])
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
    return Features(matrix, kept, kept_digests, errors, decoded)
