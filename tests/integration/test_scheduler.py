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

LOCAL_DASHBOARD = ("--dashboard-address", "127.0.0.1:0")


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


def _wait_for_workers(address: str, count: int, log_file, **client_options) -> None:
    from distributed import Client

    deadline = time.time() + 60
    with Client(address, timeout="60s", **client_options) as client:
        while len(client.scheduler_info()["workers"]) < count:
            assert time.time() < deadline, log_file.read_text()
            time.sleep(0.5)


def _stop(processes) -> None:
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        process.wait(timeout=30)


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
    _wait_for_workers(address, 2, folder / "dask.log")
    yield address, scheduler_file
    _stop(processes)
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
    """Dask retries a refused connection until its connect timeout, 30 s by default: 2 s here."""
    result = run_cli(
        "run",
        str(datasets / "imagenet_objects"),
        str(tmp_path / "o.parquet"),
        "--scheduler",
        f"tcp://127.0.0.1:{_free_port()}",
        "--no-progress",
        env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"},
    )
    assert result.returncode == 2, result.stderr
    assert "cannot reach the Dask scheduler" in result.stderr


@pytest.fixture(scope="module")
def tls_processes(tmp_path_factory):
    """A scheduler and a worker that speak only TLS, with the certificates jobs/slurm/batchclf.sbatch makes,
    started with the --tls-* options the SLURM and Kubernetes files use."""
    from distributed.security import Security

    from batchclf.cluster import write_certificates

    folder = tmp_path_factory.mktemp("dask-tls")
    client_env = write_certificates(folder / "tls")
    tls = ["--tls-ca-file", str(folder / "tls" / "tls.crt"), "--tls-cert", str(folder / "tls" / "tls.crt")]
    tls += ["--tls-key", str(folder / "tls" / "tls.key")]
    port = _free_port()
    log = open(folder / "dask.log", "w")
    address = f"tls://127.0.0.1:{port}"
    processes = [
        _dask(
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--protocol",
            "tls",
            *tls,
            *LOCAL_DASHBOARD,
            log=log,
        ),
        _dask("worker", address, "--nthreads", "1", "--host", "127.0.0.1", *tls, *LOCAL_DASHBOARD, log=log),
    ]
    client_security = Security(
        tls_ca_file=str(folder / "tls" / "tls.crt"),
        tls_client_cert=str(folder / "tls" / "tls.crt"),
        tls_client_key=str(folder / "tls" / "tls.key"),
        require_encryption=True,
    )
    _wait_for_workers(address, 1, folder / "dask.log", security=client_security)
    yield address, client_env
    _stop(processes)
    log.close()


def test_certificates_are_private_files(tmp_path):
    from batchclf.cluster import write_certificates

    env = write_certificates(tmp_path / "tls")
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    for name in ("tls.crt", "tls.key"):
        assert (tmp_path / "tls" / name).stat().st_mode & 0o777 == 0o600
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"] == str(tmp_path / "tls" / "tls.key")
    with pytest.raises(FileExistsError):  # never written through what is already there
        write_certificates(tmp_path / "tls")


def test_run_on_a_tls_cluster(tls_processes, datasets, tmp_path):
    address, client_env = tls_processes
    output = tmp_path / "out.parquet"
    arguments = ("run", str(datasets / "imagenet_objects"), str(output), "--scheduler", address, "--no-progress")
    result = run_cli(*arguments, env=client_env)
    assert result.returncode == 0, result.stderr
    assert pq.read_table(output).num_rows == 19


def test_a_tls_cluster_without_certificates_is_a_usage_error(tls_processes, datasets, tmp_path):
    address, _ = tls_processes
    result = run_cli("run", str(datasets / "imagenet_objects"), str(tmp_path / "o.parquet"), "--scheduler", address)
    assert result.returncode == 2, result.stderr
    assert "speaks TLS" in result.stderr and len(result.stderr.strip().splitlines()) == 1
