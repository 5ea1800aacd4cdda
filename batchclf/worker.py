"""What runs inside a Dask worker: build the model once, then decode, batch and score shards.

The driver sends a ``ModelSpec`` and ``ScoringOptions`` (small and picklable); the first task on a
worker process builds the model and keeps it in ``_SCORERS`` for every later task. Decoding runs in
a thread pool a window ahead of inference, so the two overlap.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from .backends import (
    LiteRTBackend,
    TensorFlowBackend,
    cached_model_file,
    choose_backend,
    configure_tensorflow,
    conversion_key,
    convert_to_tflite,
    scoring_model,
    tflite_path,
)
from .decode import DecodedImage, ImageDecodeError, Preprocessing, decode_image
from .exif import NO_EXIF, exif_columns
from .models.calibration_set import calibration_digest, calibration_images
from .models.registry import ModelSpec, builtin_tflite, load_keras_model
from .paths import fs_path
from .progress import report_progress
from .store import StorageOptions, reader_for

if TYPE_CHECKING:  # Arrow is imported where a shard is scored: batchclf.Classifier builds scorers without it
    import pyarrow as pa

    from .shard import Shard


@dataclass(frozen=True)
class ScoringOptions:
    batch_size: int = 32
    top_k: int = 5
    threshold: float = 0.0
    allowed: tuple[int, ...] | None = None  # class indices that may be reported; None: all
    backend: str = "auto"
    threads: int = 1  # inference threads per worker
    decode_threads: int = 2
    embeddings: bool = False
    quantize: str | None = None  # "int8": full-integer LiteRT model calibrated on the shipped calibration set
    content_hash: bool = False  # add the BLAKE2b of the bytes scored (``--hash``)
    exif: str | None = None  # ``--exif``: read the EXIF columns while decoding (config.EXIF_MODES)
    storage: StorageOptions | None = None  # fsspec options when the input is a URL (repr hides the values)


@dataclass
class Scorer:
    backend: TensorFlowBackend | LiteRTBackend
    preprocessing: Preprocessing
    decode_pool: ThreadPoolExecutor
    embedding_size: int | None
    prefetched: dict = field(default_factory=dict)  # full path -> decode future started by ``prefetch``


_SCORERS: dict[tuple, Scorer] = {}
_SCORERS_LOCK = threading.Lock()
_BUILD_COUNT = 0


def model_build_count() -> int:
    """How many models this process has built (tests check it is one per worker)."""
    return _BUILD_COUNT


def get_scorer(spec: ModelSpec, options: ScoringOptions) -> Scorer:
    """The cached scorer for this spec, building it on first use in this process."""
    with _SCORERS_LOCK:
        return _cached_scorer(spec, options)[0]


def prefetch(spec: ModelSpec, options: ScoringOptions, root: str, paths: list[str]) -> bool:
    """Start decoding ``paths`` (full paths under ``root``) for the shards about to run here, and build this
    process's scorer; ``_decode_ahead`` takes the images from there. The in-process worker calls it while the
    cluster starts. The decoding starts first when the spec says how to decode: LiteRT holds the GIL while it
    allocates its tensors (~0.15 s for a batch of 32), a decoder inside Pillow does not. Only a scorer built
    here takes them (a task that built it first may be decoding the same files): returns whether it was."""
    with _SCORERS_LOCK:  # held until every future is in place: a task's get_scorer waits for them
        if _scorer_key(spec, options) in _SCORERS:
            return False
        read, pool = reader_for(root, options.storage), ThreadPoolExecutor(options.decode_threads)

        def decode(preprocessing: Preprocessing) -> dict:
            return {path: pool.submit(_decode_one, path, preprocessing, options, read) for path in paths}

        started = decode(spec.preprocessing) if spec.preprocessing else None
        try:
            scorer, _ = _cached_scorer(spec, options, pool)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        scorer.prefetched = started if started is not None else decode(scorer.preprocessing)
    return True


def ready_to_prefetch(spec: ModelSpec, options: ScoringOptions) -> bool:
    """Whether ``prefetch`` would build the scorer with LiteRT alone: a user's ``.tflite``, or a model
    converted earlier, on a machine with no GPU in sight. If so, LiteRT is imported now, in the caller's
    thread. A build that would import TensorFlow is left to the first task: TensorFlow imported in a
    thread while the cluster imports Dask's dashboard in another has left the dashboard out."""
    from .machine import visible_gpus

    if spec.kind != "tflite":
        if spec.kind == "onnx" or options.backend == "tf" or visible_gpus() or conversion_pending(spec, options):
            return False
    import ai_edge_litert.interpreter  # noqa: F401

    return True


