"""``batchclf report``: one self-contained HTML page showing what a run found and what changed since the last.

The stages, one module each: ``run`` reads a Parquet output into the figures the page needs, ``drift``
compares two runs, ``truth`` scores a run against a ``tags.tsv``, ``folders`` counts a run folder by
folder, ``thumbnails`` makes the embedded JPEGs in parallel, ``charts`` draws the SVG, ``html`` holds the
page's CSS and parts, ``sections`` the Changes, Folders and known-labels sections, ``page`` lays the page
out and ``build`` ties them together.
Nothing in the page is fetched over the network: CSS, charts and images are all inline.
"""

from __future__ import annotations

__all__ = ["ReportConfig", "ReportSummary", "build_report"]


def __getattr__(name: str):
    # pyarrow and Pillow load only when a report is built.
    if name in ("ReportConfig", "ReportSummary", "build_report"):
        from . import build

        return getattr(build, name)
    raise AttributeError(name)
