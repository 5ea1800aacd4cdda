"""The HTML page: one file with its CSS, SVG charts and JPEG thumbnails inline, and no script.

Every path, label and message from the data passes through ``html.escape``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from . import charts
from .drift import Drift
from .run import Item
from .thumbnails import Thumbnail
from .truth import TruthResult

CSS = """
:root{--ink:#1f2328;--muted:#667085;--line:#e3e6ea;--bg:#f7f8fa;--accent:#3b6fb6;--warn:#d9822b;--bad:#c0392b}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  color:var(--ink);background:var(--bg)}
header{background:#1f2a3a;color:#fff;padding:18px 28px}
header h1{margin:0 0 6px;font-size:20px}
header dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0;font-size:13px;color:#c8d1dc}
header dd{margin:0;color:#fff;word-break:break-all}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);padding:8px 28px;z-index:1}
nav a{margin-right:16px;color:var(--accent);text-decoration:none}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px}
h3{font-size:15px;margin:14px 0 6px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:22px}
.card span{color:var(--muted);font-size:12px}
.card.bad b{color:var(--bad)}.card.warn b{color:var(--warn)}
.note{color:var(--muted);font-size:13px}
.warning{background:#fff4e5;border:1px solid #f5c27a;border-radius:6px;padding:6px 10px;margin:8px 0}
svg.chart{max-width:100%;height:auto;font:12px system-ui,sans-serif;fill:var(--ink)}
.sheet{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 10px}
figure.t{margin:0;width:118px;text-align:center}
figure.t img,figure.t .ph{display:block;width:112px;height:112px;object-fit:contain;background:#eef0f3;
  border-radius:4px;margin:0 auto}
figure.t .ph{line-height:112px;color:var(--bad);font-size:12px;border:1px dashed #d0a0a0}
figure.t .why{margin:2px 0 0;font-size:10px;line-height:1.25;color:var(--bad);overflow-wrap:anywhere}
figure.t figcaption{font-size:11px;color:var(--muted);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.divider{width:2px;background:var(--line);margin:0 6px}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:3px 10px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.path{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
details summary{cursor:pointer;color:var(--accent)}
"""


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


def _figure(item: Item, thumbnail: Thumbnail | None, caption: str | None = None) -> str:
    hover = f"{item.path}\n{item.label}" + ("" if item.score is None else f" {item.score:.3f}")
    if item.previous is not None:
        hover = f"{item.path}\n{item.previous} → {item.label}" + ("" if item.score is None else f" {item.score:.3f}")
    caption = item.caption if caption is None else caption
    if thumbnail is not None and thumbnail.uri:
        picture = f'<img src="{thumbnail.uri}" alt="{escape(item.path)}">'
    else:
        problem = thumbnail.problem if thumbnail is not None else "not shown"
        picture = f'<div class="ph">{escape(problem)}</div>'
        if thumbnail is not None and thumbnail.reason:
            picture += f'<p class="why">{escape(thumbnail.reason)}</p>'
            hover += f"\n{problem}: {thumbnail.reason}"
    return f'<figure class="t" title="{escape(hover)}">{picture}<figcaption>{escape(caption)}</figcaption></figure>'


def _gallery(items: list[Item], thumbnails: dict[str, Thumbnail], caption=None) -> str:
    figures = "".join(_figure(i, thumbnails.get(i.path), caption(i) if caption else None) for i in items)
    return f'<div class="sheet">{figures}</div>'


def _card(value: str, name: str, kind: str = "") -> str:
    return f'<div class="card {kind}"><b>{escape(value)}</b><span>{escape(name)}</span></div>'


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "–"


def _summary(page: Page) -> str:
    speed = "–" if page.images_per_second is None else f"{page.images_per_second:,.1f}"
    cards = [
        _card(f"{page.files:,}", "files"),
        _card(f"{page.ok:,}", "ok"),
        _card(f"{page.errors:,}", "errors", "bad" if page.errors else ""),
        _card(speed, "images/s"),
        _card(_share(page.low_count, page.ok), f"scores below {page.low:g}", "warn" if page.low_count else ""),
        _card(f"{len(page.all_labels):,}", "labels found"),
    ]
    warnings = "".join(f'<p class="warning">{escape(w)}</p>' for w in page.warnings)
    return f'<section id="summary"><h2>Summary</h2>{warnings}<div class="cards">{"".join(cards)}</div></section>'


def _labels(page: Page) -> str:
    rows = "".join(
        f'<tr><td>{escape(label)}</td><td class="n">{count:,}</td><td class="n">{_share(count, page.ok)}</td></tr>'
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
        f"{page.low_count:,} of {page.ok:,} ({_share(page.low_count, page.ok)}) are below {page.low:g} "
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
                _figure(i, page.thumbnails.get(i.path)) for i in sheet.lowest
            )
        highest = "".join(_figure(i, page.thumbnails.get(i.path)) for i in sheet.highest)
        parts.append(
            f'<h3>{escape(sheet.label)} <span class="note">{_count(sheet.count, "image")}</span></h3>'
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
    body = _gallery(page.low_items, page.thumbnails, lambda i: f"{i.label} {i.caption}") if page.low_items else ""
    shown = f"the {len(page.low_items):,} least confident of " if len(page.low_items) < page.low_count else ""
    return (
        f'<section id="low"><h2>Low confidence</h2><p class="note">Showing {shown}'
        f"{_count(page.low_count, 'prediction')} scoring below {page.low:g}, least confident first.</p>{body}</section>"
    )


def _errors(page: Page) -> str:
    if not page.errors:
        return '<section id="errors"><h2>Errors</h2><p class="note">Every file decoded.</p></section>'
    rows = "".join(f'<tr><td class="path">{escape(p)}</td><td>{escape(e)}</td></tr>' for p, e in page.error_rows)
    shown = f"the first {len(page.error_rows):,} of " if len(page.error_rows) < page.errors else ""
    return (
        f'<section id="errors"><h2>Errors</h2><p class="note">Showing {shown}'
        f"{_count(page.errors, 'file')} that could not be classified, by path.</p>"
        f"<table><tr><th>path</th><th>error</th></tr>{rows}</table></section>"
    )


def _drift(page: Page) -> str:
    drift = page.drift
    cards = "".join(
        [
            _card(f"{drift.new_count:,}", "new files"),
            _card(f"{drift.gone_count:,}", "gone"),
            _card(f"{drift.changed_count:,}", "changed label", "warn" if drift.changed_count else ""),
            _card(f"{drift.previous_files:,} → {drift.current_files:,}", "files"),
        ]
    )
    movers = [(s.label, s.previous_share, s.current_share) for s in drift.shifts[:20]]
    chart = charts.shift_chart(movers, "Change in label share") if movers else ""
    rows = "".join(
        f'<tr><td>{escape(s.label)}</td><td class="n">{s.previous:,}</td><td class="n">{s.current:,}</td>'
        f'<td class="n">{s.previous_share:.2%}</td><td class="n">{s.current_share:.2%}</td>'
        f'<td class="n">{s.change * 100:+.2f}</td></tr>'
        for s in drift.shifts[:200]
    )
    table = (
        '<details><summary>Share per label</summary><table><tr><th>label</th><th class="n">before</th>'
        '<th class="n">now</th><th class="n">share before</th><th class="n">share now</th>'
        f'<th class="n">change (pp)</th></tr>{rows}</table></details>'
    )
    warning = ""
    if drift.roots_differ:
        warning = '<p class="warning">The two runs have different input roots; files are matched by relative path.</p>'
    gallery = ""
    if page.changed_items:
        shown = f"{len(page.changed_items):,} of " if len(page.changed_items) < drift.changed_count else ""
        gallery = (
            f'<h3>Changed predictions <span class="note">{shown}{drift.changed_count:,}, most confident first'
            f"</span></h3>" + _gallery(page.changed_items, page.thumbnails, lambda i: f"{i.previous} → {i.label}")
        )
    return (
        f'<section id="changes"><h2>Changes since the previous run</h2>{warning}<div class="cards">{cards}</div>'
        f'<h3>Biggest movers <span class="note">share of all files, percentage points</span></h3>{chart}{table}'
        f"{gallery}</section>"
    )


def _score(value: float | None, spec: str = ".3f") -> str:
    """A metric, or a dash where it is undefined (the precision of a class never predicted)."""
    return "—" if value is None else format(value, spec)


def _truth(page: Page) -> str:
    truth = page.truth
    cards = "".join(
        [
            _card(_score(truth.accuracy, ".1%"), "accuracy"),
            _card(_score(truth.macro_f1, ".3f"), "macro F1"),
            _card(f"{truth.matched:,}", "labelled images found"),
            _card(f"{len(truth.unmatched_truth):,}", "labelled, not in run", "warn" if truth.unmatched_truth else ""),
        ]
    )
    rows = "".join(
        f'<tr><td>{escape(c.label)}</td><td class="n">{c.support:,}</td><td class="n">{c.predicted:,}</td>'
        f'<td class="n">{_score(c.precision)}</td><td class="n">{_score(c.recall)}</td>'
        f'<td class="n">{_score(c.f1)}</td></tr>'
        for c in sorted(truth.classes, key=lambda c: (c.f1 or 0.0, c.label))
    )
    aliases = ""
    if truth.aliased:
        pairs = ", ".join(f"{escape(a)} → {escape(b)}" for a, b in truth.aliased.items())
        aliases = f'<p class="note">Known labels translated to the model\'s class names: {pairs}.</p>'
    matrix = charts.heat_map(truth.matrix_rows, truth.matrix_columns, truth.matrix, "Confusion matrix")
    return (
        f'<section id="truth"><h2>Against known labels</h2><div class="cards">{cards}</div>{aliases}'
        f'<h3>Confusion matrix <span class="note">true label down, prediction across; shade = share of the true '
        f'label</span></h3>{matrix}<h3>Per class <span class="note">worst F1 first</span></h3><table><tr>'
        '<th>label</th><th class="n">images</th><th class="n">predicted</th><th class="n">precision</th>'
        f'<th class="n">recall</th><th class="n">F1</th></tr>{rows}</table></section>'
    )


def render(page: Page) -> str:
    header = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in page.header)
    parts = [
        ("summary", "Summary", _summary),
        ("labels", "Labels", _labels),
        ("scores", "Scores", _scores),
        ("sheets", "Contact sheets", _sheets),
        ("low", "Low confidence", _low),
        ("errors", "Errors", _errors),
    ]
    if page.drift is not None:
        parts.append(("changes", "Changes", _drift))
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