def discard_prefetched(spec: ModelSpec, options: ScoringOptions) -> None:
    """Cancel what ``prefetch`` started and no shard took (a run that stopped early)."""
    with _SCORERS_LOCK:
        scorer = _SCORERS.get(_scorer_key(spec, options))
    if scorer is not None:
        for future in scorer.prefetched.values():
            future.cancel()
        scorer.prefetched.clear()


def decode_window(options: ScoringOptions) -> int:
    """How many images a shard decodes ahead of inference."""
    return max(2 * options.batch_size, 2 * options.decode_threads)


def _scorer_key(spec: ModelSpec, options: ScoringOptions) -> tuple:
    return (
        spec,
        options.backend,
        options.batch_size,
        options.threads,
        options.decode_threads,
        options.embeddings,
        options.quantize,
    )


def _cached_scorer(spec: ModelSpec, options: ScoringOptions, pool=None) -> tuple[Scorer, bool]:
    """(the scorer, whether this call built it, with ``pool`` as its decode pool if given: a
    ``ThreadPoolExecutor``); the caller holds ``_SCORERS_LOCK``."""
    global _BUILD_COUNT
    key = _scorer_key(spec, options)
    if key in _SCORERS:
        return _SCORERS[key], False
    _BUILD_COUNT += 1
    _SCORERS[key] = _build_scorer(spec, options, pool or ThreadPoolExecutor(options.decode_threads))
    return _SCORERS[key], True


def _build_scorer(spec: ModelSpec, options: ScoringOptions, pool: ThreadPoolExecutor) -> Scorer:
    """LiteRT needs the Keras model (and TensorFlow) only to convert a user's Keras model or an int8 one.

    A built-in model's float LiteRT file is written from its weights (under a second) and cached like a
    converted one. A user's ``.tflite`` runs on LiteRT and an ``.onnx`` on onnxruntime as they are:
    neither imports TensorFlow.
    """
    from .backends import OnnxBackend

    if spec.kind in ("tflite", "onnx"):
        if options.embeddings:
            raise ValueError(f"a {spec.kind} model has no known feature layer, so it cannot produce embeddings")
        if spec.kind == "tflite":
            backend = LiteRTBackend(
                spec.source,
                options.batch_size,
                options.threads,
                len(spec.labels),
                False,
                spec.input_format,
                spec.preprocessing.image_size,
            )
        else:
            backend = OnnxBackend(spec.source, options.threads, spec.input_format, spec.preprocessing.image_size)
        return Scorer(backend, spec.preprocessing, pool, None)

    def build_model(with_features: bool):
        configure_tensorflow(options.threads)
        return scoring_model(load_keras_model(spec), spec.feature_layer, with_features, bool(options.quantize))

    if choose_backend(options.backend, options.quantize) == "litert":
        with_features, key = _file_keeps_features(spec, options), _conversion_key(spec, options)
        if _written_directly(spec, options):
            path = cached_model_file(key, functools.partial(builtin_tflite, spec, with_features))
        else:
            representative = functools.partial(_calibration_images, spec) if options.quantize else None
            path = convert_to_tflite(functools.partial(build_model, with_features), key, representative)
        backend = LiteRTBackend(path, options.batch_size, options.threads, len(spec.labels), options.embeddings)
        embedding_size = backend.feature_size
    else:
        keras_model = build_model(options.embeddings)
        backend = TensorFlowBackend(keras_model, options.embeddings)
        embedding_size = int(keras_model.outputs[1].shape[-1]) if options.embeddings else None
    preprocessing = spec.preprocessing or Preprocessing(backend.image_size)
    return Scorer(backend, preprocessing, pool, embedding_size)


