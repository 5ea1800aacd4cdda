"""The Dask clusters of ``cluster.py``: the embedded one (loopback, TLS, workers in a session of their own, pinned
to their GPU), the in-process one, and TensorFlow on a real GPU. The plan they run is unit-tested in
tests/unit/test_machine_plan.py."""

from __future__ import annotations

import os
import signal

import pytest

from batchclf.cluster import dask_setup
from batchclf.machine import IN_PROCESS_TASKS, WorkerPlan, tensorflow_gpu_count, visible_gpus

# The embedded cluster: loopback, TLS, workers outside the driver's process group, pinned to their GPU.


@pytest.fixture(scope="module")
def embedded():
    """The real embedded cluster, with made-up GPU ids so its pinning shows too (TensorFlow is not imported)."""
    from distributed import Client

    from batchclf.cluster import embedded_cluster

    plan = WorkerPlan(2, inference_threads=1, decode_threads=2, gpus=("5", "7"))
    with embedded_cluster(plan, "127.0.0.1:0") as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        yield cluster, client


@pytest.mark.slow
def test_embedded_workers_are_pinned_to_their_gpu_and_outside_the_drivers_session(embedded):
    def worker_view():  # local, so it is shipped by value: workers do not import the tests
        return {
            "gpu": (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")),
            "cache": os.environ.get("BATCHCLF_CACHE"),
            "session": os.getsid(0),
            "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
        }

    _, client = embedded
    seen = list(client.run(worker_view).values())
    assert sorted(view["gpu"] for view in seen) == [("5", "true"), ("7", "true")]
    assert all(view["cache"] == os.environ["BATCHCLF_CACHE"] for view in seen)  # the test session's cache
    assert all(view["session"] != os.getsid(0) for view in seen)  # a terminal's Ctrl-C reaches the driver only
    assert all(view["sigint_ignored"] for view in seen)  # and a SIGINT sent to every process is ignored


@pytest.mark.slow
def test_embedded_cluster_listens_on_loopback_only(embedded):
    import psutil

    cluster, client = embedded
    assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
    assert client.dashboard_link.startswith("http://127.0.0.1:")
    assert all(address.startswith("tls://127.0.0.1:") for address in client.scheduler_info()["workers"])
    me = psutil.Process()
    listening = [
        connection.laddr.ip
        for process in [me, *me.children(recursive=True)]
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]
    assert listening and set(listening) == {"127.0.0.1"}


@pytest.mark.slow
def test_embedded_cluster_fails_its_tasks_after_two_minutes_without_a_worker(embedded):
    """Workers that all die and never come back stop the run (``dispatch`` says so) instead of hanging it."""
    from batchclf.cluster import NO_WORKERS_TIMEOUT

    cluster, _ = embedded
    assert NO_WORKERS_TIMEOUT == "120s" and cluster.scheduler.no_workers_timeout == 120


@pytest.mark.slow
def test_embedded_cluster_refuses_clients_without_its_certificate(embedded):
    from distributed import Client
    from distributed.security import Security

    cluster, _ = embedded
    port = cluster.scheduler_address.rsplit(":", 1)[1]
    with pytest.raises((OSError, TimeoutError)):
        Client(f"tcp://127.0.0.1:{port}", timeout="5s")  # plain TCP: refused
    with pytest.raises((OSError, TimeoutError)):
        Client(cluster.scheduler_address, security=Security.temporary(), timeout="5s")  # TLS, not our CA


@pytest.mark.slow
def test_embedded_cluster_stops_its_worker_processes():
    import psutil
    from distributed import Client

    from batchclf.cluster import embedded_cluster

    with embedded_cluster(WorkerPlan(1, 1, 1), "127.0.0.1:0") as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=120)
        pids = [client.run(os.getpid)[address] for address in client.scheduler_info()["workers"]]
        nannies = [worker.process.pid for worker in cluster.workers.values()]
    assert not [pid for pid in pids + nannies if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


@pytest.mark.slow
def test_in_process_cluster_starts_no_process_and_listens_on_loopback_only():
    """The in-process cluster: the worker is in this process, the dashboard link names where it listens."""
    import psutil
    from distributed import Client

    from batchclf.cluster import in_process_cluster

    def listening() -> set:
        return {c.laddr for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}

    children, sockets = {child.pid for child in psutil.Process().children(recursive=True)}, listening()
    with in_process_cluster(WorkerPlan(1, 2, 2, in_process=True), "127.0.0.1:0") as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=30)
        assert set(client.run(os.getpid).values()) == {os.getpid()}
        assert list(client.nthreads().values()) == [IN_PROCESS_TASKS]
        assert cluster.scheduler_address.startswith("inproc://")
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        opened = listening() - sockets
        started = {child.pid for child in psutil.Process().children(recursive=True)} - children
    assert opened and {address.ip for address in opened} == {"127.0.0.1"}
    assert not started


