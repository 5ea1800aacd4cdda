"""Worker sizing and GPU assignment: pure functions, plus one cluster that pins workers to fake GPUs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from batchclf import backends, cluster, machine
from batchclf.machine import (
    IN_PROCESS_MAX_CORES,
    WORKER_MEMORY_BYTES,
    WorkerPlan,
    available_cores,
    gpu_worker_env,
    machine_plan,
    plan_workers,
    tensorflow_gpu_count,
    threads_for_worker,
    visible_gpus,
)
from batchclf.shard import balanced_shard_size, make_shards

GIB = 1 << 30


def test_cpu_plan_is_one_single_threaded_worker_per_core():
    assert plan_workers(2, 24 * GIB) == WorkerPlan(2, inference_threads=1, decode_threads=1)
    assert plan_workers(8, 64 * GIB) == WorkerPlan(8, inference_threads=1, decode_threads=1)


def test_cpu_plan_fewer_workers_when_memory_is_short_and_threads_fill_the_cores():
    plan = plan_workers(8, 3 * WORKER_MEMORY_BYTES + 1)
    assert plan == WorkerPlan(3, inference_threads=2, decode_threads=2)
    assert plan_workers(4, 1 * GIB) == WorkerPlan(1, inference_threads=4, decode_threads=4)


def test_cpu_plan_honours_an_explicit_worker_count():
    assert plan_workers(2, 24 * GIB, workers=1) == WorkerPlan(1, inference_threads=2, decode_threads=2)
    assert plan_workers(2, 24 * GIB, workers=4) == WorkerPlan(4, inference_threads=1, decode_threads=1)


def test_a_small_cpu_machine_scores_in_process_when_the_job_is_supervised():
    """One worker in the job's process with all the cores' threads, only where the command watches it."""
    assert plan_workers(2, 24 * GIB, in_process=True) == WorkerPlan(1, 2, 2, in_process=True)
    assert plan_workers(IN_PROCESS_MAX_CORES, GIB, in_process=True).in_process
    assert plan_workers(2, 24 * GIB) == WorkerPlan(2, 1, 1)  # not supervised (classify()): worker processes


@pytest.mark.parametrize(
    "arguments",
    [
        {"cores": IN_PROCESS_MAX_CORES + 1},  # one GIL for that many threads: processes
        {"workers": 2},  # an explicit count means worker processes
        {"workers": 1},
        {"backend": "tf"},  # TensorFlow belongs in a worker process
        {"gpus": ("0",)},  # the GPU plan
    ],
)
def test_in_process_is_only_for_a_small_cpu_machine_with_the_plan_left_to_batchclf(arguments):
    cores = arguments.pop("cores", 2)
    plan = plan_workers(cores, 24 * GIB, in_process=True, **arguments)
    assert not plan.in_process
    assert plan == plan_workers(cores, 24 * GIB, **arguments)


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 6, 8, 16, 64])
@pytest.mark.parametrize("memory", [GIB, 4 * GIB, 24 * GIB, 256 * GIB])
def test_cpu_plan_never_oversubscribes_nor_leaves_cores_idle(cores, memory):
    plan = plan_workers(cores, memory)
    assert plan.gpus == ()
    assert plan.workers * plan.inference_threads <= cores
    assert plan.workers * plan.inference_threads > cores - plan.workers  # at most one idle core per worker
    assert plan.decode_threads == plan.inference_threads


def test_gpu_plan_is_one_worker_per_gpu_with_the_cores_decoding():
    plan = plan_workers(16, 64 * GIB, gpus=("0", "1", "2", "3"))
    assert plan == WorkerPlan(4, inference_threads=1, decode_threads=4, gpus=("0", "1", "2", "3"))
    assert plan_workers(2, 64 * GIB, gpus=("0", "1", "2", "3")).decode_threads == 2  # at least two decoders


def test_gpu_plan_with_more_or_fewer_workers_than_gpus():
    assert plan_workers(8, 64 * GIB, gpus=("0", "1"), workers=4).gpus == ("0", "1", "0", "1")
    assert plan_workers(8, 64 * GIB, gpus=("4", "7"), workers=1).gpus == ("4",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,1", ("0", "1")),
        (" 2 , 3 ", ("2", "3")),
        ("", ()),
        ("-1", ()),
        ("1,-1,0", ("1",)),  # CUDA ignores everything after an invalid entry
        ("GPU-8f6e2a1c,GPU-11aa", ("GPU-8f6e2a1c", "GPU-11aa")),
        ("3,", ("3",)),
    ],
)
def test_visible_gpus_parses_cuda_visible_devices(value, expected, tmp_path):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}, proc_folder=str(tmp_path)) == expected


def test_visible_gpus_from_the_driver_are_cuda_indices_not_pci_addresses(tmp_path):
    for address in ("0000:3b:00.0", "0000:af:00.0"):
        (tmp_path / address).mkdir()
    assert visible_gpus({}, proc_folder=str(tmp_path)) == ("0", "1")
    assert visible_gpus({}, proc_folder=str(tmp_path / "missing")) == ()


def test_gpu_workers_each_see_only_their_device_and_grow_memory():
    env = gpu_worker_env(plan_workers(8, 64 * GIB, gpus=("0", "1"), workers=3))
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env.values()] == ["0", "1", "0"]
    assert len(env) == 3  # names stay unique when workers share a GPU
    assert all(e["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for e in env.values())


def test_threads_for_a_worker_on_a_shared_host():
    assert threads_for_worker(16, 4) == (4, 4)
    assert threads_for_worker(2, 4) == (1, 1)
    assert threads_for_worker(8, 0) == (8, 8)


def test_auto_backend_on_a_cpu_machine_is_litert(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(backends, "gpu_count", lambda: pytest.fail("no GPU is visible, TensorFlow need not be asked"))
    assert backends.choose_backend("auto") == "litert"
    assert backends.choose_backend("tf") == "tf"


def test_auto_backend_asks_tensorflow_only_when_a_gpu_is_visible(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(backends, "gpu_count", lambda: 1)
    assert backends.choose_backend("auto") == "tf"
    assert backends.choose_backend("auto", quantize="int8") == "litert"
    monkeypatch.setattr(backends, "gpu_count", lambda: 0)  # a CPU-only TensorFlow build
    assert backends.choose_backend("auto") == "litert"


@pytest.mark.parametrize(
    ("count", "shard_size", "expected"),
    [
        (1000, 1024, 64),
        (3000, 1024, 192),
        (400, 1024, 32),
        (20000, 1024, 1024),
        (100, 1024, 32),
        (1000, 8, 8),
        (0, 1024, 32),
    ],
)
def test_small_inputs_are_cut_into_enough_shards(count, shard_size, expected):
    assert balanced_shard_size(count, shard_size) == expected


def test_fewer_shards_suffice_for_the_in_process_worker():
    """Its two tasks share one model: four shards keep it busy, where separate workers want sixteen."""
    assert balanced_shard_size(400, 1024, min_shards=4) == 128
    assert balanced_shard_size(400, 1024) == 32
    assert balanced_shard_size(100_000, 1024, min_shards=4) == 1024


def test_balanced_shards_split_evenly_between_two_workers():
    paths = [f"{i:05d}.jpg" for i in range(3000)]
    shards = make_shards("/r", paths, balanced_shard_size(len(paths), 1024))
    sizes = [len(s.paths) for s in shards]
    assert len(shards) >= 16 and sum(sizes) == 3000
    assert sum(sizes[0::2]) / sum(sizes[1::2]) == pytest.approx(1.0, abs=0.1)


# The cores a process may use: affinity and cgroup CPU quota.


def test_cores_follow_a_cgroup_cpu_quota(monkeypatch):
    import dask.system

    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(dask.system, "_try_extract_cgroup_cpu_quota", lambda: (None, None))
    assert available_cores() == affinity
    monkeypatch.setattr(
        dask.system, "_try_extract_cgroup_cpu_quota", lambda: (100_000, 100_000)
    )  # cpu.max "100000 100000"
    assert available_cores() == 1
    monkeypatch.setattr(dask.system, "_try_extract_cgroup_cpu_quota", lambda: (150_000, 100_000))  # 1.5 CPUs
    assert available_cores() == min(affinity, 2)


def test_a_quota_sizes_the_plan_of_a_big_node(monkeypatch):
    """A pod limited to 2 CPUs on a 64-core node: two single-threaded workers, not 64."""
    import dask.system

    monkeypatch.setattr(dask.system, "_try_extract_cgroup_cpu_quota", lambda: (200_000, 100_000))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(dask.system.psutil.Process, "cpu_affinity", lambda self: list(range(64)))
    monkeypatch.setattr(machine, "visible_gpus", lambda: ())
    monkeypatch.setattr(machine, "total_memory", lambda: 256 * GIB)
    assert machine_plan() == WorkerPlan(2, inference_threads=1, decode_threads=1)


# The plan follows the backend that will run.


def _gpu_node(monkeypatch, tensorflow_gpus: int) -> None:
    monkeypatch.setattr(machine, "available_cores", lambda: 16)
    monkeypatch.setattr(machine, "total_memory", lambda: 64 * GIB)
    monkeypatch.setattr(machine, "visible_gpus", lambda: ("0", "1"))
    monkeypatch.setattr(machine, "tensorflow_gpu_count", lambda: tensorflow_gpus)


def test_a_gpu_node_gets_the_gpu_plan_only_for_tensorflow_on_the_gpu(monkeypatch):
    _gpu_node(monkeypatch, tensorflow_gpus=2)
    gpu_plan = WorkerPlan(2, inference_threads=1, decode_threads=8, gpus=("0", "1"))
    cpu_plan = WorkerPlan(16, inference_threads=1, decode_threads=1)
    assert machine_plan(backend="auto") == gpu_plan
    assert machine_plan(backend="tf") == gpu_plan
    assert machine_plan(backend="litert") == cpu_plan
    assert machine_plan(backend="auto", quantize="int8") == cpu_plan


def test_a_gpu_tensorflow_cannot_use_gets_the_cpu_plan(monkeypatch):
    _gpu_node(monkeypatch, tensorflow_gpus=0)  # a CPU-only TensorFlow build
    assert machine_plan(backend="auto") == WorkerPlan(16, inference_threads=1, decode_threads=1)
    assert machine_plan(backend="tf").gpus == ()


def test_tensorflow_is_asked_only_when_inference_could_use_a_gpu(monkeypatch):
    _gpu_node(monkeypatch, tensorflow_gpus=2)
    monkeypatch.setattr(machine, "tensorflow_gpu_count", lambda: pytest.fail("LiteRT runs on the CPU"))
    assert machine_plan(backend="litert").gpus == ()
    monkeypatch.setattr(machine, "visible_gpus", lambda: ())
    assert machine_plan(backend="auto").gpus == ()


def test_plan_workers_takes_the_backend():
    gpus = ("0", "1", "2", "3")
    assert plan_workers(16, 64 * GIB, gpus, backend="litert") == plan_workers(16, 64 * GIB)
    assert plan_workers(16, 64 * GIB, gpus, quantize="int8") == plan_workers(16, 64 * GIB)
    assert plan_workers(16, 64 * GIB, gpus, backend="tf").gpus == gpus


def test_on_a_gpu_the_cores_per_gpu_decode():
    """Inference is the GPU's; each worker's decode pool gets its GPU's share of the cores."""
    assert plan_workers(32, 256 * GIB, ("0", "1", "2", "3")).decode_threads == 8
    assert plan_workers(6, 64 * GIB, ("0", "1")).decode_threads == 3
    assert plan_workers(2, 64 * GIB, ("0",)).decode_threads == 2


def test_tensorflow_gpu_count_runs_in_a_child_process(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="2\n", stderr="")

    monkeypatch.setattr(machine.subprocess, "run", fake_run)
    assert tensorflow_gpu_count() == 2
    assert calls[0][0] == sys.executable and "list_physical_devices('GPU')" in calls[0][-1]
    monkeypatch.setattr(machine.subprocess, "run", lambda c, **k: subprocess.CompletedProcess(c, 1, "", "boom"))
    assert tensorflow_gpu_count() == 0


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
        assert list(client.nthreads().values()) == [machine.IN_PROCESS_TASKS]
        assert cluster.scheduler_address.startswith("inproc://")
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        opened = listening() - sockets
        started = {child.pid for child in psutil.Process().children(recursive=True)} - children
    assert opened and {address.ip for address in opened} == {"127.0.0.1"}
    assert not started


def test_worker_preload_ignores_sigint():
    previous = signal.getsignal(signal.SIGINT)
    try:
        cluster.dask_setup(worker=None)
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
