"""The in-process worker's safety net: a crash of the job's process is caught by the command, which runs
the job again with worker processes; signals reach the job once; killing the command stops the job."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import DATASETS, run_cli

from batchclf.isolate import CRASH_MESSAGE
from batchclf.machine import IN_PROCESS_MAX_CORES, available_cores
from batchclf.supervise import supervised


def _recording_job(record: Path, crash_while_in_process: bool = False, crash_always: bool = False, status: int = 0):
    """A job that notes each call (it runs in a child, so in a file) and crashes as told."""

    def job(in_process: bool) -> int:
        with record.open("a") as stream:
            stream.write(f"{in_process}\n")
        if crash_always or (crash_while_in_process and in_process):
            faulthandler.disable()  # pytest's, inherited: it would print the crash's stack
            os.kill(os.getpid(), signal.SIGSEGV)
        return status

    return job


def _calls(record: Path) -> list[str]:
    return record.read_text().split()


def test_the_job_runs_once_in_process_and_its_status_is_the_commands(tmp_path):
    record = tmp_path / "calls"
    lines = []
    assert supervised(_recording_job(record, status=3), log=lambda *a, **k: lines.append(a[0])) == 3
    assert _calls(record) == ["True"]
    assert lines == []


def test_a_crash_in_process_runs_the_job_again_with_worker_processes(tmp_path):
    record = tmp_path / "calls"
    lines = []
    assert supervised(_recording_job(record, crash_while_in_process=True), log=lambda *a, **k: lines.append(a[0])) == 0
    assert _calls(record) == ["True", "False"]
    assert len(lines) == 1 and "crashed (SIGSEGV)" in lines[0] and "worker processes" in lines[0]


def test_a_job_that_crashes_with_worker_processes_too_is_not_run_a_third_time(tmp_path):
    record = tmp_path / "calls"
    lines = []
    status = supervised(_recording_job(record, crash_always=True), log=lambda *a, **k: lines.append(a[0]))
    assert status == 128 + signal.SIGSEGV
    assert _calls(record) == ["True", "False"]
    assert "twice" in lines[-1]


SUPERVISED_SLEEPER = """
import os, signal, sys, time
from batchclf.supervise import supervised
record = sys.argv[1]

def job(in_process):
    received = []
    signal.signal(signal.SIGTERM, lambda n, f: received.append(n))
    signal.signal(signal.SIGINT, lambda n, f: received.append(n))
    with open(record, "a") as stream:
        stream.write(f"start {os.getpid()} {os.getpgid(0)}\\n")
    deadline = time.monotonic() + 60
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a second copy of the signal would arrive meanwhile
    with open(record, "a") as stream:
        stream.write(f"received {received}\\n")
    return 100 + len(received)

sys.exit(supervised(job))
"""


def _start_sleeper(tmp_path: Path) -> tuple[subprocess.Popen, Path, int]:
    record = tmp_path / "record"
    process = subprocess.Popen(
        [sys.executable, "-c", SUPERVISED_SLEEPER, str(record)], start_new_session=True, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while not record.exists() or "start" not in record.read_text():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    _, child, group = record.read_text().split()[:3]
    assert int(group) == int(child) != process.pid  # the job leads a process group of its own
    return process, record, int(child)


@pytest.mark.parametrize(
    "send",
    [lambda pid: os.kill(pid, signal.SIGTERM), lambda pid: os.killpg(pid, signal.SIGINT)],
    ids=["sigterm-to-the-command", "ctrl-c-to-its-group"],
)
def test_a_signal_to_the_command_reaches_the_job_once_and_is_no_crash(tmp_path, send):
    process, record, _ = _start_sleeper(tmp_path)
    send(process.pid)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 101, stderr  # the job saw exactly one signal, and ran once
    assert record.read_text().count("start") == 1
    assert b"crashed" not in stderr


def test_killing_the_command_kills_the_job(tmp_path):
    process, _, child = _start_sleeper(tmp_path)
    process.kill()
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the job outlived the command"
        time.sleep(0.05)


CRASH_HOOK = """
import os, signal
import batchclf.worker

POISON = "poison.jpg"


def dask_setup(worker):
    decode = batchclf.worker.decode_image

    def decode_or_crash(path, *args, **kwargs):
        if os.path.basename(path) == POISON:
            os.kill(os.getpid(), signal.SIGSEGV)  # what a decoder crashing on a hostile file does
        return decode(path, *args, **kwargs)

    batchclf.worker.decode_image = decode_or_crash
"""


@pytest.mark.slow
def test_a_file_that_crashes_the_in_process_worker_becomes_one_error_row(tmp_path):
    """End to end: the crash kills the job's process; the command runs it again with worker processes,
    which crash on the file too, and isolation makes it the one error row of a complete output."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "crash_hook.py").write_text(textwrap.dedent(CRASH_HOOK))
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((DATASETS / "imagenet_objects").glob("*.jpg"))[:6]
    for i, source in enumerate(sources):
        (images / f"img{i:02d}.jpg").symlink_to(source)
    (images / "poison.jpg").symlink_to(sources[0])
    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), os.environ.get("PYTHONPATH", "")]),
        "DASK_DISTRIBUTED__WORKER__PRELOAD": '["crash_hook"]',  # every worker: in-process, then the processes
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",  # keeps the worker restarts few
    }
    result = run_cli(
        "run", str(images), str(output), "--shard-size", "4", "--retries", "0", "--no-progress",
        "--dashboard-address", "127.0.0.1:0", "--summary", str(summary), env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    in_process = available_cores() <= IN_PROCESS_MAX_CORES
    assert ("the in-process worker crashed (SIGSEGV)" in result.stderr) == in_process, result.stderr
    rows = {row["path"]: row for row in pq.read_table(output).to_pylist()}
    assert sorted(rows) == sorted(p.name for p in images.iterdir())
    assert rows["poison.jpg"]["status"] == "error" and CRASH_MESSAGE in rows["poison.jpg"]["error"]
    assert all(row["status"] == "ok" for path, row in rows.items() if path != "poison.jpg")
    record = json.loads(summary.read_text())
    assert record["status"] == "ok" and record["worker_plan"]["in_process"] is False
