"""The one tags.tsv reader on canned text files (what is skipped, where a line splits, what is refused), and the
one rule that turns its labels into ImageNet classes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from batchclf.errors import UsageError
from batchclf.models.registry import imagenet_class, imagenet_labels
from batchclf.report.truth import _model_labels, read_truth
from batchclf.training.dataset import LabelledImages, Tag, read_dataset, read_tags
from batchclf.training.evaluate import truth_labels


def _tsv(folder: Path, text: str) -> Path:
    path = folder / "tags.tsv"
    path.write_bytes(text.encode("utf-8"))
    return path


def _read(folder: Path, text: str) -> list[Tag]:
    return list(read_tags(_tsv(folder, text)))


def test_comments_and_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    text = "# path<TAB>label\n\na.jpg\tcat\n   # indented comment\n \t \nb.jpg\tdog\n"
    assert _read(tmp_path, text) == [Tag("a.jpg", "cat", 3), Tag("b.jpg", "dog", 6)]


def test_bom_crlf_trailing_whitespace_and_spaces_around_fields(tmp_path):
    text = "\ufeffa.jpg\tcat \t \r\n\r\n  b.jpg \t dog\r\nc.jpg\tfox"
    assert _read(tmp_path, text) == [Tag("a.jpg", "cat", 1), Tag("b.jpg", "dog", 3), Tag("c.jpg", "fox", 4)]


def test_a_line_splits_at_its_last_tab_so_a_path_may_hold_a_tab(tmp_path):
    assert _read(tmp_path, "odd\tname.jpg\tcat\nsub\tdir/x.jpg\tdog\n") == [
        Tag("odd\tname.jpg", "cat", 1),
        Tag("sub\tdir/x.jpg", "dog", 2),
    ]


def test_a_path_starting_with_a_hash_is_written_with_dot_slash(tmp_path):
    assert _read(tmp_path, "#1.jpg\tcat\n./#2.jpg\tdog\n") == [Tag("./#2.jpg", "dog", 2)]


def test_only_line_feeds_and_carriage_returns_end_a_line(tmp_path):
    """Form feed and Unicode line separators may be part of a file name; they must not split the line."""
    assert _read(tmp_path, "a\x0cb.jpg\tcat\nc\u2028d.jpg\tdog\re.jpg\tfox\n") == [
        Tag("a\x0cb.jpg", "cat", 1),
        Tag("c\u2028d.jpg", "dog", 2),
        Tag("e.jpg", "fox", 3),
    ]


@pytest.mark.parametrize(
    "text, line",
    [
        ("a.jpg\tcat\nb.jpg cat\n", 2),  # no tab
        ("a.jpg\tcat\n\n# note\nb.jpg\t\n", 4),  # missing label: the trailing tab is trailing whitespace
        ("a.jpg\tcat\nb.jpg\t   \n", 2),  # a label of spaces
        ("a.jpg\tcat\n\tcat\n", 2),  # missing path
        ("a.jpg\tcat\n  \t cat\n", 2),  # a path of spaces
    ],
)
def test_a_malformed_line_is_refused_with_its_number(tmp_path, text, line):
    tsv = _tsv(tmp_path, text)
    with pytest.raises(UsageError, match=rf"^{tsv} line {line}: expected 'image_path<TAB>label', got "):
        list(read_tags(tsv))


def test_a_long_bad_line_is_shortened_in_the_message(tmp_path):
    with pytest.raises(UsageError, match=r"line 1: expected 'image_path<TAB>label', got '" + "x" * 57 + r"\.\.\.'$"):
        _read(tmp_path, "x" * 200 + "\n")


def test_an_image_given_two_labels_is_refused_naming_both_lines(tmp_path):
    text = "a.jpg\tcat\nb.jpg\tdog\n./a.jpg\tcat\nsub/../a.jpg\tdog\n"
    with pytest.raises(UsageError, match=r"line 4: sub/\.\./a\.jpg is labelled 'dog' here but 'cat' at line 1;"):
        _read(tmp_path, text)


def test_an_image_repeated_with_the_same_label_is_read_once(tmp_path):
    assert _read(tmp_path, "a.jpg\tcat\n./a.jpg\tcat\nb.jpg\tdog\n") == [Tag("a.jpg", "cat", 1), Tag("b.jpg", "dog", 3)]


def test_problems_are_found_in_file_order(tmp_path):
    """The reader yields line by line, so a caller's check of line 2 runs before the reader sees line 3."""
    tags = read_tags(_tsv(tmp_path, "a.jpg\tcat\nb.jpg\tdog\nno tab here\n"))
    assert next(tags) == Tag("a.jpg", "cat", 1) and next(tags) == Tag("b.jpg", "dog", 2)
    with pytest.raises(UsageError, match="line 3"):
        next(tags)


