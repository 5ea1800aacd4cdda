"""``batchclf report``: the page over real runs (checked in headless Chromium), drift, known labels, caps."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import save_image
from PIL import Image, ImageStat

import batchclf
from batchclf import cli, writer
from batchclf.report import ReportConfig, build_report
from batchclf.report.thumbnails import THUMBNAIL_SIZE, make_thumbnail

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def write_run(path: Path, root: Path, rows: list[tuple], model: str = "test-model", seconds: float = 2.0) -> Path:
    """A synthetic output: rows are (path, label, score) or (path, None, None, "error", message)."""
    records = []
    for row in rows:
        relative, label, score, status, error = (*row, "ok", None) if len(row) == 3 else row
        records.append(
            {
                "path": relative,
                "label": label,
                "score": score,
                "topk": [],
                "status": status,
                "error": error,
                "width": None,
                "height": None,
                "bytes": None,
                "mtime": None,
                "model": model,
            }
        )
    ok = sum(1 for r in records if r["status"] == "ok")
    metadata = {
        "model": model,
        "batchclf_version": batchclf.__version__,
        "run_time": "2026-01-02T03:04:05Z",
        "input_root": str(root),
        "files": len(records),
        "ok": ok,
        "errors": len(records) - ok,
        "seconds": seconds,
    }
    schema = writer.output_schema().with_metadata({writer.METADATA_KEY: json.dumps(metadata).encode()})
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    return path


def report(output: Path, html: Path, **options) -> tuple[str, dict | None]:
    """Build through the command line, as a user would; return the page and the JSON (if asked for)."""
    args = [str(output), str(html)]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    assert cli.main(["report", *args]) == 0
    document = json.loads(Path(options["json"]).read_text()) if "json" in options else None
    return html.read_text(encoding="utf-8"), document


# --- two real runs that differ by known files ------------------------------------------------------


@pytest.fixture(scope="module")
def real_runs(datasets, tmp_path_factory):
    """Last night's run over imagenet_objects, and tonight's over a copy with known edits.

    Tonight: two files removed, one added, toaster.jpg replaced by a pizza photo (label changes) and
    coffeepot2.jpg replaced by text (becomes an error). Nothing else differs, so the drift is known.
    """
    base = tmp_path_factory.mktemp("runs")
    source = datasets / "imagenet_objects"
    tonight = base / "tonight"
    shutil.copytree(source, tonight)
    (tonight / "broccoli.png").unlink()
    (tonight / "canoe2.jpg").unlink()
    shutil.copy(source / "pizza.jpg", tonight / "toaster.jpg")
    (tonight / "coffeepot2.jpg").write_text("not an image")
    (tonight / "extra").mkdir()
    shutil.copy(source / "teddy3.jpg", tonight / "extra" / "bear.jpg")
    previous = base / "previous.parquet"
    current = base / "current.parquet"
    batchclf.classify(source, output=previous, workers=1)
    batchclf.classify(tonight, output=current, workers=1)
    return previous, current, tonight


def test_compare_real_runs_reports_exactly_the_known_differences(real_runs, tmp_path):
    previous, current, _ = real_runs
    page, document = report(current, tmp_path / "r.html", compare=previous, json=tmp_path / "r.json")
    drift = document["drift"]
    assert drift["new"] == {"count": 1, "paths": ["extra/bear.jpg"]}
    assert drift["gone"] == {"count": 2, "paths": ["broccoli.png", "canoe2.jpg"]}
    changed = {f["path"]: (f["previous"], f["current"]) for f in drift["changed"]["files"]}
    assert changed == {"coffeepot2.jpg": ("coffeepot", "(error)"), "toaster.jpg": ("toaster", "pizza")}
    assert drift["changed"]["count"] == 2
    assert (drift["previous_files"], drift["current_files"]) == (19, 18)
    shares = {s["label"]: s for s in drift["labels"]}
    assert shares["toaster"]["previous"] == 3 and shares["toaster"]["current"] == 2
    assert shares["(error)"]["previous"] == 0 and shares["(error)"]["current"] == 1
    changes = [abs(s["change"]) for s in drift["labels"]]
    assert changes == sorted(changes, reverse=True)
    assert 'id="changes"' in page and "toaster → pizza" in page and "coffeepot → (error)" in page


def test_report_over_real_run_loads_cleanly_in_headless_chromium(real_runs, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium not installed: apt-get install -y chromium chromium-driver")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the 'test' extra)")
    previous, current, tonight = real_runs  # tonight's folder kept the copy of tags.tsv
    html = tmp_path / "report.html"
    page_text, document = report(current, html, compare=previous, truth=tonight / "tags.tsv", json=tmp_path / "r.json")
    assert document["summary"]["errors"] == 1 and document["truth"]["matched"] == 17

    problems, outside = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto(html.as_uri(), wait_until="load")
            widths = page.evaluate("Array.from(document.images, i => i.complete ? i.naturalWidth : 0)")
            charts = page.evaluate("document.querySelectorAll('svg.chart').length")
            sections = page.evaluate("Array.from(document.querySelectorAll('section'), s => s.id)")
            tops = {name: page.locator(f"#{name}").bounding_box()["y"] for name in ("changes", "labels", "folders")}
            listed = page.locator("#changes td.path").all_inner_texts()
            folders = page.locator("#folders table tr").count()
            pairs = page.locator("#truth h3:has-text('Most confused pairs') + table tr").count()
            visible = [page.locator(f"#{name}").is_visible() for name in ("changes", "folders", "truth")]
            shots = {}
            for name in ("changes", "folders", "truth"):
                shots[name] = tmp_path / f"{name}.png"
                page.locator(f"#{name}").screenshot(path=str(shots[name]))
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == [] and outside == []
    assert len(widths) == page_text.count("<img ") and len(widths) >= 18
    assert all(w > 0 for w in widths), widths
    assert charts == 4  # labels, scores, movers, confusion matrix
    assert sections == ["summary", "changes", "labels", "folders", "scores", "sheets", "low", "errors", "truth"]
    assert visible == [True, True, True] and tops["changes"] < tops["labels"] < tops["folders"]
    # changed (by path), then new, then gone: the known edits of tonight's folder
    assert listed == ["coffeepot2.jpg", "toaster.jpg", "extra/bear.jpg", "broccoli.png", "canoe2.jpg"]
    assert folders == 1 + 2  # a header, the root's 17 files and extra/
    assert pairs >= 1 + 2  # a header, toaster → pizza and coffeepot → (error) at least
    for name, path in shots.items():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(path) as image:
            assert image.width >= 600 and image.height >= 100, (name, image.size)
            assert len(image.convert("L").getcolors(1 << 16)) > 20, name
    with Image.open(shot) as image:
        pixels = image.convert("L")
        assert image.height > 2000 and len(pixels.getcolors()) > 50 and ImageStat.Stat(pixels).stddev[0] > 10


# --- synthetic runs --------------------------------------------------------------------------------


def test_compare_counts_new_gone_and_changed_files_exactly(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    before = [(f"keep/{i:03}.jpg", "cat" if i % 2 else "dog", 0.9) for i in range(100)]
    before += [(f"old/{i}.jpg", "bird", 0.8) for i in range(7)]
    after = [
        (p, "dog" if p in {"keep/001.jpg", "keep/003.jpg", "keep/005.jpg"} else lb, s) for p, lb, s in before[:100]
    ]
    after[10] = ("keep/010.jpg", None, None, "error", "cannot decode: truncated")
    after += [(f"new/{i}.jpg", "fish", 0.7) for i in range(5)]
    previous = write_run(tmp_path / "before.parquet", root, before)
    current = write_run(tmp_path / "after.parquet", root, after)
    _, document = report(current, tmp_path / "r.html", compare=previous, json=tmp_path / "r.json")
    drift = document["drift"]
    assert drift["new"]["paths"] == [f"new/{i}.jpg" for i in range(5)] and drift["new"]["count"] == 5
    assert drift["gone"]["paths"] == [f"old/{i}.jpg" for i in range(7)] and drift["gone"]["count"] == 7
    assert [(f["path"], f["previous"], f["current"]) for f in drift["changed"]["files"]] == [
        ("keep/001.jpg", "cat", "dog"),
        ("keep/003.jpg", "cat", "dog"),
        ("keep/005.jpg", "cat", "dog"),
        ("keep/010.jpg", "dog", "(error)"),
    ]
    movers = [s["label"] for s in drift["labels"]]
    assert movers[0] == "bird" and set(movers) == {"bird", "cat", "dog", "fish", "(error)"}
    fish = next(s for s in drift["labels"] if s["label"] == "fish")
    assert fish["current_share"] == pytest.approx(5 / 105) and fish["previous_share"] == 0


def test_truth_gives_confusion_matrix_and_per_class_metrics(tmp_path):
    root = tmp_path / "data" / "images"
    root.mkdir(parents=True)
    rows = [
        ("a.jpg", "cat", 0.9),
        ("b.jpg", "dog", 0.8),
        ("sub/c.jpg", "dog", 0.7),
        ("d.jpg", "dog", 0.6),
        ("e.jpg", "cat", 0.4),
        ("f.jpg", "cat", 0.9),
    ]
    output = write_run(tmp_path / "out.parquet", root, rows)
    tsv = tmp_path / "data" / "tags.tsv"
    tsv.write_bytes(
        b"images/a.jpg\tcat\r\nimages/b.jpg\tcat  \r\n\r\nimages/sub/c.jpg\tdog\t \n./images/d.jpg\tdog\n"
        b"images/e.jpg\tdog\n   \nimages/missing.jpg\tdog\nelsewhere.jpg\tcat\n"
    )
    page, document = report(output, tmp_path / "r.html", truth=tsv, json=tmp_path / "r.json")
    truth = document["truth"]
    assert truth["matched"] == 5 and truth["unmatched_truth"] == 1 and truth["unlabelled_rows"] == 1
    assert truth["accuracy"] == pytest.approx(3 / 5)
    metrics = {c["label"]: c for c in truth["classes"]}
    assert (metrics["cat"]["precision"], metrics["cat"]["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert metrics["dog"]["precision"] == pytest.approx(2 / 3) and metrics["dog"]["f1"] == pytest.approx(2 / 3)
    assert truth["confusion"] == {"rows": ["dog", "cat"], "columns": ["dog", "cat"], "counts": [[2, 1], [1, 1]]}
    assert 'id="truth"' in page and "outside the input root" in page


def test_truth_paths_are_matched_in_the_runs_spelling_through_a_linked_root(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    rows = [("back\\\\slash.jpg", "cat", 0.9), ("..dots.jpg", "dog", 0.8), ("plain.jpg", "cat", 0.7)]
    output = write_run(tmp_path / "out.parquet", tmp_path / "linked", rows)  # path text of back\\slash.jpg
    tsv = real / "tags.tsv"
    tsv.write_text("back\\slash.jpg\tcat\n..dots.jpg\tcat\nplain.jpg\tcat\n../up.jpg\tcat\n")
    _, document = report(output, tmp_path / "r.html", truth=tsv, json=tmp_path / "r.json")
    truth = document["truth"]
    assert truth["matched"] == 3 and truth["unmatched_truth"] == 0 and truth["unlabelled_rows"] == 0
    assert truth["accuracy"] == pytest.approx(2 / 3)


def test_missing_and_unreadable_images_are_placeholders_and_text_is_escaped(tmp_path):
    root = tmp_path / "images"
    save_image(root / "ok.jpg", size=(300, 200))
    save_image(root / "a&b <x>.png", size=(40, 40), mode="RGBA", color=(0, 0, 255, 128))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rows = [
        ("ok.jpg", "<script>alert(1)</script>", 0.9),
        ("a&b <x>.png", "cat", 0.8),
        ("gone.jpg", "cat", 0.3),
        ("broken.jpg", "cat", 0.2),
        ("bad.jpg", None, None, "error", "cannot decode: <eof>"),
    ]
    page, _ = report(write_run(tmp_path / "out.parquet", root, rows), tmp_path / "r.html")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'alt="a&amp;b &lt;x&gt;.png"' in page and "cannot decode: &lt;eof&gt;" in page
    assert page.count('<div class="ph">missing</div>') == 2  # in its contact sheet and the low-confidence gallery
    assert page.count('<div class="ph">unreadable</div>') == 2
    assert page.count("<img ") == 2 + 0  # ok.jpg and the PNG, each in one contact sheet; not low-confidence
    assert "2026-01-02T03:04:05Z" in page and "test-model" in page and "2.5 images/s" in page


def test_root_option_overrides_the_recorded_input_root(tmp_path):
    root = tmp_path / "moved"
    save_image(root / "x.jpg")
    output = write_run(tmp_path / "out.parquet", tmp_path / "was-here", [("x.jpg", "cat", 0.9)])
    without, _ = report(output, tmp_path / "a.html")
    assert "<img " not in without and "is not here" in without
    moved, _ = report(output, tmp_path / "b.html", root=root)
    assert moved.count("<img ") == 1 and "is not here" not in moved


def test_thumbnails_and_listings_are_capped(tmp_path):
    root = tmp_path / "images"
    save_image(root / "one.jpg")
    rows = [(f"{i:05}.jpg", f"label{i % 40:02}", (i % 100) / 100) for i in range(4000)]
    rows += [(f"e{i:04}.jpg", None, None, "error", "cannot decode") for i in range(300)]
    output = write_run(tmp_path / "out.parquet", root, rows)
    config = ReportConfig(output, tmp_path / "r.html", top=10, per_label=8, gallery=20, max_thumbnails=70)
    summary = build_report(config)
    page = config.report.read_text()
    figures = page.count('<figure class="t"')
    assert figures <= 70 and page.count("<h3>") == 6  # 20 low-confidence + 6 sheets of 8; the 7th would not fit
    assert "34 less frequent labels have no contact sheet" in page
    assert "other (30 labels)" in page and "Showing the first 200 of 300 files" in page
    assert "Showing the 20 least confident of 2,000 predictions" in page
    assert summary.bytes < 300_000 and summary.rows == 4300


def test_thumbnail_handles_modes_orientation_and_bad_files(tmp_path):
    big = save_image(tmp_path / "big.jpg", size=(2000, 1000))
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (400, 200), (10, 200, 10)).save(rotated, exif=exif)
    deep = tmp_path / "deep.png"
    Image.new("I;16", (50, 30), 40000).save(deep)
    for path, size in ((big, (THUMBNAIL_SIZE, THUMBNAIL_SIZE // 2)), (rotated, (THUMBNAIL_SIZE // 2, THUMBNAIL_SIZE))):
        thumbnail = make_thumbnail(str(path))
        assert thumbnail.uri.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(thumbnail.uri.split(",", 1)[1]))) as image:
            assert image.size == size
    with Image.open(io.BytesIO(base64.b64decode(make_thumbnail(str(deep)).uri.split(",", 1)[1]))) as image:
        assert abs(image.convert("L").getpixel((10, 10)) - round(40000 / 65535 * 255)) <= 3  # scaled, not clipped
    (tmp_path / "text.jpg").write_text("hello")
    assert make_thumbnail(str(tmp_path / "text.jpg")).problem == "unreadable"
    assert make_thumbnail(str(tmp_path / "nope.jpg")).problem == "missing"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "{html}"], "does not exist"),
        (["{text}", "{html}"], "is not a Parquet file"),
        (["{output}", "{html}", "--low", "2"], "--low must be between 0 and 1"),
        (["{output}", "{html}", "--compare", "{missing}"], "--compare"),
        (["{output}", "{html}", "--truth", "{missing}"], "--truth"),
        (["{output}", "{tmp}"], "is a folder"),
        (["{output}", "{html}", "--group-depth", "0"], "--group-depth must be 1 or more"),
        (["{output}", "{html}", "--group-depth", "-2"], "--group-depth must be 1 or more"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, args, message):
    output = write_run(tmp_path / "out.parquet", tmp_path, [("x.jpg", "cat", 0.9)])
    (tmp_path / "notes.txt").write_text("hello")
    names = {
        "missing": tmp_path / "nope.parquet",
        "text": tmp_path / "notes.txt",
        "output": output,
        "html": tmp_path / "r.html",
        "tmp": tmp_path,
    }
    assert cli.main(["report", *[a.format(**names) for a in args]]) == 2
    error = capsys.readouterr().err
    assert error.startswith("batchclf: error: ") and message in error and error.count("\n") == 1
