"""The log's formats, the warnings said in our words, progress lines, lock-wait lines: on canned records."""

from __future__ import annotations

import json
import logging
import re
import warnings

import pytest

from batchclf import runlog
from batchclf.config import RunConfig, dashboard_address
from batchclf.errors import UsageError
from batchclf.progress import duration, progress_line
from batchclf.store import base
from batchclf.store.base import LockWait


def _record(message: str, level=logging.INFO, **extra) -> logging.LogRecord:
    record = logging.LogRecord("batchclf", level, __file__, 1, message, None, None)
    record.created = 1_796_547_372.5  # 2026-12-06T08:56:12.500Z
    record.__dict__.update(extra)
    return record


@pytest.fixture
def run_id():
    runlog.set_run_id("20261206T085612Z-3fa9c1")
    yield "20261206T085612Z-3fa9c1"
    runlog.set_run_id(None)


def test_text_lines_start_with_the_utc_time_and_the_run_id(run_id):
    line = runlog.TextFormatter().format(_record("200 files, 200 ok"))
    assert line == f"2026-12-06T08:56:12.500Z {run_id} INFO 200 files, 200 ok"
    assert "\n" not in runlog.TextFormatter().format(_record("two\nlines", logging.WARNING))


def test_json_lines_parse_and_carry_the_fields(run_id):
    line = runlog.JsonFormatter().format(_record('a "quoted" path', logging.WARNING, fields={"done": 3}))
    assert json.loads(line) == {
        "time": "2026-12-06T08:56:12.500Z",
        "level": "warning",
        "run_id": run_id,
        "message": 'a "quoted" path',
        "done": 3,
    }


def test_the_plain_look_is_the_terminal_s():
    formatter = runlog.PlainFormatter()
    assert formatter.format(_record("dashboard: http://x")) == "dashboard: http://x"
    assert formatter.format(_record("no images", logging.ERROR)) == "batchclf: error: no images"
    assert formatter.format(_record("interrupted by SIGINT", logging.WARNING)) == "batchclf: interrupted by SIGINT"


def test_auto_is_plain_on_a_terminal_and_text_elsewhere():
    assert runlog.resolve_format("auto", interactive=True) == "plain"
    assert runlog.resolve_format("auto", interactive=False) == "text"
    assert runlog.resolve_format("json", interactive=True) == "json"
    with pytest.raises(ValueError, match="log format must be one of"):
        runlog.resolve_format("xml", interactive=False)


def test_the_plain_format_leaves_out_the_run_s_first_line(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    runlog.configure("plain")
    [handler] = [h for h in runlog.logger.handlers if isinstance(h, runlog.StderrHandler)]
    assert not handler.filter(_record("batchclf 0.1.0 run: ...", **{runlog.HEADER: True}))
    assert handler.filter(_record("200 files"))
    runlog.configure("text")
    [handler] = [h for h in runlog.logger.handlers if isinstance(h, runlog.StderrHandler)]
    assert handler.filter(_record("batchclf 0.1.0 run: ...", **{runlog.HEADER: True}))
    runlog.logger.removeHandler(handler)
    runlog.logger.propagate = True


def test_dask_s_port_fallback_is_one_line_naming_the_port_used():
    text = (
        "Port 8787 is already in use.\nPerhaps you already have a cluster running?\n"
        "Hosting the HTTP server on port 45329 instead"
    )
    said = runlog.describe_warning("UserWarning", "distributed.node", text)
    assert said == "dashboard port 8787 is taken (another run?); the dashboard is on port 45329 instead"


def test_warnings_are_said_in_our_words_or_not_at_all():
    said = runlog.describe_warning("UserWarning", "PIL.TiffImagePlugin", "Tag data larger than file. Skipping tag 270")
    assert said.startswith("Pillow: Tag data larger than file. Skipping tag 270 (") and "still classified" in said
    assert runlog.describe_warning("DeprecationWarning", "dask.dataframe", "use x") is None
    assert runlog.describe_warning("FutureWarning", "pyarrow", "changes") is None
    assert runlog.origin("/usr/lib/python3/site-packages/PIL/Image.py") == "PIL.Image"
    assert runlog.origin("/x/dist-packages/distributed/__init__.py") == "distributed"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_each_kind_of_warning_is_said_once(run_id):
    caplog = _Records()
    runlog.logger.addHandler(caplog)
    runlog.logger.setLevel(logging.INFO)
    with runlog.capture_warnings():
        for size in (100, 200, 300):  # one line of code, three messages: one kind
            warnings.warn(f"Tag data larger than file. Expecting {size} bytes", UserWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
        runlog.say_forwarded_warning(
            (0.0, {"category": "UserWarning", "module": "PIL.Image", "lineno": 7, "message": "m"})
        )
        runlog.say_forwarded_warning(
            (0.0, {"category": "UserWarning", "module": "PIL.Image", "lineno": 7, "message": "m"})
        )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "Expecting 100 bytes" in lines[0] and lines[1].startswith("Pillow: m"), lines
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    runlog.logger.removeHandler(caplog)


def test_progress_lines_say_done_total_rate_and_eta():
    message, fields = progress_line(2_500, 10_000, 100.0)
    assert message == "progress: 2,500/10,000 images (25%), 25.0 images/s, ETA 5 min 00 s"
    assert fields == {"done": 2_500, "total": 10_000, "images_per_second": 25.0, "eta_seconds": 300}
    message, fields = progress_line(0, 10, 30.0)
    assert message.startswith("progress: 0/10 images, waiting") and fields["eta_seconds"] is None
    assert (duration(42), duration(185), duration(7620)) == ("42 s", "3 min 05 s", "2 h 07 min")


def test_a_lock_wait_is_said_at_once_then_every_interval(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(base.time, "monotonic", lambda: now[0])
    said = []
    wait = LockWait(lambda holder, waited: said.append((holder, waited)), every=60)
    for step in range(0, 150, 1):  # tried every second for 150 s
        now[0] = 1000.0 + step
        wait.held(lambda: "pid 7 on host since 2026-12-06T02:30:01Z")
    assert said == [("pid 7 on host since 2026-12-06T02:30:01Z", t) for t in (0.0, 60.0, 120.0)]


def test_dashboard_none_and_the_default_off_a_terminal():
    assert dashboard_address("none", interactive=True) is None
    assert dashboard_address("auto", interactive=False) is None
    assert dashboard_address("auto", interactive=True) == "127.0.0.1:8787"
    assert dashboard_address(":8787", interactive=False) == ":8787"


def test_a_negative_progress_interval_is_refused():
    with pytest.raises(UsageError, match=re.escape("--progress-interval must be 0 (no lines) or more seconds")):
        RunConfig(input="in", output="out.parquet", progress_interval=-1).check()
