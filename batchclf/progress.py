"""How far a run is: a bar on a terminal, or, where there is none (cron, systemd, ``--no-progress``), a
log line every ``progress_interval`` seconds: done/total, images/s, ETA."""

from __future__ import annotations

import sys
import threading
import time

from .runlog import logger

PROGRESS_TOPIC = "batchclf-progress"  # the Dask event topic on which workers report images scored


def report_progress(count: int) -> None:
    """A worker's end: ``count`` more images scored, sent to the driver's display (nothing outside Dask)."""
    try:
        from distributed import get_worker

        get_worker().log_event(PROGRESS_TOPIC, count)
    except ValueError:  # not running inside a Dask worker
        pass


def progress_line(done: int, total: int, seconds: float) -> tuple[str, dict]:
    """The line and its fields, for ``done`` of ``total`` images scored in ``seconds``."""
    rate = done / seconds if seconds > 0 else 0.0
    share = f" ({done / total:.0%})" if total else ""
    fields = {"done": done, "total": total, "images_per_second": round(rate, 2), "eta_seconds": None}
    if done == 0:
        return f"progress: 0/{total:,} images, waiting for the first results (the model is being loaded)", fields
    eta = (total - done) / rate if rate else 0.0
    fields["eta_seconds"] = round(eta)
    return f"progress: {done:,}/{total:,} images{share}, {rate:.1f} images/s, ETA {duration(eta)}", fields


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressLines:
    """A progress line every ``interval`` seconds from a thread of its own, so a line comes even while no
    shard finishes (a model being built, a slow shard); ``update`` counts images as workers report them."""

    def __init__(self, total: int, interval: float) -> None:
        self.total, self.interval, self.done = total, interval, 0
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._report, name="batchclf-progress", daemon=True)
        if interval > 0:
            self._thread.start()

    def update(self, count: int) -> None:
        with self._lock:
            self.done = min(self.total, self.done + count)

    def _report(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                done = self.done
            message, fields = progress_line(done, self.total, time.monotonic() - self._started)
            logger.info(message, extra={"fields": fields})

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class ProgressBar:
    """tqdm's bar on stderr, for a terminal."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.1, file=sys.stderr)

    def update(self, count: int) -> None:
        self._bar.update(min(count, self._bar.total - self._bar.n))

    def close(self) -> None:
        self._bar.close()


def progress_display(total: int, bar: bool, interval: float):
    """The bar when asked for (``RunConfig.progress``), else progress lines every ``interval`` seconds."""
    return ProgressBar(total) if bar else ProgressLines(total, interval)
