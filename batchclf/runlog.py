"""How a run speaks: every message of ``batchclf run`` goes through one logger, ``batchclf``, and one handler
on stderr, in the format the operator chose (``--log-format``).

- ``plain``: the message alone, errors as ``batchclf: error: ...``: the look on a terminal.
- ``text``: ``TIME RUN_ID LEVEL message``, the time in ISO 8601 UTC: what a cron log or a journal needs.
- ``json``: one JSON object a line (time, level, run_id, message and the record's fields), for log shippers.
- ``auto``: ``plain`` on a terminal, ``text`` otherwise.

The run id is ``RunSummary.run_id`` (``summary.new_run_id``), set once per run with ``set_run_id``. A library
caller (``batchclf.classify``) gets no handler: the ``batchclf`` logger is silent until configured, as
Python libraries are.

Third-party warnings (the ``warnings`` module) are said once, in our words, as a log line without their
source text (``capture_warnings``); those meant for developers (deprecations) are dropped. Dask workers in
other processes send theirs to the driver (``forward_warnings``), which says them the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import warnings
from datetime import datetime, timezone

from .config import LOG_FORMATS

logger = logging.getLogger("batchclf")
logger.addHandler(logging.NullHandler())

WARNINGS_TOPIC = "batchclf-warnings"  # Dask event topic: warnings of worker processes, said by the driver
HEADER = "header"  # a record attribute: the run's first line, which the plain format leaves out
QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning)
PORT_TAKEN = re.compile(r"Port (\d+) is already in use.*?on port (\d+) instead", re.DOTALL)

_state = {"run_id": None}


def set_run_id(run_id: str | None) -> None:
    """The id every line of this process carries from now on (``RunSummary.run_id``)."""
    _state["run_id"] = run_id


def current_run_id() -> str | None:
    return _state["run_id"]


def utc_time(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-12-06T08:56:12.345Z``."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PlainFormatter(logging.Formatter):
    """The message alone; an error as ``batchclf: error: ...``, a warning as ``batchclf: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"batchclf: error: {message}"
        if record.levelno >= logging.WARNING:
            return f"batchclf: {message}"
        return message


class TextFormatter(logging.Formatter):
    """``TIME RUN_ID LEVEL message``: sortable, greppable, one line a record."""

    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().splitlines())
        return f"{utc_time(record.created)} {current_run_id() or '-'} {record.levelname} {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, run_id, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": utc_time(record.created),
            "level": record.levelname.lower(),
            "run_id": current_run_id(),
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        return json.dumps(entry, default=str, ensure_ascii=False)


FORMATTERS = {"plain": PlainFormatter, "text": TextFormatter, "json": JsonFormatter}


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test's capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _LeaveOutHeader(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, HEADER, False)


def resolve_format(log_format: str, interactive: bool) -> str:
    """``auto``: ``plain`` on a terminal, ``text`` otherwise."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    if log_format == "auto":
        return "plain" if interactive else "text"
    return log_format


def configure(log_format: str = "plain") -> str:
    """Send the ``batchclf`` logger's records to stderr in ``log_format`` (``auto`` resolved on stderr);
    replaces the handler an earlier call installed. Returns the format used."""
    chosen = resolve_format(log_format, sys.stderr.isatty())
    for handler in [h for h in logger.handlers if isinstance(h, StderrHandler)]:
        logger.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(FORMATTERS[chosen]())
    if chosen == "plain":
        handler.addFilter(_LeaveOutHeader())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return chosen


def origin(filename: str) -> str:
    """The module a warning came from, from its file: ``.../site-packages/PIL/Image.py`` → ``PIL.Image``."""
    path = filename.replace("\\", "/")
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            path = path.rsplit(marker, 1)[1]
            break
    else:
        path = path.rsplit("/", 1)[-1]
    return path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")


def describe_warning(category: str, module: str, message: str) -> str | None:
    """A third-party warning in our words; None for one meant for developers, said nowhere."""
    if category in {quiet.__name__ for quiet in QUIET_WARNINGS}:
        return None
    taken = PORT_TAKEN.search(message)
    if taken:
        return f"dashboard port {taken[1]} is taken (another run?); the dashboard is on port {taken[2]} instead"
    first = next((line.strip() for line in message.splitlines() if line.strip()), category)
    if module.split(".")[0] == "PIL":
        return f"Pillow: {first} (an image with damaged metadata, still classified; said once)"
    return f"{module}: {first} ({category}, said once)"


class WarningsOnce:
    """Says each kind of warning once a run: a kind is its category and the line of code that warned."""

    def __init__(self) -> None:
        self._seen: set[tuple] = set()
        self._lock = threading.Lock()

    def say(self, category: str, module: str, lineno: int, message: str) -> None:
        with self._lock:
            if (category, module, lineno) in self._seen:
                return
            self._seen.add((category, module, lineno))
        text = describe_warning(category, module, message)
        if text is not None:
            fields = {"warning": category, "module": module}
            logger.warning(text, extra={"fields": fields})


@contextlib.contextmanager
def capture_warnings():
    """For the block, every ``warnings.warn`` of this process becomes at most one log line of its kind."""
    once = WarningsOnce()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        once.say(category.__name__, origin(filename), lineno, str(message))

    with warnings.catch_warnings():
        warnings.showwarning = show
        _state["warnings"] = once
        try:
            yield once
        finally:
            _state.pop("warnings", None)


def say_forwarded_warning(event) -> None:
    """A warning a worker process sent on ``WARNINGS_TOPIC``: said once, as this process's own would be."""
    _, fields = event
    once = _state.get("warnings")
    if once is None:  # not captured here (a library caller): one line, as a warning is by default
        once = _state.setdefault("forwarded", WarningsOnce())
    once.say(fields["category"], fields["module"], fields["lineno"], fields["message"])


def forward_warnings(worker) -> None:
    """In a Dask worker process: send every warning to the driver on ``WARNINGS_TOPIC`` instead of
    printing its source text on the worker's stderr (the driver's log). Thread-safe: ``log_event``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        fields = {"category": category.__name__, "module": origin(filename), "lineno": lineno, "message": str(message)}
        worker.log_event(WARNINGS_TOPIC, fields)

    warnings.showwarning = show
