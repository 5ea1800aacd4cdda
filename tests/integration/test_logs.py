"""What ``batchclf run`` leaves in a cron log or a journal: a UTC time and the run id on every line, one first
line naming the run, progress lines, the summary line; warnings in our words; no dashboard unless asked for;
``--wait`` naming the lock's holder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from PIL import Image
from summary_check import valid_summary

from batchclf import __version__
from batchclf.store import location

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\d{8}T\d{6}Z-[0-9a-f]{6}) (INFO|WARNING|ERROR) ")
IMAGES = 96


def _bad_exif_jpeg(path: Path) -> None:
    """A JPEG whose EXIF names a tag past its end: Pillow warns "Tag data larger than file" as it reads it."""
    entry = struct.pack("<H", 1) + struct.pack("<HHLL", 0x010E, 2, 100, 4000) + struct.pack("<L", 0)
    stream = io.BytesIO()
    Image.new("RGB", (48, 40), (90, 20, 20)).save(stream, "JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + entry)
    path.write_bytes(stream.getvalue())


@pytest.fixture(scope="module")
def images(tmp_path_factory, datasets) -> Path:
    """Enough images, in small shards, for a run of several seconds; three with damaged EXIF."""
    root = tmp_path_factory.mktemp("logs") / "images"
    sources = sorted((datasets / "flowers_small").rglob("*.jpg"))
    for index in range(IMAGES):
        target = root / f"{index % 4}" / f"{index:03d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sources[index % len(sources)], target)
    for index in range(3):
        _bad_exif_jpeg(root / f"exif-{index}.jpg")
    return root


def _environment() -> dict[str, str]:
    """The command's environment as cron gives it: no log format chosen."""
    return {key: value for key, value in os.environ.items() if key != "BATCHCLF_LOG_FORMAT"}


def _run_to_file(args: list[str], log: Path, timeout: float = 600) -> int:
    """``batchclf ARGS 2>> LOG``, as a crontab line runs it: stderr a file, no terminal."""
    with open(log, "ab") as stream:
        return subprocess.run(
            [sys.executable, "-m", "batchclf", *args],
            stdin=subprocess.DEVNULL,
            stdout=stream,
            stderr=stream,
            env=_environment(),
            timeout=timeout,
        ).returncode


