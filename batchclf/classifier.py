"""One image at a time, in this process: ``batchclf.Classifier`` and its ``Prediction``.

A ``Classifier`` is what a prediction engine is to a batch job: it resolves the model when made, builds
it on the first ``predict`` and keeps it for every later call. It scores with the very functions a
``batchclf run`` worker uses (``worker.get_scorer``, ``decode.decode_image``, ``worker.top_k``), so a
file gets the same classes and scores from both. No Dask, no Arrow: the model and its engine alone.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .config import BACKENDS, DEFAULT_MODEL, DEFAULT_TOP_K
from .errors import UsageError

_END = object()
PREDICT_BATCH_SIZE = 1  # LiteRT runs a fixed batch: one image is scored alone, not padded to a batch of 32


class Category(NamedTuple):
    """A class and its probability."""

    label: str
    score: float


@dataclass(frozen=True)
class Prediction:
    """One image's best classes, best first: what ``batchclf run`` writes in ``label``, ``score`` and ``topk``.

    ``image`` is the path given, or None for an image given in memory (a PIL image, bytes, an array).
    """

    categories: tuple[Category, ...]
    image: str | None = None

    @property
    def label(self) -> str:
        return self.categories[0].label

    @property
    def score(self) -> float:
        return self.categories[0].score

    def to_dict(self) -> dict:
        """A JSON-ready mapping, its ``topk`` as in the output's ``topk`` column."""
        return {
            "image": self.image,
            "label": self.label,
            "score": self.score,
            "topk": [{"label": c.label, "score": c.score} for c in self.categories],
        }


class Classifier:
    """Classify images in this process, with the model and preprocessing of ``batchclf run``.

    ``model`` is anything ``batchclf run --model`` takes; it is checked now (an unknown name, a file
    that is no model or labels that do not fit raise ``UsageError``) and built on the first
    ``predict``, once. ``threads``: inference threads (default: the cores this process may use).
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_MODEL,
        backend: str = "auto",
        top_k: int = DEFAULT_TOP_K,
        *,
        labels: str | os.PathLike | None = None,
        trust_model: bool = False,
        threads: int | None = None,
    ):
        from .models.registry import check_scoring_options, resolve_model

        check_options(top_k, backend, threads)
        self.top_k = top_k
        self.backend = backend
        self.threads = threads or len(os.sched_getaffinity(0))
        self.spec = resolve_model(os.fspath(model), Path(labels) if labels is not None else None, trust_model)
        check_scoring_options(self.spec, backend, None, False)
        self._scorer = None

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's class names, in its output order."""
        return self.spec.labels

    def load(self) -> Classifier:
        """Build the model now rather than on the first ``predict`` (a LiteRT conversion happens once per
        machine and is cached, see ``batchclf run``)."""
        if self._scorer is None:
            from .worker import ScoringOptions, get_scorer

            options = ScoringOptions(
                batch_size=PREDICT_BATCH_SIZE, backend=self.backend, threads=self.threads, decode_threads=self.threads
            )
            self._scorer = get_scorer(self.spec, options)
        return self

    def predict(self, images: Any) -> Prediction | list[Prediction]:
        """The top-k classes of one image, or of each image of a list (or of an ``N×H×W×3`` array).

        An image is a path (``str`` or ``os.PathLike``), the bytes of an image file, a ``PIL.Image.Image``
        or an ``H×W×3`` ``uint8`` RGB array. Paths and bytes are decoded exactly as ``batchclf run``
        decodes a file; a PIL image or an array is already decoded, so only the orientation, crop and
        resize apply (a JPEG of more than twice the input size, which the decoder first reduces in the
        DCT domain, scores slightly differently in full: a near tie may change places).

        A missing file raises ``FileNotFoundError``; an image that cannot be decoded
        ``batchclf.ImageDecodeError``, whose message is the ``error`` column's (and whose ``image`` is
        the path); an array of another shape or type ``ValueError``; anything else ``TypeError``.
        """
        self.load()
        if _is_batch(images):
            return [self._score(item, pixels) for item, pixels in self._decode_ahead(images)]
        return self._score(images, self._pixels(images))  # decoded in this thread: no hand-over to wait for

    def _score(self, image, pixels) -> Prediction:
        from .worker import top_k

        probabilities, _ = self._scorer.backend.predict(pixels[None])
        indices, values = top_k(probabilities, self.top_k, None)
        categories = tuple(Category(self.spec.labels[i], float(s)) for i, s in zip(indices[0], values[0]))
        return Prediction(categories, os.fspath(image) if _is_path(image) else None)

    def _decode_ahead(self, images) -> Iterator[tuple[Any, Any]]:
        """Each image with its model input, decoded in the scorer's pool a few images ahead of inference."""
        pool = self._scorer.decode_pool
        source = iter(images)
        pending = deque((item, pool.submit(self._pixels, item)) for item in itertools.islice(source, 2 * self.threads))
        try:
            while pending:
                item, future = pending.popleft()
                following = next(source, _END)
                if following is not _END:
                    pending.append((following, pool.submit(self._pixels, following)))
                yield item, future.result()
        finally:
            for _, future in pending:
                future.cancel()

    def _pixels(self, image: Any):
        """One image as the model's ``S×S×3`` ``uint8`` input (see ``predict`` for what an image may be)."""
        import numpy as np
        from PIL import Image

        from .decode import FileContent, ImageDecodeError, check_pixel_limit, decode_image, exif_orientation
        from .decode import model_input as prepared

        preprocessing = self._scorer.preprocessing
        if _is_path(image):
            path = os.fspath(image)
            if not os.path.exists(path):
                raise FileNotFoundError(2, "no such image file", path)
            try:
                return decode_image(path, preprocessing).pixels
            except ImageDecodeError as error:
                error.image = path  # which one, when a list was given
                raise
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            return decode_image("<bytes>", preprocessing, read=lambda _: FileContent(data, len(data), 0)).pixels
        if isinstance(image, Image.Image):
            check_pixel_limit(image)
            return prepared(image, preprocessing, exif_orientation(image))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
                raise ValueError(
                    f"an image array must be H×W×3 uint8 RGB (or N×H×W×3 for several), "
                    f"got shape {image.shape} and dtype {image.dtype}"
                )
            return prepared(Image.fromarray(image, "RGB"), preprocessing)
        raise TypeError(
            f"cannot classify a {type(image).__name__}: give a path, the bytes of an image file, a PIL image "
            "or an H×W×3 uint8 array (or a list of them)"
        )


def check_options(top_k: Any, backend: Any, threads: Any = None) -> None:
    """Refuse what ``Classifier`` cannot honour, naming the argument, before any model is read."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UsageError(f"top_k must be a positive whole number, got {top_k!r}")
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a positive whole number, got {threads!r}")


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def _is_batch(images: Any) -> bool:
    """A list or tuple of images, or an N×H×W×3 array."""
    if isinstance(images, (list, tuple)):
        return True
    return getattr(images, "ndim", None) == 4 and type(images).__module__ == "numpy"
