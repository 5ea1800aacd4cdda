"""The sections a nightly reader looks at first: what changed since the previous run (``--compare``), the
run folder by folder, and how it fares against known labels (``--truth``).

Each list is cut at a limit and says so, with how many it leaves out: a page over a million rows and a
thousand classes stays readable and never pretends a corner is the whole.
"""

from __future__ import annotations

from html import escape

from . import charts
from .drift import LISTED_PATHS, Drift
from .folders import ROOT_GROUP, FolderGroup
from .html import card, count, data_table, gallery, metric, share, shown_note
from .run import Item
from .thumbnails import Thumbnail
from .truth import MATRIX_CLASSES, TruthResult

MOVERS_CHARTED = 20
MOVERS_LISTED = 200
SCROLL_ROWS = 30  # a table longer than this scrolls in a box of its own
JSON_HINT = f" (--json lists up to {LISTED_PATHS:,})"


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _paths(title: str, paths: list[str], total: int, listed: int, noun: str) -> str:
    if not total:
        return f'<h3>{title} <span class="note">none</span></h3>'
    shown = paths[:listed]
    rows = [[escape(p)] for p in shown]
    hint = JSON_HINT if total > len(shown) else ""
    return (
        f'<h3>{title} <span class="note">{count(total, noun)}</span></h3>'
        + data_table(["path"], rows, {0: "path"}, scroll=len(rows) > SCROLL_ROWS)
        + shown_note(len(shown), total, noun, "by path", hint)
    )


def _changed(drift: Drift, listed: int) -> str:
    if not drift.changed_count:
        return '<h3>Changed label <span class="note">none</span></h3>'
    shown = drift.changed[:listed]
    rows = [
        [escape(i.path), escape(i.previous or ""), _score(i.previous_score), escape(i.label), _score(i.score)]
        for i in shown
    ]
    head = ["path", "before", "score before", "now", "score now"]
    hint = JSON_HINT if drift.changed_count > len(shown) else ""
    return (
        f'<h3>Changed label <span class="note">{count(drift.changed_count, "file")}</span></h3>'
        + data_table(head, rows, {0: "path", 2: "n", 4: "n"}, scroll=len(rows) > SCROLL_ROWS)
        + shown_note(len(shown), drift.changed_count, "changed file", "by path", hint)
    )


def _movers(drift: Drift) -> str:
    charted = drift.shifts[:MOVERS_CHARTED]
    movers = [(s.label, s.previous_share, s.current_share) for s in charted]
    chart = charts.shift_chart(movers, "Change in label share") if movers else ""
    listed = drift.shifts[:MOVERS_LISTED]
    rows = [
        [
            escape(s.label),
            f"{s.previous:,}",
            f"{s.current:,}",
            f"{s.previous_share:.2%}",
            f"{s.current_share:.2%}",
            f"{s.change * 100:+.2f}",
        ]
        for s in listed
    ]
    head = ["label", "before", "now", "share before", "share now", "change (pp)"]
    table = data_table(head, rows, {i: "n" for i in range(1, 6)})
    outcomes = len(drift.shifts)
    return (
        f'<h3>Biggest movers <span class="note">share of all files, percentage points</span></h3>{chart}'
        + shown_note(len(charted), outcomes, "label", "biggest change first")
        + f"<details><summary>Share per label</summary>{table}"
        + shown_note(len(listed), outcomes, "label", "biggest change first")
        + "</details>"
    )


def changes_section(drift: Drift, gallery_items: list[Item], thumbnails: dict[str, Thumbnail], listed: int) -> str:
    """New, gone and relabelled files by path (old → new label and scores), thumbnails of the changes,
    then the label shares that moved."""
    cards = "".join(
        [
            card(f"{drift.new_count:,}", "new files"),
            card(f"{drift.gone_count:,}", "gone"),
            card(f"{drift.changed_count:,}", "changed label", "warn" if drift.changed_count else ""),
            card(f"{drift.previous_files:,} → {drift.current_files:,}", "files"),
        ]
    )
    warning = ""
    if drift.roots_differ:
        warning = '<p class="warning">The two runs have different input roots; files are matched by relative path.</p>'
    pictures = ""
    if gallery_items:
        pictures = (
            '<h3>Changed predictions <span class="note">previous → now</span></h3>'
            + gallery(gallery_items, thumbnails, lambda i: f"{i.previous} → {i.label}")
            + shown_note(len(gallery_items), drift.changed_count, "changed file", "most confident first")
        )
    return (
        f'<section id="changes"><h2>Changes since the previous run</h2>{warning}<div class="cards">{cards}</div>'
        + _changed(drift, listed)
        + pictures
        + _paths("New files", drift.new, drift.new_count, listed, "new file")
        + _paths("Gone", drift.gone, drift.gone_count, listed, "gone file")
        + _movers(drift)
        + "</section>"
    )