@contextlib.contextmanager
def _held_port():
    """A loopback port held by this test, as another run's dashboard would hold it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def _assert_stamped(lines: list[str]) -> str:
    """Every line starts with the time and one run id; return the id."""
    ids = set()
    for line in lines:
        match = STAMP.match(line)
        assert match, f"no timestamp and run id: {line!r}"
        ids.add(match[1])
    assert len(ids) == 1, ids
    return ids.pop()


def test_a_cron_log_has_a_time_and_the_run_id_on_every_line(images, tmp_path):
    log = tmp_path / "batchclf.log"
    with _held_port() as port:
        args = ["run", str(images), str(tmp_path / "out.parquet"), "--shard-size", "8", "--no-progress"]
        args += ["--summary", str(tmp_path / "summary.json")]
        status = _run_to_file([*args, "--dashboard-address", f"127.0.0.1:{port}", "--progress-interval", "1"], log)
    text = log.read_text()
    assert status == 0, text
    summary = valid_summary(tmp_path / "summary.json")  # the record monitoring reads, against its schema
    assert summary["run_id"] in text.splitlines()[0] and summary["files"] == IMAGES + 3
    lines = text.splitlines()
    _assert_stamped(lines)
    assert "warnings.warn" not in text and "UserWarning" not in text and "Traceback" not in text, text
    messages = [STAMP.sub("", line) for line in lines]
    assert messages[0].startswith(f"batchclf {__version__} run: {images} -> {tmp_path / 'out.parquet'}, model ")
    assert "backend litert" in messages[0] and "worker" in messages[0] and f"dashboard 127.0.0.1:{port}" in messages[0]
    assert sum("batchclf " in m and " run: " in m for m in messages) == 1
    assert re.fullmatch(rf"{IMAGES + 3} files, {IMAGES + 3} ok, 0 errors, [\d.]+ s, [\d.]+ images/s", messages[-1])
    # Dask's fallback to another port: one line, naming the port the dashboard is on.
    [taken] = [m for m in messages if "is taken" in m]
    [link] = [m for m in messages if m.startswith("dashboard: http")]
    used = re.search(r"on port (\d+) instead", taken)[1]
    assert f"dashboard port {port} is taken" in taken and link.endswith(f":{used}/status"), (taken, link)
    # Pillow's warnings about damaged EXIF: one line for the three images.
    assert sum(m.startswith("Pillow: Tag data larger than file") for m in messages) == 1, messages
    # A progress line about once a second while images were scored (the model's conversion, once per machine,
    # holds the interpreter and may delay the lines before the first image).
    progress = [(line[:23], m) for line, m in zip(lines, messages) if m.startswith("progress: ")]
    scoring = [(stamp, m) for stamp, m in progress if re.search(rf"[1-9]\d*/{IMAGES + 3} images \(\d+%\), ", m)]
    assert len(scoring) >= 2 and all("images/s, ETA " in m for _, m in scoring), progress
    times = [time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) for stamp, _ in scoring]
    assert all(later - earlier <= 3 for earlier, later in zip(times, times[1:])), scoring


def test_json_lines_from_worker_processes(images, tmp_path):
    """One JSON object a line, also for what worker processes warn about; no dashboard off a terminal."""
    log = tmp_path / "batchclf.log"
    args = ["run", str(images), str(tmp_path / "out.parquet"), "--workers", "1", "--log-format", "json"]
    status = _run_to_file([*args, "--progress-interval", "1", "--shard-size", "16"], log)
    text = log.read_text()
    assert status == 0, text
    records = [json.loads(line) for line in text.splitlines()]
    assert {record["run_id"] for record in records} == {records[0]["run_id"]} and records[0]["run_id"]
    assert all(set(record) >= {"time", "level", "run_id", "message"} for record in records)
    first, last = records[0], records[-1]
    assert (first["batchclf_version"], first["workers"], first["dashboard"]) == (__version__, 1, "none")
    assert (last["files"], last["ok"], last["errors"]) == (IMAGES + 3, IMAGES + 3, 0)
    [warned] = [record for record in records if record.get("warning")]
    assert warned["level"] == "warning" and warned["module"].startswith("PIL."), warned
    assert not any(record["message"].startswith("dashboard:") for record in records)
    assert any(record.get("total") == IMAGES + 3 for record in records)


def _listening_ports() -> set[int]:
    return {c.laddr.port for c in psutil.Process().net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


@pytest.mark.parametrize("in_process", [True, False])
def test_dashboard_address_none_serves_no_dashboard(in_process):
    from batchclf.cluster import connect
    from batchclf.machine import WorkerPlan

    plan = WorkerPlan(1, 1, 1, in_process=in_process)
    before = _listening_ports()
    with connect(dashboard_address=None, plan=plan) as (client, _):
        assert client.dashboard_link == ""
        assert "dashboard" not in client.scheduler_info().get("services", {})
        for port in _listening_ports() - before:  # the in-process worker's health page at most: no /status
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5)


def test_wait_names_the_holder_then_says_it_again(datasets, tmp_path):
    output = tmp_path / "out.parquet"
    log = tmp_path / "batchclf.log"
    args = ["run", str(datasets / "food_toy_appliance"), str(output), "--wait", "--progress-interval", "1"]
    with location(output).lock(), open(log, "ab") as stream:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "batchclf", *args], stderr=stream, stdout=stream, env=_environment()
        )
        deadline = time.monotonic() + 120
        while log.read_text().count("for the lock on") < 3 and time.monotonic() < deadline:
            assert waiting.poll() is None, log.read_text()
            time.sleep(0.2)
    assert waiting.wait(timeout=300) == 0, log.read_text()
    messages = [STAMP.sub("", line) for line in log.read_text().splitlines()]
    said = [m for m in messages if "for the lock on" in m]
    assert len(said) >= 3, messages
    holder = f"another batchclf run holds it (pid {os.getpid()} on {socket.gethostname()} since "
    assert said[0].startswith(f"waiting for the lock on {output}: {holder}"), said
    assert all(m.startswith("still waiting (") and holder in m for m in said[1:]), said
    assert messages.index(said[0]) == 1  # right after the run's first line