def test_in_process_cluster_runs_no_profiler_and_monitors_sparingly():
    """The in-process worker shares the cores with the scoring: Dask's 10 ms profiler is off, its system
    monitors look every 2 s, its event loops check their latency every second rather than every 20 ms,
    and the settings do not leak to clusters made after it."""
    import dask
    from distributed import Client

    from batchclf.cluster import in_process_cluster

    with in_process_cluster(WorkerPlan(1, 2, 2, in_process=True), None) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=30)
        worker = next(iter(cluster.workers.values()))
        assert "profile" not in worker.periodic_callbacks
        assert worker.periodic_callbacks["monitor"].callback_time == 2000
        assert cluster.scheduler.periodic_callbacks["monitor"].callback_time == 2000
        assert worker.periodic_callbacks["tick"].callback_time == 1000
        assert cluster.scheduler.periodic_callbacks["tick"].callback_time == 1000
    assert dask.config.get("distributed.worker.profile.enabled") is True
    assert dask.config.get("distributed.admin.tick.interval") == "20ms"


def test_worker_preload_ignores_sigint():
    previous = signal.getsignal(signal.SIGINT)
    try:
        dask_setup(worker=None)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# A GPU node: TensorFlow on the GPU agrees with LiteRT.


@pytest.mark.slow
@pytest.mark.skipif(not visible_gpus(), reason="no GPU visible (CUDA_VISIBLE_DEVICES, /proc/driver/nvidia/gpus)")
def test_tensorflow_on_the_gpu_agrees_with_litert(datasets, tmp_path):
    import pyarrow.parquet as pq
    from conftest import run_cli

    from batchclf.cluster import connect

    if not tensorflow_gpu_count():
        pytest.skip("TensorFlow cannot use the visible GPU: pip install 'batchclf[gpu]'")
    gpus = visible_gpus()
    with connect(backend="tf") as (client, plan):
        assert plan.workers == len(gpus) and plan.gpus == gpus  # one worker per GPU
        seen = client.run(lambda: (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["TF_FORCE_GPU_ALLOW_GROWTH"]))
    assert sorted(seen.values()) == sorted((gpu, "true") for gpu in gpus)  # pinned, memory growth on
    labels = {}
    for backend in ("tf", "litert"):
        output = tmp_path / f"{backend}.parquet"
        result = run_cli("run", str(datasets), str(output), "--backend", backend, "--no-progress")
        assert result.returncode == 0, result.stderr
        table = pq.read_table(output, columns=["path", "label"])
        labels[backend] = dict(zip(table.column("path").to_pylist(), table.column("label").to_pylist()))
    assert labels["tf"].keys() == labels["litert"].keys() and len(labels["tf"]) >= 200
    agree = sum(labels["tf"][path] == labels["litert"][path] for path in labels["tf"])
    assert agree / len(labels["tf"]) >= 0.999, f"{agree} of {len(labels['tf'])} top-1 classes agree"
