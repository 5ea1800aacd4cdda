"""Attach to an existing cluster: a real `dask scheduler` and `dask worker` on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import run_cli


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dask(*args: str, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    port = _free_port()
    scheduler_file = folder / "scheduler.json"
    log = open(folder / "dask.log", "w")
    processes = [
        _dask(
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            ":0",
            "--scheduler-file",
            str(scheduler_file),
            log=log,
        )
    ]
    address = f"tcp://127.0.0.1:{port}"
    for _ in range(2):
        processes.append(
            _dask("worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--dashboard-address", ":0", log=log)
        )
    from distributed import Client

    deadline = time.time() + 60
    with Client(address, timeout="60s") as client:
        while len(client.scheduler_info()["workers"]) < 2:
            assert time.time() < deadline, (folder / "dask.log").read_text()
            time.sleep(0.5)
    yield address, scheduler_file
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        process.wait(timeout=30)
    log.close()


def test_run_on_existing_scheduler(dask_processes, datasets, tmp_path):
    address, _ = dask_processes
    output = tmp_path / "out.parquet"
    result = run_cli(
        "run",
        str(datasets / "imagenet_objects"),
        str(output),
        "--scheduler",
        address,
        "--shard-size",
        "5",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(output)
    assert table.num_rows == 19 and set(table.column("status").to_pylist()) == {"ok"}


def test_run_with_scheduler_file(dask_processes, datasets, tmp_path):
    _, scheduler_file = dask_processes
    assert json.loads(scheduler_file.read_text())["address"].startswith("tcp://127.0.0.1")
    output = tmp_path / "out.parquet"
    result = run_cli(
        "run",
        str(datasets / "food_toy_appliance"),
        str(output),
        "--scheduler-file",
        str(scheduler_file),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    images = sorted(p.name for p in (datasets / "food_toy_appliance").iterdir() if p.suffix in (".jpg", ".png"))
    assert pq.read_table(output).column("path").to_pylist() == images


def test_unreachable_scheduler_is_a_usage_error(datasets, tmp_path):
    result = run_cli(
        "run",
        str(datasets / "imagenet_objects"),
        str(tmp_path / "o.parquet"),
        "--scheduler",
        f"tcp://127.0.0.1:{_free_port()}",
        "--no-progress",
    )
    assert result.returncode == 2, result.stderr
    assert "cannot reach the Dask scheduler" in result.stderr
