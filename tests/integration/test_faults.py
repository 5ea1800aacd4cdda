"""Faults on a cluster: a worker killed mid-run, and a file that crashes every worker that reads it.

The first test starts a real ``dask scheduler`` and two ``dask worker`` processes (no nanny, so a
killed worker stays dead), runs ``batchclf run --scheduler`` and SIGKILLs a worker while it is
scoring. The second makes one file poisonous with a worker plugin (test code only) that exits the
worker process when that file is decoded, and checks that ``isolate_failing_shard`` turns it into
one error row while every other file is scored normally.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import dask
import pyarrow.parquet as pq
import pytest
from conftest import require_datasets, run_cli
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from batchclf.isolate import CRASH_MESSAGE, isolate_failing_shard
from batchclf.models.registry import resolve_model
from batchclf.shard import Shard
from batchclf.worker import ScoringOptions, score_shard

pytestmark = pytest.mark.slow


def link_images(target: Path, copies: int) -> list[str]:
    """``copies`` links to each shared flower image, under distinct names; return the relative paths."""
    sources = sorted((require_datasets() / "flowers_small").rglob("*.jpg"))
    paths = []
    for copy in range(copies):
        folder = target / f"copy{copy}"
        folder.mkdir(parents=True)
        for source in sources:
            (folder / f"{source.parent.name}-{source.name}").symlink_to(source)
            paths.append(f"copy{copy}/{source.parent.name}-{source.name}")
    return sorted(paths)


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@contextlib.contextmanager
def dask_processes(folder: Path, nanny: bool, scheduler_environment: dict | None = None):
    """A ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, and a client to them."""
    scheduler_file = folder / "scheduler.json"
    logs = []
    processes = []

    def start(name: str, *args: str, environment: dict | None = None) -> subprocess.Popen:
        log = open(folder / f"{name}.log", "w")
        logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(environment or {})},
        )
        processes.append(process)
        return process

    try:
        start(
            "scheduler",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
            environment=scheduler_environment,
        )
        wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size, 60, "the scheduler file")
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [
            start(
                f"worker{i}",
                "distributed.cli.dask_worker",
                address,
                "--nworkers",
                "1",
                "--nthreads",
                "1",
                "--nanny" if nanny else "--no-nanny",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
                "--name",
                f"worker{i}",
            )
            for i in range(2)
        ]
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            yield address, client, workers
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def test_worker_killed_mid_run_output_is_complete(tmp_path):
    with dask_processes(tmp_path, nanny=False) as (address, client, workers):
        _kill_a_worker_mid_run(tmp_path, address, client, workers)


def _kill_a_worker_mid_run(tmp_path: Path, address: str, client, workers: list) -> None:
    images = tmp_path / "images"
    expected = link_images(images, copies=2)
    assert len(expected) == 400
    output = tmp_path / "out.parquet"
    parts = tmp_path / "out.parquet.parts"
    pids = client.run(os.getpid)  # worker address -> process id
    assert sorted(pids.values()) == sorted(w.pid for w in workers)
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchclf",
            "run",
            str(images),
            str(output),
            "--scheduler",
            address,
            "--shard-size",
            "10",
            "--batch-size",
            "8",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: list(parts.glob("attempt-*.parquet")) or run.poll() is not None, 300, "a first part")
        assert run.poll() is None and not output.exists(), "the run ended before a worker could be killed"

        def busy_worker():
            processing = client.processing()
            return next((worker for worker in sorted(pids) if processing.get(worker)), None)

        victim = wait_for(busy_worker, 60, "a worker with a task in progress", interval=0.01)
        victim_process = next(w for w in workers if w.pid == pids[victim])
        os.kill(victim_process.pid, signal.SIGKILL)
        finished_at_kill = output.exists()
        stdout, stderr = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert victim_process.wait(timeout=10) == -signal.SIGKILL
    assert not finished_at_kill, "the run had finished when the worker was killed"
    assert run.returncode == 0, stderr[-3000:]
    table = pq.read_table(output)
    paths = table["path"].to_pylist()
    assert len(paths) == len(set(paths)) == 400
    assert sorted(paths) == expected
    assert set(table["status"].to_pylist()) == {"ok"}
    assert None not in table["label"].to_pylist()
    assert len(client.scheduler_info()["workers"]) == 1  # the survivor finished the job


# A poisonous file.

POISON = "poison.jpg"


class CrashOnFile(WorkerPlugin):
    """Make the worker process exit, as a crashing decoder would, when it decodes one file name."""

    name = "batchclf-test-crash-on-file"

    def __init__(self, file_name: str):
        self.file_name = file_name

    def setup(self, worker):
        import batchclf.worker

        original = batchclf.worker.decode_image
        file_name = self.file_name

        def decode_or_crash(path, preprocessing, *args):
            if os.path.basename(path) == file_name:
                os._exit(1)
            return original(path, preprocessing, *args)

        batchclf.worker.decode_image = decode_or_crash


@pytest.fixture(scope="module")
def poisoned_cluster():
    """Two nanny-managed workers (a crashed one is restarted) that die on ``POISON``."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # One failure is enough to call a task a crasher: keeps the bisection to a few worker restarts. A nanny
    # that cannot start its worker again (a loaded machine) fails the test after two minutes instead of hanging it.
    settings = {"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.no-workers-timeout": "120s"}
    with dask.config.set(settings):
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1"
            ) as cluster,
            Client(cluster) as client,
        ):
            client.register_plugin(CrashOnFile(POISON))
            yield client


