"""The charts, drawn as inline SVG: nothing to load, crisp at any zoom, and searchable text.

Every label passes through ``html.escape``; sizes are in SVG user units and scale with the page.
"""

from __future__ import annotations

from html import escape

BAR = "#3b6fb6"
LOW = "#d9822b"
UP = "#2e8b57"
DOWN = "#c0392b"
OTHER = "#9aa4b1"
LABEL_WIDTH = 190
CHAR_WIDTH = 6.6  # average width of a 12 px sans-serif character, to shorten long labels


def _label(x: float, y: float, text: str, width: float) -> str:
    """Right-aligned text ending at ``x``, shortened to fit ``width``; the full text is in the tooltip."""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="end">{escape(_short(text, width))}</text>'


def _short(text: str, width: float) -> str:
    limit = max(4, int(width / CHAR_WIDTH))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return (
        f'<svg class="chart" role="img" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
        f'height="{height:.0f}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
        + "".join(body)
        + "</svg>"
    )


def bar_chart(rows: list[tuple[str, int]], title: str, width: int = 760, muted: int = 0) -> str:
    """Horizontal bars: one row per (label, count), with the count and share at the end of the bar.

    The last ``muted`` rows (an "other" group) are drawn in grey.
    """
    total = sum(count for _, count in rows) or 1
    peak = max((count for _, count in rows), default=0) or 1
    row_height, plot = 22, width - LABEL_WIDTH - 110
    body = []
    for i, (label, count) in enumerate(rows):
        y = i * row_height
        length = max(1.0, plot * count / peak) if count else 0.0
        body.append(
            f"<g><title>{escape(label)}: {count:,} ({count / total:.1%})</title>"
            + _label(LABEL_WIDTH - 6, y + 15, label, LABEL_WIDTH - 10)
            + f'<rect x="{LABEL_WIDTH}" y="{y + 3}" width="{length:.1f}" height="{row_height - 6}" '
            f'fill="{OTHER if i >= len(rows) - muted else BAR}"/>'
            f'<text x="{LABEL_WIDTH + length + 5:.1f}" y="{y + 15}">{count:,} · {count / total:.1%}</text></g>'
        )
    return _svg(width, max(row_height, len(rows) * row_height), body, title)


def histogram(counts: list[int], low: float, title: str, width: int = 760, height: int = 220) -> str:
    """Vertical bars over [0, 1]; bins below ``low`` in another colour, with a line at ``low``."""
    left, bottom, top = 50, 30, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(counts, default=0) or 1
    step = plot_w / max(1, len(counts))
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>']
    for i, count in enumerate(counts):
        lo, hi = i / len(counts), (i + 1) / len(counts)
        h = plot_h * count / peak
        colour = LOW if hi <= low + 1e-9 else BAR
        body.append(
            f'<rect x="{left + i * step + 1:.1f}" y="{top + plot_h - h:.1f}" width="{step - 2:.1f}" '
            f'height="{h:.1f}" fill="{colour}"><title>{lo:.2f}–{hi:.2f}: {count:,}</title></rect>'
        )
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + plot_w * tick
        body.append(f'<text x="{x:.1f}" y="{height - 10}" text-anchor="middle">{tick:g}</text>')
    body.append(f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak:,}</text>')
    body.append(f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>')
    x = left + plot_w * min(max(low, 0.0), 1.0)
    body.append(
        f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="{LOW}" stroke-dasharray="4 3"/>'
    )
    return _svg(width, height, body, title)


def shift_chart(rows: list[tuple[str, float, float]], title: str, width: int = 760) -> str:
    """Diverging bars of the change in share (percentage points); rows are (label, previous, current)."""
    row_height = 22
    middle = LABEL_WIDTH + (width - LABEL_WIDTH) / 2
    half = (width - LABEL_WIDTH) / 2 - 70
    peak = max((abs(c - p) for _, p, c in rows), default=0) or 1
    body = [f'<line x1="{middle:.1f}" y1="0" x2="{middle:.1f}" y2="{len(rows) * row_height}" stroke="#888"/>']
    for i, (label, previous, current) in enumerate(rows):
        y, change = i * row_height, current - previous
        length = half * abs(change) / peak
        x = middle if change >= 0 else middle - length
        colour = UP if change >= 0 else DOWN
        anchor, tx = ("start", middle + length + 5) if change >= 0 else ("end", middle - length - 5)
        body.append(
            f"<g><title>{escape(label)}: {previous:.2%} → {current:.2%}</title>"
            + _label(LABEL_WIDTH - 6, y + 15, label, LABEL_WIDTH - 10)
            + f'<rect x="{x:.1f}" y="{y + 3}" width="{max(length, 0.5):.1f}" height="{row_height - 6}" '
            f'fill="{colour}"/>'
            f'<text x="{tx:.1f}" y="{y + 15}" text-anchor="{anchor}">{change * 100:+.2f} pp</text></g>'
        )
    return _svg(width, max(row_height, len(rows) * row_height), body, title)


def heat_map(rows: list[str], columns: list[str], counts: list[list[int]], title: str) -> str:
    """A confusion matrix: true classes down, predicted across, shaded by the share of each true class."""
    longest = max((len(c) for c in columns), default=4)
    cell, left, top = 34, LABEL_WIDTH, int(min(150, 16 + longest * CHAR_WIDTH * 0.85))
    width, height = left + cell * len(columns) + 10, top + cell * len(rows) + 10
    body = []
    for j, column in enumerate(columns):
        x = left + j * cell + cell / 2
        body.append(
            f'<text transform="translate({x + 4:.1f},{top - 6}) rotate(-55)">{escape(_short(column, top * 1.1))}</text>'
        )
    for i, row in enumerate(rows):
        y = top + i * cell
        total = sum(counts[i]) or 1
        body.append(_label(left - 6, y + cell / 2 + 4, row, left - 10))
        for j, count in enumerate(counts[i]):
            share = count / total
            fill = f"rgba(59,111,182,{0.08 + 0.92 * share:.3f})" if count else "#f4f4f4"
            ink = "#fff" if share > 0.55 else "#222"
            body.append(
                f"<g><title>true {escape(row)}, predicted {escape(columns[j])}: {count:,}</title>"
                f'<rect x="{left + j * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}"/>'
                + (
                    f'<text x="{left + j * cell + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" text-anchor="middle" '
                    f'fill="{ink}">{count:,}</text>'
                    if count
                    else ""
                )
                + "</g>"
            )
    return _svg(width, height, body, title)