def _written_directly(spec: ModelSpec, options: ScoringOptions) -> bool:
    """A built-in model in float: its LiteRT file is written from the weights, without TensorFlow's converter."""
    return spec.kind == "builtin" and not options.quantize


def _file_keeps_features(spec: ModelSpec, options: ScoringOptions) -> bool:
    """Whether the LiteRT file holds the pooled features as a second output. A model converted in float
    keeps them whenever it has a feature layer, so runs with and without ``--embeddings`` share one
    conversion; a file written directly (under a second) or an int8 one is made for the choice."""
    if _written_directly(spec, options) or options.quantize:
        return options.embeddings
    return options.embeddings or spec.feature_layer is not None


def _conversion_key(spec: ModelSpec, options: ScoringOptions) -> str:
    calibration = calibration_digest() if options.quantize else ""
    features, direct = _file_keeps_features(spec, options), _written_directly(spec, options)
    return conversion_key(spec.id, features, options.quantize, calibration, direct)


def conversion_pending(spec: ModelSpec, options: ScoringOptions) -> bool:
    """Whether the workers will first convert a Keras model for LiteRT (once per machine, about 20 s).

    Asked on the driver, without importing TensorFlow: a GPU machine on ``auto`` is taken to run TensorFlow.
    A built-in model in float is written directly, in under a second: nothing to announce.
    """
    from .machine import visible_gpus

    if spec.kind in ("tflite", "onnx") or options.backend == "tf" or _written_directly(spec, options):
        return False
    if options.backend == "auto" and not options.quantize and visible_gpus():
        return False
    return not tflite_path(_conversion_key(spec, options)).exists()


def _calibration_images(spec: ModelSpec, model) -> Iterator[np.ndarray]:
    """The shipped calibration set, decoded with this model's preprocessing."""
    return calibration_images(spec.preprocessing or Preprocessing(int(model.inputs[0].shape[1])))


def _decode_one(
    path: str, preprocessing: Preprocessing, options: ScoringOptions, read=None
) -> DecodedImage | ImageDecodeError:
    try:
        return decode_image(path, preprocessing, options.content_hash, read, options.exif)
    except ImageDecodeError as error:
        return error


def _decode_ahead(
    paths: list[str], scorer: Scorer, window: int, options: ScoringOptions, read=None
) -> Iterator[DecodedImage | ImageDecodeError]:
    """Decode in the pool, at most ``window`` images ahead of the consumer, in order.

    A read that raises (the storage failing: ``StorageError``) stops the shard; the reads queued
    behind it are cancelled, so the pool the worker's next task shares is not kept busy by them.
    """
    pending: deque = deque()
    source = iter(paths)

    def start(path: str):
        started = scorer.prefetched.pop(path, None)
        return started or scorer.decode_pool.submit(_decode_one, path, scorer.preprocessing, options, read)

    try:
        for path in itertools.islice(source, window):
            pending.append(start(path))
        while pending:
            result = pending.popleft().result()
            path = next(source, None)
            if path is not None:
                pending.append(start(path))
            yield result
    finally:
        for future in pending:
            future.cancel()


