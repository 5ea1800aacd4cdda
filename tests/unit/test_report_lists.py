"""The report's lists on canned values: the most confused pairs, the per-folder counts, the cut notes."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from batchclf.report.folders import FolderGroup, folder_groups, group_of
from batchclf.report.html import shown_note
from batchclf.report.sections import folders_section
from batchclf.report.truth import ConfusedPair, confused_pairs


def test_confused_pairs_are_the_off_diagonal_cells_by_count_with_the_share_of_the_true_label():
    counts = Counter(
        {
            ("cat", "cat"): 6,
            ("cat", "dog"): 3,
            ("cat", "fox"): 1,
            ("dog", "dog"): 1,
            ("dog", "cat"): 3,
            ("fox", "(error)"): 1,
            ("fox", "fox"): 0,
        }
    )
    assert confused_pairs(counts) == [
        ConfusedPair("dog", "cat", 3, 3 / 4),  # the same count as cat → dog, a larger share of its label
        ConfusedPair("cat", "dog", 3, 3 / 10),
        ConfusedPair("fox", "(error)", 1, 1.0),
        ConfusedPair("cat", "fox", 1, 1 / 10),
    ]
    assert confused_pairs(Counter({("cat", "cat"): 4})) == []


def _table(rows: list[tuple]) -> pa.Table:
    paths, labels, statuses = zip(*rows, strict=True)
    return pa.table({"path": list(paths), "label": list(labels), "status": list(statuses)})


RUN = _table(
    [
        ("cam0/a.jpg", "cat", "ok"),
        ("cam0/b.jpg", "cat", "ok"),
        ("cam0/2026/c.jpg", "dog", "ok"),
        ("cam0/2026/d.jpg", None, "error"),
        ("cam1/e.jpg", None, "error"),
        ("cam1/2026/01/f.jpg", "fox", "ok"),
        ("cam1/2026/01/g.jpg", "(no label)", "ok"),
        ("root.jpg", "cat", "ok"),
        ("cam10/h.jpg", "cat", "ok"),
    ]
)


def test_folder_groups_count_files_errors_and_labels_per_top_level_folder():
    assert folder_groups(RUN, 1) == [
        FolderGroup("cam0", 4, 1, [("cat", 2), ("dog", 1)]),
        FolderGroup("cam1", 3, 1, [("(no label)", 1), ("fox", 1)]),
        FolderGroup(".", 1, 0, [("cat", 1)]),
        FolderGroup("cam10", 1, 0, [("cat", 1)]),  # not cam1's: a group is whole folder names
    ]
    cam0 = folder_groups(RUN, 1)[0]
    assert (cam0.ok, cam0.error_rate) == (3, 0.25)


def test_deeper_groups_keep_the_folders_a_shallower_path_has():
    groups = {g.folder: (g.files, g.errors) for g in folder_groups(RUN, 2)}
    assert groups == {
        "cam0": (2, 0),
        "cam0/2026": (2, 1),
        "cam1": (1, 1),
        "cam1/2026": (2, 0),
        ".": (1, 0),
        "cam10": (1, 0),
    }
    assert {g.folder for g in folder_groups(RUN, 5)} == {"cam0", "cam0/2026", "cam1", "cam1/2026/01", ".", "cam10"}
    assert (group_of("", 1), group_of("a/b/c", 2), group_of("a", 3)) == (".", "a/b", "a")


def test_folder_groups_refuse_a_depth_below_one_and_take_an_empty_run():
    with pytest.raises(ValueError, match="depth must be 1 or more"):
        folder_groups(RUN, 0)
    assert folder_groups(RUN.slice(0, 0), 1) == []


def test_the_folder_table_says_how_many_folders_it_leaves_out():
    html = folders_section(folder_groups(RUN, 1), depth=1, limit=2, labels=1)
    assert '<td class="path">cam0</td>' in html and '<td class="path">cam1</td>' in html
    assert "cam10" not in html
    assert "Showing 2 of 4 folders, most files first; 2 not shown." in html
    assert 'cat 66.7% <span class="note">+1 label</span>' in html  # cam0: 2 of its 3 decoded images
    assert '<span class="failing">25.0%</span>' in html
    whole = folders_section(folder_groups(RUN, 1), depth=1, limit=10, labels=3)
    assert "4 folders, most files first." in whole and "not shown" not in whole


def test_a_note_says_when_a_list_is_cut():
    assert shown_note(30, 1000, "confused pair", "most images first") == (
        '<p class="note">Showing 30 of 1,000 confused pairs, most images first; 970 not shown.</p>'
    )
    assert shown_note(3, 3, "file", "by path") == '<p class="note">3 files, by path.</p>'
