"""Per-folder figures: files, errors and label mix of each folder under the input root.

A nightly input is often one folder per source (``cam0/``, ``cam1/``, ``2026/01/``): a camera that
fails, or a source whose pictures change, shows up here before it moves the totals. A group is the
first ``depth`` folders of a path; a file directly under the root (or with fewer folders than
``depth``) is grouped by the folders it has, the root itself being ``.``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

ROOT_GROUP = "."  # never a folder name in a path text, so no folder is mistaken for the root


@dataclass(frozen=True)
class FolderGroup:
    folder: str  # path text of the group's folder, relative to the input root
    files: int
    errors: int
    labels: list[tuple[str, int]]  # predicted labels of the files that decoded, most frequent first

    @property
    def ok(self) -> int:
        return self.files - self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.files if self.files else 0.0

    def to_json(self, labels: int) -> dict:
        return {
            "folder": self.folder,
            "files": self.files,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "labels": [
                {"label": label, "count": count, "share": round(count / self.ok, 6)}
                for label, count in self.labels[:labels]
            ],
        }


def group_of(folder: str, depth: int) -> str:
    """The group of a file in ``folder`` (a path text; ``""``: the root)."""
    return "/".join(folder.split("/")[:depth]) if folder else ROOT_GROUP


def folder_groups(table: pa.Table, depth: int) -> list[FolderGroup]:
    """The groups of a run's rows (``path``, ``label``, ``status``), most files first, ties by name.

    Arrow does the counting: each distinct folder is mapped to its group once, then rows are counted by
    group, status and label, so a million rows in a few thousand folders cost a few group-bys.
    """
    if depth < 1:
        raise ValueError(f"depth must be 1 or more, got {depth}")
    if table.num_rows == 0:
        return []
    # split at the last "/" (three times faster than a regular expression): [folder, name], or [name]
    parts = pc.split_pattern(table["path"], "/", max_splits=1, reverse=True)
    folders = pc.if_else(pc.equal(pc.list_value_length(parts), 2), pc.list_element(parts, 0), "")
    distinct = pc.unique(folders)
    names = pa.array([group_of(folder, depth) for folder in distinct.to_pylist()], pa.string())
    groups = pc.take(names, pc.index_in(folders, value_set=distinct))
    rows = pa.table({"group": groups, "status": table["status"], "label": table["label"]})
    counted = rows.group_by(["group", "status", "label"]).aggregate([("group", "count")])
    files: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    labels: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)
    for row in counted.to_pylist():
        group, images = row["group"], row["group_count"]
        files[group] += images
        if row["status"] == "ok":
            labels[group].append((row["label"], images))
        else:
            errors[group] += images
    result = [
        FolderGroup(group, count, errors[group], sorted(labels[group], key=lambda pair: (-pair[1], pair[0])))
        for group, count in files.items()
    ]
    return sorted(result, key=lambda g: (-g.files, g.folder))
