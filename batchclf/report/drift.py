"""Compare tonight's run with a previous one: label shares, and which files are new, gone or relabelled.

Files are matched by their ``path`` (relative to each run's input root). A file's outcome is its
label, ``(no label)`` below the run's threshold, or ``(error)``; shares are taken over all files, so
a rise in failures shows up as a mover like any label.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from .run import Item, Run, label_counts

LISTED_PATHS = 1000  # paths listed per kind of change in the JSON; counts are always exact


@dataclass(frozen=True)
class LabelShift:
    label: str
    current: int
    previous: int
    current_share: float
    previous_share: float

    @property
    def change(self) -> float:
        return self.current_share - self.previous_share


@dataclass(frozen=True)
class Drift:
    current_files: int
    previous_files: int
    shifts: list[LabelShift]  # biggest movers first
    new: list[str]  # sorted paths, capped at LISTED_PATHS
    gone: list[str]
    changed: list[Item]  # sorted by path, capped at LISTED_PATHS; Item.previous is the old outcome
    confident: list[Item]  # the same kind of item, the most confident first, capped at LISTED_PATHS
    new_count: int
    gone_count: int
    changed_count: int
    roots_differ: bool

    def to_json(self) -> dict:
        return {
            "current_files": self.current_files,
            "previous_files": self.previous_files,
            "new": {"count": self.new_count, "paths": self.new},
            "gone": {"count": self.gone_count, "paths": self.gone},
            "changed": {
                "count": self.changed_count,
                "files": [
                    {
                        "path": i.path,
                        "previous": i.previous,
                        "current": i.label,
                        "previous_score": i.previous_score,
                        "score": i.score,
                    }
                    for i in self.changed
                ],
            },
            "labels": [
                {
                    "label": s.label,
                    "current": s.current,
                    "previous": s.previous,
                    "current_share": round(s.current_share, 6),
                    "previous_share": round(s.previous_share, 6),
                    "change": round(s.change, 6),
                }
                for s in self.shifts
            ],
            "input_roots_differ": self.roots_differ,
        }


def _shifts(current: pa.Table, previous: pa.Table) -> list[LabelShift]:
    now = dict(label_counts(current["outcome"]))
    before = dict(label_counts(previous["outcome"]))
    total_now, total_before = max(current.num_rows, 1), max(previous.num_rows, 1)
    shifts = [
        LabelShift(
            label,
            now.get(label, 0),
            before.get(label, 0),
            now.get(label, 0) / total_now,
            before.get(label, 0) / total_before,
        )
        for label in set(now) | set(before)
    ]
    return sorted(shifts, key=lambda s: (-abs(s.change), -s.current, s.label))


def compare_runs(current: Run, previous: Run) -> Drift:
    now, before = current.outcomes(), previous.outcomes()
    joined = now.append_column("here", pa.repeat(True, now.num_rows)).join(
        before.append_column("there", pa.repeat(True, before.num_rows)),
        keys="path",
        join_type="full outer",
        left_suffix="_now",
        right_suffix="_before",
    )
    is_new = pc.is_null(joined["there"])
    is_gone = pc.is_null(joined["here"])
    both = pc.and_(pc.invert(is_new), pc.invert(is_gone))
    differs = pc.fill_null(pc.not_equal(joined["outcome_now"], joined["outcome_before"]), True)
    is_changed = pc.and_(both, differs)

    def paths(mask) -> list[str]:
        column = joined.filter(mask)["path"]
        return pc.take(column, pc.array_sort_indices(column)[:LISTED_PATHS]).to_pylist()

    changed = joined.filter(is_changed)

    def items(order: list[tuple[str, str]]) -> list[Item]:
        rows = changed.take(pc.sort_indices(changed, order)[:LISTED_PATHS])
        columns = ["path", "outcome_now", "outcome_before", "score_now", "score_before"]
        return [
            Item(r["path"], r["outcome_now"], r["score_now"], r["outcome_before"], r["score_before"])
            for r in rows.select(columns).to_pylist()
        ]

    return Drift(
        current_files=now.num_rows,
        previous_files=before.num_rows,
        shifts=_shifts(now, before),
        new=paths(is_new),
        gone=paths(is_gone),
        changed=items([("path", "ascending")]),
        confident=items([("score_now", "descending"), ("path", "ascending")]),
        new_count=int(pc.sum(is_new).as_py() or 0),
        gone_count=int(pc.sum(is_gone).as_py() or 0),
        changed_count=int(pc.sum(is_changed).as_py() or 0),
        roots_differ=current.metadata.get("input_root") != previous.metadata.get("input_root"),
    )
