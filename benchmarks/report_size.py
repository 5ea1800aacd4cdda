"""Measure the size and build time of ``batchclf report`` pages; no model needed.

Writes N small JPEGs (480x360 crops of the shared test photos when they are present, textured
gradients otherwise) and a synthetic Parquet output pointing at them, then builds:

- the default report (the thumbnail cap applies, so its size does not grow with the rows);
- an "every thumbnail" report (``--top``/``--per-label`` large enough to show all N images), which
  gives the thumbnail throughput;
- with ``--rows`` above N, the default report over that many rows (row i points at image i mod N
  through a distinct path, so every row has a real file behind it), and the same with ``--compare``
  against a run with other labels and scores (so almost every file changed label).

    python benchmarks/report_size.py                 # 5,000 images and rows
    python benchmarks/report_size.py --rows 1000000  # 5,000 images, a million rows
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from batchclf import writer
from batchclf.report import ReportConfig, build_report

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
LABELS = 60


def source_photos() -> list[Image.Image]:
    photos = []
    for path in sorted(DATASETS.glob("**/*.jpg"))[:200]:
        with Image.open(path) as image:
            image.draft("RGB", (960, 720))
            photos.append(image.convert("RGB"))
    return photos


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs of 480x360, each a different crop of a photo (or a textured gradient)."""
    rng = random.Random(seed)
    photos = source_photos()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if photos:
            photo = photos[i % len(photos)]
            scale = rng.uniform(0.5, 1.0)
            w, h = int(photo.width * scale), int(photo.height * scale)
            x, y = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
            image = photo.resize((480, 360), box=(x, y, x + w, y + h))
        else:
            gradient = np.linspace(0, 255, 480, dtype=np.float32)[None, :, None] * np.ones((360, 1, 3))
            noise = np.random.default_rng(i).normal(0, 25, (360, 480, 3))
            image = Image.fromarray(np.clip(gradient + noise + i % 97, 0, 255).astype(np.uint8))
        image.save(folder / f"{i:05}.jpg", quality=85)


def write_output(path: Path, root: Path, rows: int, images: int, seed: int = 0) -> None:
    """A Parquet file shaped like a run's output: Zipf-like labels, skewed scores, 1% errors."""
    rng = np.random.default_rng(seed)
    for k in range(-(-rows // images)):
        (root / f"r{k}").mkdir(exist_ok=True)
    paths = [f"img/{i:05}.jpg" if i < images else f"r{i // images}/../img/{i % images:05}.jpg" for i in range(rows)]
    weights = 1.0 / np.arange(1, LABELS + 1)
    labels = rng.choice([f"class {n:02}" for n in range(LABELS)], size=rows, p=weights / weights.sum())
    scores = rng.beta(5, 1.5, size=rows).astype(np.float32)
    failed = rng.random(rows) < 0.01
    schema = writer.output_schema()
    columns = {
        "path": pa.array(paths, pa.string()),
        "label": pa.array(np.where(failed, None, labels), pa.string()),
        "score": pa.array(np.where(failed, np.nan, scores), pa.float32(), mask=failed),
        "topk": pa.nulls(rows, schema.field("topk").type),
        "status": pa.array(np.where(failed, "error", "ok"), pa.string()),
        "error": pa.array(np.where(failed, "cannot decode: truncated file", None), pa.string()),
        "width": pa.array(np.full(rows, 480), pa.int32()),
        "height": pa.array(np.full(rows, 360), pa.int32()),
        "bytes": pa.nulls(rows, pa.int64()),
        "mtime": pa.nulls(rows, schema.field("mtime").type),
        "model": pa.array(["benchmark"] * rows, pa.string()),
    }
    # every other column of the output's schema (the file's change marks, unverified ...) as nulls
    table = pa.table([columns.get(f.name, pa.nulls(rows, f.type)) for f in schema], schema=schema)
    metadata = {
        "model": "benchmark",
        "input_root": str(root),
        "run_time": "2026-01-01T00:00:00Z",
        "files": rows,
        "ok": int((~failed).sum()),
        "errors": int(failed.sum()),
        "seconds": rows / 100.0,
    }
    pq.write_table(table.replace_schema_metadata({writer.METADATA_KEY: json.dumps(metadata).encode()}), path)


def measure(name: str, config: ReportConfig) -> dict:
    started = time.perf_counter()
    summary = build_report(config)
    seconds = time.perf_counter() - started
    per_thousand = summary.timings["thumbnails"] / summary.thumbnails * 1000 if summary.thumbnails else 0.0
    print(
        f"{name:<27} {summary.rows:>9,} rows {summary.thumbnails:>6,} thumbnails "
        f"{summary.bytes / 1e6:>7.2f} MB {seconds:>7.2f} s (thumbnails {summary.timings['thumbnails']:.2f} s, "
        f"{per_thousand:.2f} s per 1,000)",
        flush=True,
    )
    return {
        "name": name,
        "rows": summary.rows,
        "thumbnails": summary.thumbnails,
        "bytes": summary.bytes,
        "seconds": round(seconds, 3),
        "thumbnail_seconds": round(summary.timings["thumbnails"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="JPEG files to generate")
    parser.add_argument("--rows", type=int, default=None, help="rows in the Parquet file (default: --images)")
    parser.add_argument("--keep", type=Path, default=None, help="write the reports into this folder")
    args = parser.parse_args(argv)
    rows = args.rows or args.images
    with tempfile.TemporaryDirectory(prefix="batchclf-report-bench-") as scratch:
        root = Path(scratch) / "images"
        started = time.perf_counter()
        make_images(root / "img", args.images)
        print(f"made {args.images:,} JPEGs in {time.perf_counter() - started:.1f} s on {os.cpu_count()} cores")
        out = args.keep or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        results = []
        small = Path(scratch) / "small.parquet"
        write_output(small, root, args.images, args.images)
        results.append(measure("default", ReportConfig(small, out / "default.html")))
        every = ReportConfig(
            small, out / "every.html", top=LABELS, per_label=args.images, max_thumbnails=args.images, gallery=0
        )
        results.append(measure("every thumbnail", every))
        if rows > args.images:
            large = Path(scratch) / "large.parquet"
            write_output(large, root, rows, args.images)
            results.append(measure("default, large", ReportConfig(large, out / "large.html")))
            previous = Path(scratch) / "previous.parquet"
            write_output(previous, root, rows, args.images, seed=1)
            compare = ReportConfig(large, out / "compare.html", compare=previous, json=out / "compare.json")
            results.append(measure("default, large, --compare", compare))
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