def _top_labels(group: FolderGroup, labels: int) -> str:
    if not group.ok:
        return "–"
    shown = " · ".join(f"{escape(label)} {share(n, group.ok)}" for label, n in group.labels[:labels])
    more = len(group.labels) - labels
    return shown + (f' <span class="note">+{count(more, "label")}</span>' if more > 0 else "")


def folders_section(groups: list[FolderGroup], depth: int, limit: int, labels: int) -> str:
    """Files, errors (count and rate) and the label mix of each folder under the input root."""
    what = "top-level folder" if depth == 1 else f"folder up to {depth} levels deep"
    intro = (
        f"Files under each {what} of the input root (--group-depth {depth}); {ROOT_GROUP} is the root "
        f"itself. Labels are shares of the folder's images that decoded."
    )
    shown = groups[:limit]
    rows = []
    for group in shown:
        rate = share(group.errors, group.files)
        rows.append(
            [
                escape(group.folder),
                f"{group.files:,}",
                f'<span class="failing">{group.errors:,}</span>' if group.errors else "0",
                f'<span class="failing">{rate}</span>' if group.errors else rate,
                _top_labels(group, labels),
            ]
        )
    table = data_table(
        ["folder", "files", "errors", "error rate", "top labels"],
        rows,
        {0: "path", 1: "n", 2: "n", 3: "n"},
        scroll=len(rows) > SCROLL_ROWS,
    )
    return (
        f'<section id="folders"><h2>Folders</h2><p class="note">{escape(intro)}</p>{table}'
        + shown_note(len(shown), len(groups), "folder", "most files first")
        + "</section>"
    )


def _pairs(truth: TruthResult, limit: int) -> str:
    if not truth.confused:
        return '<h3>Most confused pairs</h3><p class="note">No labelled image was predicted wrong.</p>'
    shown = truth.confused[:limit]
    rows = [[escape(p.actual), escape(p.predicted), f"{p.count:,}", f"{p.share:.1%}"] for p in shown]
    table = data_table(["true label", "predicted", "images", "share of true label"], rows, {2: "n", 3: "n"})
    return (
        '<h3>Most confused pairs <span class="note">true label → prediction</span></h3>'
        + table
        + shown_note(len(shown), len(truth.confused), "confused pair", "most images first")
    )


def _matrix(truth: TruthResult) -> str:
    if not truth.matrix_complete:
        return (
            f'<h3>Confusion matrix</h3><p class="note">Not drawn: {len(truth.classes):,} true labels are more '
            f"than the {MATRIX_CLASSES} a matrix can show; the most confused pairs above are its largest "
            f"off-diagonal cells, and --json has the matrix of the {MATRIX_CLASSES} most frequent labels.</p>"
        )
    matrix = charts.heat_map(truth.matrix_rows, truth.matrix_columns, truth.matrix, "Confusion matrix")
    return (
        '<h3>Confusion matrix <span class="note">true label down, prediction across; shade = share of the true '
        f"label</span></h3>{matrix}"
    )


def truth_section(truth: TruthResult, pairs: int) -> str:
    """Accuracy, the most confused pairs, the confusion matrix when every class fits, and every class's
    precision, recall and F1."""
    cards = "".join(
        [
            card(metric(truth.accuracy, ".1%"), "accuracy"),
            card(metric(truth.macro_f1, ".3f"), "macro F1"),
            card(f"{truth.matched:,}", "labelled images found"),
            card(f"{len(truth.unmatched_truth):,}", "labelled, not in run", "warn" if truth.unmatched_truth else ""),
        ]
    )
    classes = sorted(truth.classes, key=lambda c: (c.f1 or 0.0, c.label))
    rows = [
        [
            escape(c.label),
            f"{c.support:,}",
            f"{c.predicted:,}",
            metric(c.precision),
            metric(c.recall),
            metric(c.f1),
        ]
        for c in classes
    ]
    head = ["label", "images", "predicted", "precision", "recall", "F1"]
    table = data_table(head, rows, {i: "n" for i in range(1, 6)}, scroll=len(rows) > SCROLL_ROWS)
    aliases = ""
    if truth.aliased:
        translated = ", ".join(f"{escape(a)} → {escape(b)}" for a, b in truth.aliased.items())
        aliases = f'<p class="note">Known labels translated to the model\'s class names: {translated}.</p>'
    return (
        f'<section id="truth"><h2>Against known labels</h2><div class="cards">{cards}</div>{aliases}'
        + _pairs(truth, pairs)
        + _matrix(truth)
        + f'<h3>Per class <span class="note">worst F1 first</span></h3>{table}'
        + shown_note(len(rows), len(rows), "label", "worst F1 first")
        + "</section>"
    )
