"""The HTML page: one file with its CSS, SVG charts and JPEG thumbnails inline, and no script.

Every path, label and message from the data passes through ``html.escape``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from ..config import REPORT_CONFUSED_PAIRS, REPORT_FOLDER_LABELS, REPORT_FOLDERS, REPORT_GROUP_DEPTH, REPORT_LISTED
from . import charts
from .drift import Drift
from .folders import FolderGroup
from .html import CSS, card, count, figure, gallery, share
from .run import Item
from .sections import changes_section, folders_section, truth_section
from .thumbnails import Thumbnail
from .truth import TruthResult


@dataclass(frozen=True)
class LabelSheet:
    label: str
    count: int
    highest: list[Item]
    lowest: list[Item]


@dataclass(frozen=True)
class Page:
    title: str
    header: list[tuple[str, str]]
    files: int
    ok: int
    errors: int
    images_per_second: float | None
    low: float
    low_count: int
    chart_labels: list[tuple[str, int]]  # top labels, and "other" last when has_other
    has_other: bool
    all_labels: list[tuple[str, int]]
    histogram: list[int]
    sheets: list[LabelSheet]
    low_items: list[Item]
    error_rows: list[tuple[str, str]]
    thumbnails: dict[str, Thumbnail]
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # section → a note on what was left out
    drift: Drift | None = None
    changed_items: list[Item] = field(default_factory=list)
    truth: TruthResult | None = None
    folders: list[FolderGroup] = field(default_factory=list)  # every group, most files first
    group_depth: int = REPORT_GROUP_DEPTH
    listed: int = REPORT_LISTED  # rows of each list of changed, new and gone paths
    folder_rows: int = REPORT_FOLDERS
    folder_labels: int = REPORT_FOLDER_LABELS
    confused_pairs: int = REPORT_CONFUSED_PAIRS


def _summary(page: Page) -> str:
    speed = "–" if page.images_per_second is None else f"{page.images_per_second:,.1f}"
    cards = [
        card(f"{page.files:,}", "files"),
        card(f"{page.ok:,}", "ok"),
        card(f"{page.errors:,}", "errors", "bad" if page.errors else ""),
        card(speed, "images/s"),
        card(share(page.low_count, page.ok), f"scores below {page.low:g}", "warn" if page.low_count else ""),
        card(f"{len(page.all_labels):,}", "labels found"),
    ]
    warnings = "".join(f'<p class="warning">{escape(w)}</p>' for w in page.warnings)
    return f'<section id="summary"><h2>Summary</h2>{warnings}<div class="cards">{"".join(cards)}</div></section>'


def _labels(page: Page) -> str:
    rows = "".join(
        f'<tr><td>{escape(label)}</td><td class="n">{count:,}</td><td class="n">{share(count, page.ok)}</td></tr>'
        for label, count in page.all_labels
    )
    table = (
        f"<details><summary>All {len(page.all_labels):,} labels</summary><table><tr><th>label</th>"
        f'<th class="n">images</th><th class="n">share</th></tr>{rows}</table></details>'
    )
    chart = (
        charts.bar_chart(page.chart_labels, "Images per label", muted=int(page.has_other))
        if page.chart_labels
        else "<p>No predictions.</p>"
    )
    return (
        f'<section id="labels"><h2>Label distribution</h2><p class="note">Predicted label of the {page.ok:,} '
        f"images that decoded.</p>{chart}{table}</section>"
    )


def _scores(page: Page) -> str:
    return (
        f'<section id="scores"><h2>Scores</h2><p class="note">Top-1 score of each prediction; '
        f"{page.low_count:,} of {page.ok:,} ({share(page.low_count, page.ok)}) are below {page.low:g} "
        f"(orange).</p>{charts.histogram(page.histogram, page.low, 'Score histogram')}</section>"
    )


def _sheets(page: Page) -> str:
    parts = [
        '<section id="sheets"><h2>Contact sheets</h2><p class="note">Per label: the highest scores, then '
        "the lowest. Hover an image for its path and score.</p>"
    ]
    for sheet in page.sheets:
        lowest = ""
        if sheet.lowest:
            lowest = '<div class="divider"></div>' + "".join(
                figure(i, page.thumbnails.get(i.path)) for i in sheet.lowest
            )
        highest = "".join(figure(i, page.thumbnails.get(i.path)) for i in sheet.highest)
        parts.append(
            f'<h3>{escape(sheet.label)} <span class="note">{count(sheet.count, "image")}</span></h3>'
            f'<div class="sheet">{highest}{lowest}</div>'
        )
    if "sheets" in page.notes:
        parts.append(f'<p class="note">{escape(page.notes["sheets"])}</p>')
    parts.append("</section>")
    return "".join(parts)


def _low(page: Page) -> str:
    if not page.low_count:
        return (
            f'<section id="low"><h2>Low confidence</h2><p class="note">No prediction scores below {page.low:g}.</p>'
            "</section>"
        )
    body = gallery(page.low_items, page.thumbnails, lambda i: f"{i.label} {i.caption}") if page.low_items else ""
    shown = f"the {len(page.low_items):,} least confident of " if len(page.low_items) < page.low_count else ""
    return (
        f'<section id="low"><h2>Low confidence</h2><p class="note">Showing {shown}'
        f"{count(page.low_count, 'prediction')} scoring below {page.low:g}, least confident first.</p>{body}</section>"
    )


def _errors(page: Page) -> str:
    if not page.errors:
        return '<section id="errors"><h2>Errors</h2><p class="note">Every file decoded.</p></section>'
    rows = "".join(f'<tr><td class="path">{escape(p)}</td><td>{escape(e)}</td></tr>' for p, e in page.error_rows)
    shown = f"the first {len(page.error_rows):,} of " if len(page.error_rows) < page.errors else ""
    return (
        f'<section id="errors"><h2>Errors</h2><p class="note">Showing {shown}'
        f"{count(page.errors, 'file')} that could not be classified, by path.</p>"
        f"<table><tr><th>path</th><th>error</th></tr>{rows}</table></section>"
    )


def _changes(page: Page) -> str:
    return changes_section(page.drift, page.changed_items, page.thumbnails, page.listed)


def _folders(page: Page) -> str:
    return folders_section(page.folders, page.group_depth, page.folder_rows, page.folder_labels)


def _truth(page: Page) -> str:
    return truth_section(page.truth, page.confused_pairs)


def render(page: Page) -> str:
    header = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in page.header)
    # A nightly reader's first question is what changed, so the Changes come right after the summary.
    parts = [("summary", "Summary", _summary)]
    if page.drift is not None:
        parts.append(("changes", "Changes", _changes))
    parts += [
        ("labels", "Labels", _labels),
        ("folders", "Folders", _folders),
        ("scores", "Scores", _scores),
        ("sheets", "Contact sheets", _sheets),
        ("low", "Low confidence", _low),
        ("errors", "Errors", _errors),
    ]
    if page.truth is not None:
        parts.append(("truth", "Known labels", _truth))
    nav = "".join(f'<a href="#{link}">{name}</a>' for link, name, _ in parts)
    sections = [render_section(page) for _, _, render_section in parts]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(page.title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{escape(page.title)}</h1><dl>{header}</dl></header><nav>{nav}</nav>"
        f"<main>{''.join(sections)}</main></body></html>\n"
    )
