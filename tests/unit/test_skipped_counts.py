"""Files the walk leaves out for their extension: the console line and the summary field."""

from __future__ import annotations

from batchclf.config import RunConfig
from batchclf.summary import RunSummary, skipped_text, summary_record


def test_the_console_line_puts_the_most_frequent_first_and_names_no_extension():
    assert skipped_text({"": 1, ".txt": 2}) == "skipped 3 files by extension: .txt 2, (none) 1"
    assert skipped_text({".xmp": 1}) == "skipped 1 file by extension: .xmp 1"
    assert skipped_text({".b": 1, ".a": 1}) == "skipped 2 files by extension: .a 1, .b 1"
    assert skipped_text({}) is None and RunSummary().skipped_line() is None


def test_the_summary_records_the_counts_by_extension(tmp_path):
    summary = RunSummary(skipped_by_extension={".txt": 2, "": 1})
    record = summary_record(summary, RunConfig(input=tmp_path, output=tmp_path / "out.parquet"), 0)
    assert record["skipped_by_extension"] == {".txt": 2, "": 1}
    assert (
        summary_record(RunSummary(), RunConfig(input=tmp_path, output=tmp_path / "o.parquet"), 0)[
            "skipped_by_extension"
        ]
        == {}
    )