def test_messages_name_the_file_as_the_caller_says(tmp_path):
    tsv = _tsv(tmp_path, "a.jpg cat\n")
    with pytest.raises(UsageError, match=rf"^--truth {tsv} line 1: expected"):
        list(read_tags(tsv, f"--truth {tsv}"))
    with pytest.raises(UsageError, match=rf"^--truth {tmp_path}/nope\.tsv does not exist; give a tags\.tsv"):
        list(read_tags(tmp_path / "nope.tsv", f"--truth {tmp_path / 'nope.tsv'}"))
    (tmp_path / "latin1.tsv").write_bytes("caf\xe9.jpg\tcat\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"latin1\.tsv is not UTF-8 text"):
        list(read_tags(tmp_path / "latin1.tsv"))


def test_training_and_the_report_read_the_same_lines(tmp_path):
    """Both commands go through ``read_tags``: a tab in a path, a comment and a repeat mean the same to each."""
    for name in ("odd\tname.jpg", "b.jpg", "c.jpg", "d.jpg"):
        (tmp_path / name).write_bytes(b"")  # read_dataset checks that the file exists; nothing is decoded
    tsv = _tsv(tmp_path, "# header\nodd\tname.jpg\tcat\nb.jpg\tcat\n./b.jpg\tcat\nc.jpg\tdog\nd.jpg\tdog\n")
    data = read_dataset(tsv)
    assert [Path(p).name for p in data.paths] == ["odd\tname.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert data.labels == ("cat", "cat", "dog", "dog")
    assert data.lines[0] == f"{tsv} line 2"
    labels, outside = read_truth(tsv, tmp_path)
    assert labels == {"odd\tname.jpg": "cat", "b.jpg": "cat", "c.jpg": "dog", "d.jpg": "dog"} and outside == []


def test_the_report_keeps_its_option_in_the_message_for_a_missing_file(tmp_path):
    with pytest.raises(UsageError, match=r"^--truth .*nope\.tsv does not exist"):
        read_truth(tmp_path / "nope.tsv", tmp_path)


def test_training_names_a_path_with_a_tab_that_is_not_found(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    tsv = _tsv(tmp_path, "a.jpg\tcat\na.jpg\tcat\textra\n")
    with pytest.raises(UsageError, match=r"line 2: image 'a\.jpg\\tcat' not found in .*; a line splits at its last"):
        read_dataset(tsv)


def test_one_rule_turns_a_label_into_an_imagenet_class():
    assert imagenet_class("kayak") == "kayak" and imagenet_class("canoe") == "kayak"  # a WordNet synonym
    assert imagenet_class("Great_White_Shark") == imagenet_class("great  white shark") == "great white shark"
    assert imagenet_class("cardigan") == imagenet_class("CARDIGAN") == "cardigan"  # the class, not the corgi
    assert imagenet_class("Cardigan") == "Cardigan Welsh Corgi"  # an exact synonym comes first
    assert imagenet_class("no such thing") is None


def test_evaluate_and_the_report_translate_labels_alike():
    labels = ["canoe", "Great_White_Shark", "kayak", "CARDIGAN"]
    data = LabelledImages(Path("tags.tsv"), ("a", "b", "c", "d"), tuple(labels), ("1", "2", "3", "4"))
    evaluated = truth_labels(data, imagenet_labels(), builtin=True)
    reported = _model_labels(SimpleNamespace(metadata={"model": "efficientnet-lite0"}), set(labels))
    assert evaluated == [reported[label] for label in labels] == ["kayak", "great white shark", "kayak", "cardigan"]
    assert _model_labels(SimpleNamespace(metadata={"model": "mine"}), {"canoe"}) == {"canoe": "canoe"}
