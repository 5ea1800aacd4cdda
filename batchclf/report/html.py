"""What every part of the page is made of: the CSS, cards, thumbnails, tables and the note that says
what a list leaves out. Every path, label and message from the data passes through ``html.escape``.
"""

from __future__ import annotations

from html import escape

from .run import Item
from .thumbnails import Thumbnail

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
.scroll{max-height:340px;overflow:auto;border:1px solid var(--line);border-radius:6px;margin:4px 0 8px}
.scroll table{width:100%}.scroll th{position:sticky;top:0;background:#fff}
.failing{color:var(--bad);font-weight:600}
"""


def figure(item: Item, thumbnail: Thumbnail | None, caption: str | None = None) -> str:
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


def gallery(items: list[Item], thumbnails: dict[str, Thumbnail], caption=None) -> str:
    figures = "".join(figure(i, thumbnails.get(i.path), caption(i) if caption else None) for i in items)
    return f'<div class="sheet">{figures}</div>'


def card(value: str, name: str, kind: str = "") -> str:
    return f'<div class="card {kind}"><b>{escape(value)}</b><span>{escape(name)}</span></div>'


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "–"


def metric(value: float | None, spec: str = ".3f") -> str:
    """A metric, or a dash where it is undefined (the precision of a class never predicted)."""
    return "—" if value is None else format(value, spec)


def shown_note(shown: int, total: int, noun: str, order: str, hint: str = "") -> str:
    """The note under a list: what it holds and, when it is cut, how many are not shown."""
    if shown >= total:
        text = f"{count(total, noun)}, {order}."
    else:
        text = f"Showing {shown:,} of {count(total, noun)}, {order}; {total - shown:,} not shown{hint}."
    return f'<p class="note">{escape(text)}</p>'


def data_table(
    head: list[str], rows: list[list[str]], kinds: dict[int, str] | None = None, scroll: bool = False
) -> str:
    """A table of cells already escaped; ``kinds`` gives a column its class (``n``: a number, ``path``).
    ``scroll`` puts it in a box of bounded height with a sticky header, so a long list stays one screen."""
    kinds = kinds or {}

    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f'<{tag} class="{kinds[i]}">{v}</{tag}>' if i in kinds else f"<{tag}>{v}</{tag}>"
            for i, v in enumerate(values)
        )

    header = "".join(
        f'<th class="n">{escape(h)}</th>' if kinds.get(i) == "n" else f"<th>{escape(h)}</th>"
        for i, h in enumerate(head)
    )
    body = f"<table><tr>{header}</tr>" + "".join(f"<tr>{cells('td', r)}</tr>" for r in rows) + "</table>"
    return f'<div class="scroll">{body}</div>' if scroll else body
