"""Labelled images for training and evaluation: a ``tags.tsv`` or a folder of class folders.

Structural problems (a malformed line, a missing file, a class with one image, a single class) stop
here, before any image is decoded, with a message naming the file and line. Unreadable images are
found later, when features are extracted, and are skipped and counted rather than fatal.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..discover import walk_images
from ..errors import UsageError


@dataclass(frozen=True)
class LabelledImages:
    """Images and their labels; ``paths`` are absolute, ``lines`` say where each one was declared."""

    source: Path
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    lines: tuple[str, ...]  # "tags.tsv line 3" or the class folder, for messages

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.labels)))

    def described(self) -> dict[str, str]:
        """Each path as a message names it: with the tags.tsv line that gave it (a class folder's image
        is named by its path alone)."""
        if self.source.is_dir():
            return {path: path for path in self.paths}
        return {path: f"{path} ({where})" for path, where in zip(self.paths, self.lines)}

    def subset(self, indices) -> LabelledImages:
        keep = [int(i) for i in indices]
        return LabelledImages(
            self.source,
            tuple(self.paths[i] for i in keep),
            tuple(self.labels[i] for i in keep),
            tuple(self.lines[i] for i in keep),
        )


def read_dataset(source: Path, images: Path | None = None, images_option: str = "--images") -> LabelledImages:
    """Read ``source``: a TSV of ``image_path<TAB>label`` lines, or a folder with one sub-folder per class.

    ``images_option`` names the option that gave ``images``, for the messages.
    """
    if images is not None and not images.is_dir():
        raise UsageError(f"{images_option} {images} is not a folder; give the folder the TSV paths are relative to")
    if source.is_dir():
        if images is not None:
            raise UsageError(
                f"{images_option} only applies to a TSV file; a folder of class folders holds its own images"
            )
        return _read_class_folders(source)
    if source.is_file():
        return _read_tsv(source, images or source.resolve().parent)
    raise UsageError(f"{source} does not exist; give a tags.tsv (image_path<TAB>label) or a folder of class folders")


@dataclass(frozen=True)
class Tag:
    """One line of a tags.tsv: the image path as written (relative to the file's folder, or absolute)."""

    path: str
    label: str
    line: int


def read_tags(tsv: Path, name: str | None = None) -> Iterator[Tag]:
    """The ``image_path<TAB>label`` lines of ``tsv``, in file order; the one reader of the format.

    UTF-8 (a byte-order mark is fine), no header; lines end with LF, CRLF or CR, so line numbers are
    an editor's. Blank lines and lines whose first non-blank character is ``#`` are skipped (write
    ``./#1.jpg`` for a file whose name starts with ``#``). A line splits at its *last* tab: a file
    name may hold a tab, a label may not, so no valid line is mis-read. Trailing whitespace ends the
    line and spaces around the path and the label are ignored. A path given twice keeps its first
    line; given two labels, it is refused. ``name`` is how messages call the file (default: its path).

    Lines are checked as they are yielded, so a caller's own checks of each line (does the image
    exist?) and these stop at the first problem in file order.
    """
    name = name or str(tsv)
    try:
        with open(tsv, encoding="utf-8-sig", newline=None) as stream:
            text = stream.read()
    except FileNotFoundError:
        raise UsageError(f"{name} does not exist; give a tags.tsv with one image_path<TAB>label a line") from None
    except UnicodeDecodeError:
        raise UsageError(f"{name} is not UTF-8 text; save it as UTF-8 with one image_path<TAB>label a line") from None
    except OSError as error:
        raise UsageError(f"cannot read {name}: {error.strerror}") from None
    seen: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip()
        if not line or line.lstrip().startswith("#"):
            continue
        path, tab, label = line.rpartition("\t")
        path, label = path.strip(), label.strip()
        if not tab or not path or not label:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise UsageError(f"{name} line {number}: expected 'image_path<TAB>label', got {shown!r}")
        key = os.path.normpath(path)
        if key in seen:
            previous_label, previous_line = seen[key]
            if label != previous_label:
                raise UsageError(
                    f"{name} line {number}: {path} is labelled {label!r} here but {previous_label!r} at line "
                    f"{previous_line}; give each image one label"
                )
            continue
        seen[key] = (label, number)
        yield Tag(path, label, number)


def _read_tsv(tsv: Path, image_root: Path) -> LabelledImages:
    root = image_root.resolve()
    paths, labels, lines = [], [], []
    for tag in read_tags(tsv):
        where = f"{tsv} line {tag.line}"
        path = os.path.normpath(os.path.join(root, tag.path))
        if not os.path.exists(path) or os.path.isdir(path):  # a FIFO or a device is there: skipped as unreadable
            hint = "; a line splits at its last tab" if "\t" in tag.path else ""
            shown = repr(tag.path) if "\t" in tag.path else tag.path
            raise UsageError(
                f"{where}: image {shown} not found in {image_root}{hint}; fix the path or pass --images DIR"
            )
        paths.append(path)
        labels.append(tag.label)
        lines.append(where)
    if not paths:
        raise UsageError(f"{tsv} lists no images; write one image_path<TAB>label a line")
    return LabelledImages(tsv, tuple(paths), tuple(labels), tuple(lines))


def _read_class_folders(folder: Path) -> LabelledImages:
    root = folder.resolve()
    paths, labels, lines = [], [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        for relative in walk_images(Path(entry.path)):
            paths.append(os.path.join(entry.path, relative))
            labels.append(entry.name)
            lines.append(f"{folder}/{entry.name}")
    if not paths:
        raise UsageError(
            f"{folder} has no class folders with images; give one sub-folder of images per class, or a tags.tsv file"
        )
    return LabelledImages(folder, tuple(paths), tuple(labels), tuple(lines))


def check_trainable(data: LabelledImages, what: str = "training data") -> None:
    """Refuse data a classifier cannot be trained on: one class, or a class with a single image."""
    counts = Counter(data.labels)
    if len(counts) < 2:
        found = f"only the class {next(iter(counts))!r}" if counts else "no images"
        raise UsageError(f"{what} {data.source} has {found}; a classifier needs at least two classes")
    single = sorted(label for label, count in counts.items() if count == 1)
    if single:
        where = data.lines[data.labels.index(single[0])]
        raise UsageError(
            f"{where}: label {single[0]!r} has a single image in the {what}; give every class at "
            "least two images (or remove it)"
        )


def check_known_labels(test: LabelledImages, classes: tuple[str, ...]) -> None:
    unknown = sorted(set(test.labels) - set(classes))
    if unknown:
        where = test.lines[test.labels.index(unknown[0])]
        raise UsageError(f"{where}: label {unknown[0]!r} is not one of the trained classes ({', '.join(classes)})")


def stratified_split(data: LabelledImages, test_fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
    """Split each class in the same proportion, reproducibly for ``seed``; every class keeps a training image."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in data.classes:
        members = np.array([i for i, lab in enumerate(data.labels) if lab == label])
        members = members[rng.permutation(len(members))]
        count = min(len(members) - 1, int(round(test_fraction * len(members))))
        test.extend(members[:count])
        train.extend(members[count:])
    return data.subset(sorted(train)), data.subset(sorted(test))


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Indices of ``folds`` validation folds, each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=int)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        assignment[members] = np.arange(len(members)) % folds
    return [np.flatnonzero(assignment == k) for k in range(folds)]


def data_fingerprint(digests: list[str], labels: list[str]) -> str:
    """A hash of the (content, label) pairs, independent of file names and order."""
    digest = hashlib.sha256()
    for content, label in sorted(zip(digests, labels)):
        digest.update(f"{content}\t{label}\n".encode())
    return digest.hexdigest()[:24]