@pytest.fixture(scope="module")
def poisoned_shard(tmp_path_factory):
    folder = tmp_path_factory.mktemp("poisoned")
    sources = sorted((require_datasets() / "imagenet_objects").glob("*.jpg"))[:11]
    names = [f"img{i:02d}.jpg" for i in range(len(sources))] + [POISON]
    for name, source in zip(names, sources + sources[:1]):
        (folder / name).symlink_to(source)
    return Shard(index=3, root=str(folder), paths=tuple(sorted(names)))


SPEC = resolve_model("efficientnet-lite0")
OPTIONS = ScoringOptions(batch_size=4, top_k=3)


def test_poisoned_shard_kills_its_task(poisoned_cluster, poisoned_shard):
    """Without isolation the whole shard fails: the poison is real."""
    future = poisoned_cluster.submit(score_shard, poisoned_shard, SPEC, OPTIONS, pure=False)
    with pytest.raises(Exception, match="KilledWorker|died|crash|lost"):
        future.result(timeout=300)


def test_isolation_makes_the_poisonous_file_one_error_row(poisoned_cluster, poisoned_shard):
    table = isolate_failing_shard(poisoned_cluster, poisoned_shard, SPEC, OPTIONS)
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == list(poisoned_shard.paths)
    poison = [r for r in rows if r["path"] == POISON]
    assert len(poison) == 1 and poison[0]["status"] == "error" and CRASH_MESSAGE in poison[0]["error"]
    assert poison[0]["bytes"] > 0 and poison[0]["model"] == SPEC.id
    others = [r for r in rows if r["path"] != POISON]
    assert all(r["status"] == "ok" and r["label"] for r in others)
    clean = Shard(index=3, root=poisoned_shard.root, paths=tuple(r["path"] for r in others))
    reference, _ = poisoned_cluster.submit(score_shard, clean, SPEC, OPTIONS, pure=False).result(timeout=300)
    assert [r["label"] for r in others] == reference["label"].to_pylist()
    assert table.schema.equals(reference.schema)


def test_isolation_does_not_hide_a_failure_that_is_not_a_file(poisoned_cluster, poisoned_shard, tmp_path):
    """When nothing can be scored (here: a model file that does not exist) the error is raised again."""
    broken = SPEC.__class__(
        id="missing",
        kind="keras",
        source=str(tmp_path / "missing.keras"),
        labels=SPEC.labels,
        preprocessing=SPEC.preprocessing,
    )
    original = RuntimeError("the shard failed")
    with pytest.raises(RuntimeError, match="the shard failed"):
        isolate_failing_shard(poisoned_cluster, poisoned_shard, broken, OPTIONS, error=original)


def test_poisonous_file_in_a_run_is_one_error_row(tmp_path):
    """End to end: the run isolates the shard that kills its workers and still exits 0."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((require_datasets() / "imagenet_objects").glob("*.jpg"))
    for i, source in enumerate(sources):
        (images / f"img{i:02d}.jpg").symlink_to(source)
    (images / POISON).symlink_to(sources[0])
    expected = sorted(p.name for p in images.iterdir())
    output = tmp_path / "out.parquet"
    fail_fast = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}  # keeps the worker restarts few
    with dask_processes(tmp_path, nanny=True, scheduler_environment=fail_fast) as (address, client, _):
        client.register_plugin(CrashOnFile(POISON))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "batchclf",
                "run",
                str(images),
                str(output),
                "--scheduler",
                address,
                "--shard-size",
                "8",
                "--retries",
                "0",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["path"]: row for row in pq.read_table(output).to_pylist()}
    assert sorted(rows) == expected
    assert rows[POISON]["status"] == "error" and CRASH_MESSAGE in rows[POISON]["error"]
    assert all(row["status"] == "ok" for path, row in rows.items() if path != POISON)


# Workers that die and never come back.

DIE_AND_STAY_DEAD = """
import os, threading, time

MARKER = os.environ["BATCHCLF_TEST_MARKER"]


def dask_setup(worker):
    if os.path.exists(MARKER):  # started again by its nanny: die before joining, every time
        os._exit(1)
    open(MARKER, "w").close()

    def die_in_the_first_task():
        while not worker.state.executing:
            time.sleep(0.02)
        os._exit(1)

    threading.Thread(target=die_in_the_first_task, daemon=True).start()
"""


def test_a_run_whose_workers_never_come_back_stops_and_resumes(tmp_path):
    """The embedded cluster's only worker dies in its first task and cannot start again: the run stops with
    one line after the no-workers timeout (no hang, no isolation of innocent files), and resumes later."""
    images = tmp_path / "images"
    expected = link_images(images, copies=1)[:24]
    for path in sorted(images.rglob("*.jpg")):
        if str(path.relative_to(images)) not in expected:
            path.unlink()
    preload = tmp_path / "die_and_stay_dead.py"
    preload.write_text(DIE_AND_STAY_DEAD)
    output = tmp_path / "out.parquet"
    command = ["run", str(images), str(output), "--workers", "1", "--shard-size", "8", "--no-progress"]
    dying = {
        "DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(preload)]),
        "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": "3s",
        "BATCHCLF_TEST_MARKER": str(tmp_path / "started-once"),
    }
    started = time.monotonic()
    stopped = run_cli(*command, "--summary", str(tmp_path / "summary.json"), env=dying, timeout=300)
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    assert (tmp_path / "started-once").exists(), "the worker never started"
    assert "no Dask worker has been alive for 3 s" in stopped.stderr and "run the same command again" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "isolating" not in stopped.stderr
    assert not output.exists()
    assert time.monotonic() - started < 240
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "no Dask worker" in summary["error"]

    resumed = run_cli(*command, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = pq.read_table(output)
    assert sorted(table["path"].to_pylist()) == expected
    assert set(table["status"].to_pylist()) == {"ok"}
