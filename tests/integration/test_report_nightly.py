"""``batchclf report`` for the nightly case: the Changes first with their paths, the most confused pairs
of a thousand-class truth, the per-folder table, and a note wherever a list is cut."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import save_image
from test_report import report, write_run

from batchclf.report import ReportConfig, build_report


def section(page: str, name: str) -> str:
    start = page.index(f'<section id="{name}">')
    return page[start : page.index("</section>", start)]


def listed_paths(html: str, heading: str) -> list[str]:
    """The paths of the list under ``<h3>heading``, in page order."""
    part = html[html.index(f"<h3>{heading}") :]
    part = part[: part.find("<h3>", 4)] if "<h3>" in part[4:] else part
    return re.findall(r'<td class="path">([^<]*)</td>', part)


@pytest.fixture
def nightly(tmp_path) -> tuple[Path, Path, Path]:
    """Last night and tonight over cam0/ and cam1/: 3 files relabelled (one now fails), 5 new, 4 gone."""
    root = tmp_path / "images"
    before = [(f"cam0/{i:02}.jpg", "cat", 0.9) for i in range(10)] + [
        (f"cam1/{i:02}.jpg", "dog", 0.8) for i in range(10)
    ]
    before += [(f"old/{i}.jpg", "bird", 0.7) for i in range(4)]
    after = [row for row in before if not row[0].startswith("old/")]
    after[1] = ("cam0/01.jpg", "dog", 0.61)
    after[4] = ("cam0/04.jpg", "fox", 0.95)
    after[12] = ("cam1/02.jpg", None, None, "error", "cannot decode: truncated")
    after += [(f"cam2/{i}.jpg", "fish", 0.5) for i in range(5)]
    for name in ("cam0/01.jpg", "cam0/04.jpg"):
        save_image(root / name, size=(160, 120), color=(20, 140, 60))
    return (
        write_run(tmp_path / "before.parquet", root, before),
        write_run(tmp_path / "after.parquet", root, after),
        root,
    )


def test_changes_come_first_and_list_exactly_the_changed_new_and_gone_paths(nightly, tmp_path):
    previous, current, _ = nightly
    page, document = report(current, tmp_path / "r.html", compare=previous, json=tmp_path / "r.json")
    order = re.findall(r'<section id="(\w+)"', page)
    assert order[:3] == ["summary", "changes", "labels"] and order.index("folders") > order.index("changes")
    changes = section(page, "changes")
    assert listed_paths(changes, "Changed label") == ["cam0/01.jpg", "cam0/04.jpg", "cam1/02.jpg"]
    assert (
        '<td class="path">cam0/01.jpg</td><td>cat</td><td class="n">0.900</td><td>dog</td><td class="n">0.610</td>'
    ) in changes
    assert (
        '<td class="path">cam1/02.jpg</td><td>dog</td><td class="n">0.800</td><td>(error)</td><td class="n">–</td>'
        in (changes)
    )
    assert listed_paths(changes, "New files") == [f"cam2/{i}.jpg" for i in range(5)]
    assert listed_paths(changes, "Gone") == [f"old/{i}.jpg" for i in range(4)]
    assert "3 changed files, by path." in changes and "not shown" not in changes
    # the thumbnails of the changes, most confident first: two images on disk, one missing file
    gallery = changes[changes.index("Changed predictions") :]
    assert gallery.count("<img ") == 2 and gallery.index("cat → fox") < gallery.index("cat → dog")
    files = {f["path"]: (f["previous_score"], f["score"]) for f in document["drift"]["changed"]["files"]}
    assert files["cam0/01.jpg"] == (pytest.approx(0.9), pytest.approx(0.61)) and files["cam1/02.jpg"][1] is None


def test_a_cut_changes_list_says_how_many_are_not_shown(nightly, tmp_path):
    previous, current, _ = nightly
    config = ReportConfig(current, tmp_path / "r.html", compare=previous, listed=2, gallery=1)
    build_report(config)
    changes = section(config.report.read_text(), "changes")
    assert listed_paths(changes, "Changed label") == ["cam0/01.jpg", "cam0/04.jpg"]
    assert listed_paths(changes, "New files") == ["cam2/0.jpg", "cam2/1.jpg"]
    assert listed_paths(changes, "Gone") == ["old/0.jpg", "old/1.jpg"]
    assert "Showing 2 of 3 changed files, by path; 1 not shown (--json lists up to 1,000)." in changes
    assert "Showing 2 of 5 new files, by path; 3 not shown" in changes
    assert "Showing 2 of 4 gone files, by path; 2 not shown" in changes
    assert "Showing 1 of 3 changed files, most confident first; 2 not shown." in changes


def test_folders_count_files_errors_and_labels_per_folder(nightly, tmp_path):
    _, current, root = nightly
    page, document = report(current, tmp_path / "r.html", json=tmp_path / "r.json")
    groups = {g["folder"]: (g["files"], g["errors"], g["labels"][0]["label"]) for g in document["folders"]["groups"]}
    assert groups == {"cam0": (10, 0, "cat"), "cam1": (10, 1, "dog"), "cam2": (5, 0, "fish")}
    folders = section(page, "folders")
    assert re.findall(r'<td class="path">([^<]*)</td>', folders) == ["cam0", "cam1", "cam2"]
    cam1 = folders[folders.index(">cam1<") :]
    assert cam1.startswith(
        '>cam1</td><td class="n">10</td><td class="n"><span class="failing">1</span></td>'
        '<td class="n"><span class="failing">10.0%</span></td><td>dog 100.0%</td>'
    )
    assert 'cam0</td><td class="n">10</td><td class="n">0</td><td class="n">0.0%</td><td>cat 80.0% · dog 10.0%' in (
        folders
    )
    assert "3 folders, most files first." in folders
    config = ReportConfig(current, tmp_path / "cut.html", folders=1)
    build_report(config)
    assert "Showing 1 of 3 folders, most files first; 2 not shown." in section(config.report.read_text(), "folders")


def test_group_depth_groups_by_deeper_folders(tmp_path):
    rows = [("a/x/1.jpg", "cat", 0.9), ("a/x/2.jpg", "cat", 0.9), ("a/y/3.jpg", "dog", 0.9), ("top.jpg", "cat", 0.9)]
    output = write_run(tmp_path / "out.parquet", tmp_path, rows)
    _, document = report(output, tmp_path / "r.html", group_depth=2, json=tmp_path / "r.json")
    groups = {g["folder"]: g["files"] for g in document["folders"]["groups"]}
    assert groups == {"a/x": 2, "a/y": 1, ".": 1} and document["folders"]["group_depth"] == 2


def test_truth_lists_the_most_confused_pairs_and_says_the_matrix_is_not_drawn(tmp_path):
    """40 classes of 3 images: the third is predicted as the next class, but for two known mistakes."""
    root = tmp_path / "images"
    root.mkdir()
    rows, tags = [], []
    for i in range(40):
        label, following = f"c{i:02}", f"c{(i + 1) % 40:02}"
        for name, guess in (("a", label), ("b", label), ("c", following)):
            rows.append((f"{label}/{name}.jpg", guess, 0.9))
            tags.append(f"{label}/{name}.jpg\t{label}")
    rows += [(f"c05/extra{i}.jpg", "c06", 0.8) for i in range(4)]  # c05 → c06: 5 of its 7 images
    tags += [f"c05/extra{i}.jpg\tc05" for i in range(4)]
    rows[7 * 3 + 2] = ("c07/c.jpg", None, None, "error", "cannot decode")  # c07 → (error): 2 of its 4 images
    rows.append(("c07/d.jpg", None, None, "error", "cannot decode"))
    tags.append("c07/d.jpg\tc07")
    (root / "tags.tsv").write_text("\n".join(tags) + "\n")
    output = write_run(tmp_path / "out.parquet", root, rows)
    page, document = report(output, tmp_path / "r.html", truth=root / "tags.tsv", json=tmp_path / "r.json")
    pairs = [(p["actual"], p["predicted"], p["count"]) for p in document["truth"]["confused"]["pairs"]]
    assert document["truth"]["confused"]["count"] == 40
    assert pairs[:4] == [("c05", "c06", 5), ("c07", "(error)", 2), ("c00", "c01", 1), ("c01", "c02", 1)]
    assert ("c05", "c06", 1) not in pairs and ("c07", "c08", 1) not in pairs
    truth = section(page, "truth")
    assert re.findall(r"<tr><td>(c\d\d)</td><td>([^<]+)</td><td class=\"n\">(\d+)</td>", truth)[:3] == [
        ("c05", "c06", "5"),
        ("c07", "(error)", "2"),
        ("c00", "c01", "1"),
    ]
    assert '<td class="n">71.4%</td>' in truth and '<td class="n">50.0%</td>' in truth
    assert "Showing 30 of 40 confused pairs, most images first; 10 not shown." in truth
    assert "Not drawn: 40 true labels are more than the 30" in truth and "<title>Confusion matrix" not in truth
    assert "40 labels, worst F1 first." in truth and truth.count("<tr><td>c") == 30 + 40
