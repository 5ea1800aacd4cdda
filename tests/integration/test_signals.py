"""SIGTERM and Ctrl-C mid-run: one line on stderr, the parts kept for resume, the summary says interrupted,
exit 143 / 130, and the same command again finishes with the rows of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from summary_check import valid_summary

IMAGES = 256  # 16 shards of 16: the run is still going when the first part appears


@pytest.fixture(scope="module")
def images(tmp_path_factory, datasets) -> Path:
    """A few hundred images, hard-linked from the shared set where the file system allows it."""
    root = tmp_path_factory.mktemp("signals") / "images"
    sources = sorted((datasets / "flowers_small").rglob("*.jpg"))
    for index in range(IMAGES):
        target = root / f"{index // 64:02d}" / f"{index:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(sources[index % len(sources)], target)
        except OSError:
            shutil.copy(sources[index % len(sources)], target)
    return root


def _arguments(images: Path, output: Path, summary: Path) -> list[str]:
    return [
        "run",
        str(images),
        str(output),
        "--shard-size",
        "16",
        "--no-progress",
        "--dashboard-address",
        "127.0.0.1:0",
        "--summary",
        str(summary),
    ]


@pytest.fixture(scope="module")
def uninterrupted(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    result = run_cli(*_arguments(images, folder / "out.parquet", folder / "summary.json"))
    assert result.returncode == 0, result.stderr
    return pq.read_table(folder / "out.parquet")


def _start(images: Path, output: Path, summary: Path) -> subprocess.Popen:
    """The CLI in a process group of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchclf", *_arguments(images, output, summary)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _cpu_seconds(pid: int) -> float:
    """The CPU time that process ``pid`` and its children have used so far."""
    import psutil

    try:
        parent = psutil.Process(pid)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _interrupt(images: Path, output: Path, summary: Path, send) -> subprocess.CompletedProcess:
    """Start the CLI, wait for its first finished part, then ``send``."""
    process = _start(images, output, summary)
    parts = output.with_name(output.name + ".parts")
    deadline = time.monotonic() + 300
    while not list(parts.glob("*.parquet")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no part appeared"
        time.sleep(0.1)
    send(process.pid)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _check_interrupted(result, output: Path, summary: Path, exit_code: int, signal_name: str) -> None:
    assert result.returncode == exit_code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("dashboard: ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"batchclf: interrupted by {signal_name}"), lines
    assert "run the same command again to resume" in lines[0]
    record = valid_summary(summary)
    assert (record["status"], record["exit_code"]) == ("interrupted", exit_code)
    saved = sum(pq.read_metadata(p).num_rows for p in output.with_name(output.name + ".parts").glob("*.parquet"))
    assert record["files"] == IMAGES and record["saved_in_parts"] == saved > 0, record
    assert not output.exists()
    assert list(output.with_name(output.name + ".parts").glob("*.parquet")), "the finished parts are kept"


def _check_resume(images: Path, output: Path, summary: Path, uninterrupted) -> None:
    result = run_cli(*_arguments(images, output, summary))
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    resumed = pq.read_table(output)
    assert resumed.drop_columns(["scored_at"]).equals(uninterrupted.drop_columns(["scored_at"]))
    assert json.loads(summary.read_text())["status"] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("number, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_or_sighup_stops_cleanly_and_the_run_resumes(images, uninterrupted, tmp_path, number, code):
    """SIGHUP is what a closed SSH session sends: it stops the run as cleanly as SIGTERM."""
    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    result = _interrupt(images, output, summary, lambda pid: os.kill(pid, number))
    _check_interrupted(result, output, summary, code, signal.Signals(number).name)
    _check_resume(images, output, summary, uninterrupted)


@pytest.mark.slow
def test_a_sigterm_in_the_first_half_second_still_writes_the_summary(images, tmp_path):
    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    process = _start(images, output, summary)
    # Half a second of the command's own work (its CPU time, the forked job's included), which is what half a
    # second of wall time is on a quiet machine: a fixed sleep on a loaded one can end before it even starts.
    deadline = time.monotonic() + 120
    while _cpu_seconds(process.pid) < 0.4:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    record = json.loads(summary.read_text())
    assert (record["status"], record["exit_code"]) == ("interrupted", 143)
    assert not output.exists()


@pytest.mark.slow
def test_ctrl_c_at_a_terminal_stops_cleanly_and_the_run_resumes(images, uninterrupted, tmp_path):
    """A terminal sends SIGINT to the whole foreground process group: workers must not print tracebacks."""
    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    result = _interrupt(images, output, summary, lambda pid: os.killpg(pid, signal.SIGINT))
    _check_interrupted(result, output, summary, 130, "SIGINT")
    _check_resume(images, output, summary, uninterrupted)


@pytest.mark.parametrize(("number", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_becomes_interrupted_once_and_a_copy_right_after_is_absorbed(number, code):
    from batchclf.errors import Interrupted
    from batchclf.supervise import stop_on_signals

    saved = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop_on_signals()
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), number)
            time.sleep(1)  # the handler runs at the next bytecode; never reached
        assert caught.value.exit_code == code
        assert not isinstance(caught.value, Exception)  # passes through the 'except Exception' of the run
        assert str(caught.value) == f"interrupted by {signal.Signals(number).name}"
        os.kill(os.getpid(), number)  # a copy of the same request (sent to every process): absorbed
        time.sleep(0.1)
    finally:
        for n, handler in saved.items():
            signal.signal(n, handler)


SECOND_SIGNAL = """
import os, signal, sys, time
from batchclf.supervise import REPEAT_SECONDS, stop_on_signals
from batchclf.errors import Interrupted
stop_on_signals()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1)
except Interrupted:
    print("interrupted", flush=True)
time.sleep(REPEAT_SECONDS + 0.2)
os.kill(os.getpid(), signal.SIGTERM)  # a person asking again: stop at once
time.sleep(5)
print("still running", flush=True)
"""


def test_a_second_signal_later_stops_at_once():
    result = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGTERM, result.stderr
    assert result.stdout.split() == ["interrupted"]


@pytest.mark.slow
def test_sigterm_to_every_process_stops_cleanly_once(images, uninterrupted, tmp_path):
    """A SLURM time limit or systemd's default KillMode signals every process: the job, which batchclf run
    forked, gets SIGTERM directly and again from its watching parent, and still stops cleanly."""
    import psutil

    def everyone(pid: int) -> None:
        for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            process.send_signal(signal.SIGTERM)

    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    result = _interrupt(images, output, summary, everyone)
    _check_interrupted(result, output, summary, 143, "SIGTERM")
    _check_resume(images, output, summary, uninterrupted)
