"""The ``batchclf report`` command line: parse, then hand a ReportConfig to ``build_report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import REPORT_GROUP_DEPTH, REPORT_LOW_SCORE, REPORT_PER_LABEL, REPORT_TOP_LABELS
from ..store import location_argument


def add_parser(subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="write one self-contained HTML page showing what a run found (and what changed)",
        description="Summarise a 'batchclf run' output in one HTML file with no outside references: label "
        "distribution, files, errors and labels per folder, score histogram, contact sheets per label, low-confidence "
        "and error listings; with --compare, first what changed since a previous run (new, gone and relabelled "
        "files, label shifts); with --truth, the most confused pairs and per-class metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    report.add_argument(
        "output",
        type=location_argument,
        metavar="OUT.parquet",
        help="the Parquet file written by 'batchclf run' (a URL such as s3://bucket/out.parquet reads it from there)",
    )
    report.add_argument("report", type=Path, metavar="REPORT.html", help="HTML file to write (replaced atomically)")
    report.add_argument(
        "--root",
        type=location_argument,
        default=None,
        metavar="DIR",
        help="folder (or URL prefix) the image paths are relative to (default: the run's input root when that is "
        "a folder here; a URL the output names is read only when given here)",
    )
    report.add_argument(
        "--low", type=float, default=REPORT_LOW_SCORE, help="a score below this counts as a low-confidence prediction"
    )
    report.add_argument(
        "--per-label",
        type=int,
        default=REPORT_PER_LABEL,
        help="thumbnails per label: half the highest, half the lowest scores",
    )
    report.add_argument(
        "--top",
        type=int,
        default=REPORT_TOP_LABELS,
        help="labels charted (the rest are grouped as 'other') and given a contact sheet",
    )
    report.add_argument(
        "--compare",
        type=location_argument,
        default=None,
        metavar="PREVIOUS.parquet",
        help="an earlier run's output: show new, gone and relabelled files and label shifts",
    )
    report.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the summary (and drift, and metrics) as JSON, e.g. for alerting",
    )
    report.add_argument(
        "--truth",
        type=Path,
        default=None,
        metavar="tags.tsv",
        help="known labels (path<TAB>label, paths relative to the file's folder): add the most "
        "confused pairs, the confusion matrix and per-class precision, recall and F1",
    )
    report.add_argument(
        "--group-depth",
        type=int,
        default=REPORT_GROUP_DEPTH,
        metavar="N",
        help="the 'Folders' section groups files by their first N folders under the input root (1: cam0, cam1; "
        "2: cam0/2026, ...)",
    )
    report.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help="fsspec options (endpoint_url, key, secret, ...) for an output, --compare or input root in a bucket; "
        "never printed or written",
    )
    report.set_defaults(handler=_report)


def _report(args) -> int:
    from ..report.build import ReportConfig, build_report
    from ..store import StorageOptions
    from ..store.parquet import answer_arrows_pandas_probe

    config = ReportConfig(
        output=args.output,
        report=args.report,
        root=args.root,
        low=args.low,
        per_label=args.per_label,
        top=args.top,
        compare=args.compare,
        json=args.json,
        truth=args.truth,
        group_depth=args.group_depth,
        storage_options=StorageOptions.parse(args.storage_options),
    )
    answer_arrows_pandas_probe()
    summary = build_report(config)
    print(summary.line(), file=sys.stderr)
    return 0