def top_k(probabilities: np.ndarray, k: int, allowed: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best classes per row, among the allowed ones."""
    scores = probabilities
    if allowed is not None:
        mask = np.full(probabilities.shape[1], -np.inf, np.float32)
        mask[list(allowed)] = 0.0
        scores = probabilities + mask
        k = min(k, len(allowed))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=1)


def scored_now() -> datetime:
    """The ``scored_at`` of rows scored now."""
    return datetime.now(timezone.utc)


def score_shard(shard: Shard, spec: ModelSpec, options: ScoringOptions) -> tuple[pa.Table, dict]:
    """Score every image of ``shard``; one row per path, failures included as error rows.

    ``bytes``, ``mtime``, ``inode``, ``ctime`` (and ``content_hash``) describe the very bytes that were decoded: they
    are taken from the open file as it is read, never from a later look at the path.
    """
    import pyarrow as pa

    from .writer import output_schema

    started = time.perf_counter()
    scorer = get_scorer(spec, options)
    build_seconds = time.perf_counter() - started
    full_paths = [os.path.join(shard.root, fs_path(p)) for p in shard.paths]
    n = len(full_paths)
    labels, scores, topks, widths, heights, sizes, mtimes, inodes, ctimes, hashes, embeddings = (
        [None] * n for _ in range(11)
    )
    errors: list[str | None] = [None] * n
    exif = [NO_EXIF] * n
    timings = {"decode_wait": 0.0, "inference": 0.0}

    def flush(positions: list[int], pixels: list[np.ndarray]) -> None:
        tick = time.perf_counter()
        probabilities, features = scorer.backend.predict(np.stack(pixels))
        timings["inference"] += time.perf_counter() - tick
        indices, values = top_k(probabilities, options.top_k, options.allowed)
        for row, position in enumerate(positions):
            best = float(values[row, 0])
            labels[position] = spec.labels[indices[row, 0]] if best >= options.threshold else None
            scores[position] = best
            topks[position] = [{"label": spec.labels[i], "score": float(s)} for i, s in zip(indices[row], values[row])]
            if features is not None:
                embeddings[position] = features[row]
        report_progress(len(positions))

    batch_positions: list[int] = []
    batch_pixels: list[np.ndarray] = []
    read = reader_for(shard.root, options.storage)  # None: read the file itself
    with contextlib.closing(_decode_ahead(full_paths, scorer, decode_window(options), options, read)) as decoded:
        for position in range(n):
            tick = time.perf_counter()
            result = next(decoded)
            timings["decode_wait"] += time.perf_counter() - tick
            sizes[position], mtimes[position] = result.size, result.mtime
            inodes[position], ctimes[position] = result.inode, result.ctime
            if isinstance(result, ImageDecodeError):
                errors[position] = str(result)
                continue
            widths[position], heights[position] = result.width, result.height
            hashes[position] = result.content_hash
            exif[position] = result.exif or NO_EXIF
            batch_positions.append(position)
            batch_pixels.append(result.pixels)
            if len(batch_positions) == options.batch_size:
                flush(batch_positions, batch_pixels)
                batch_positions, batch_pixels = [], []
    if batch_positions:
        flush(batch_positions, batch_pixels)
    report_progress(sum(e is not None for e in errors))

    columns = {
        "path": list(shard.paths),
        "label": labels,
        "score": scores,
        "topk": topks,
        "status": ["error" if e else "ok" for e in errors],
        "error": errors,
        "width": widths,
        "height": heights,
        "bytes": sizes,
        "mtime": mtimes,
        "inode": inodes,
        "ctime": ctimes,
        "model": [spec.id] * n,
        "unverified": [False] * n,
        "scored_at": [scored_now()] * n,
    }
    if options.embeddings:
        columns["embedding"] = embeddings
    if options.content_hash:
        columns["content_hash"] = hashes
    schema = output_schema(scorer.embedding_size, options.content_hash, options.exif)
    if options.exif:
        columns.update({name: values for name, values in exif_columns(exif).items() if name in schema.names})
    table = pa.table(columns, schema=schema)
    timings.update(build=build_seconds, total=time.perf_counter() - started, images=n, backend=scorer.backend.name)
    return table, timings
