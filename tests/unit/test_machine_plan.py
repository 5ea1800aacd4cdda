"""The worker plan for a machine's cores, memory and GPUs, and the probes that read them (``machine.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchclf import machine
from batchclf.config import RunConfig
from batchclf.machine import (
    IN_PROCESS_MAX_CORES,
    WORKER_MEMORY_BYTES,
    WorkerPlan,
    available_cores,
    gpu_worker_env,
    infers_on_gpu,
    machine_plan,
    may_score_in_process,
    plan_workers,
    tensorflow_gpu_count,
    threads_for_worker,
    visible_gpus,
)

GIB = 1 << 30


def test_cpu_plan_is_one_single_threaded_worker_per_core():
    assert plan_workers(2, 24 * GIB) == WorkerPlan(2, inference_threads=1, decode_threads=1)
    assert plan_workers(8, 64 * GIB) == WorkerPlan(8, inference_threads=1, decode_threads=1)


def test_cpu_plan_fewer_workers_when_memory_is_short_and_threads_fill_the_cores():
    plan = plan_workers(8, 3 * WORKER_MEMORY_BYTES + 1)
    assert plan == WorkerPlan(3, inference_threads=2, decode_threads=2)
    assert plan_workers(4, 1 * GIB) == WorkerPlan(1, inference_threads=4, decode_threads=4)


def test_memory_for_exactly_n_workers_gives_n():
    assert plan_workers(16, 5 * WORKER_MEMORY_BYTES) == WorkerPlan(5, inference_threads=3, decode_threads=3)
    assert plan_workers(16, 5 * WORKER_MEMORY_BYTES - 1).workers == 4


def test_cpu_plan_honours_an_explicit_worker_count():
    assert plan_workers(2, 24 * GIB, workers=1) == WorkerPlan(1, inference_threads=2, decode_threads=2)
    assert plan_workers(2, 24 * GIB, workers=4) == WorkerPlan(4, inference_threads=1, decode_threads=1)


def test_an_explicit_worker_count_is_taken_even_when_memory_is_short():
    assert plan_workers(8, 1 * GIB, workers=4) == WorkerPlan(4, inference_threads=2, decode_threads=2)


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


@pytest.mark.parametrize(
    ("backend", "quantize", "gpus", "expected"),
    [
        ("auto", None, ("0",), True),
        ("tf", None, ("0",), True),
        ("litert", None, ("0",), False),
        ("auto", "int8", ("0",), False),
        ("tf", "int8", ("0",), False),
        ("auto", None, (), False),
        ("tf", None, (), False),
    ],
)
def test_only_unquantized_tensorflow_infers_on_a_visible_gpu(backend, quantize, gpus, expected):
    assert infers_on_gpu(backend, quantize, gpus) is expected


def test_threads_for_a_worker_on_a_shared_host():
    assert threads_for_worker(16, 4) == (4, 4)
    assert threads_for_worker(2, 4) == (1, 1)
    assert threads_for_worker(8, 0) == (8, 8)
    assert threads_for_worker(7, 2) == (3, 3)  # a core left over is not oversubscribed


def test_gpu_workers_each_see_only_their_device_and_grow_memory():
    env = gpu_worker_env(plan_workers(8, 64 * GIB, gpus=("0", "1"), workers=3))
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env.values()] == ["0", "1", "0"]
    assert len(env) == 3  # names stay unique when workers share a GPU
    assert all(e["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for e in env.values())


def test_a_cpu_plan_has_no_gpu_workers():
    assert gpu_worker_env(plan_workers(8, 64 * GIB)) == {}


# Visible GPUs: CUDA_VISIBLE_DEVICES, else the driver's list in /proc.


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


def test_cuda_visible_devices_wins_over_the_drivers_list(tmp_path, monkeypatch):
    for address in ("0000:3b:00.0", "0000:af:00.0"):
        (tmp_path / address).mkdir()
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, proc_folder=str(tmp_path)) == ()  # hidden on purpose
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1"}, proc_folder=str(tmp_path)) == ("1",)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")  # no environ given: this process's
    assert visible_gpus(proc_folder=str(tmp_path)) == ("1", "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus(proc_folder=str(tmp_path)) == ("0", "1")


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


# Whether a run may score in its own process: the plan is left to batchclf on the embedded cluster.


def _config(**fields) -> RunConfig:
    return RunConfig(input=Path("images"), output=Path("out.parquet"), **fields)


def test_a_run_on_the_embedded_cluster_may_score_in_process(monkeypatch):
    monkeypatch.setattr(machine.supervise, "can_supervise", lambda: True)
    assert may_score_in_process(_config())


@pytest.mark.parametrize(
    "fields",
    [
        {"workers": 2},  # --workers asks for worker processes
        {"workers": 1},
        {"scheduler": "tls://scheduler:8786"},  # an attached cluster has its own workers
        {"scheduler_file": Path("scheduler.json")},
        {"cluster": "slurm"},
    ],
)
def test_a_run_with_workers_or_another_cluster_does_not_score_in_process(fields, monkeypatch):
    monkeypatch.setattr(machine.supervise, "can_supervise", lambda: True)
    assert not may_score_in_process(_config(**fields))


def test_no_run_scores_in_process_where_the_job_cannot_be_watched(monkeypatch):
    monkeypatch.setattr(machine.supervise, "can_supervise", lambda: False)  # not Linux: no death signal for the job
    assert not may_score_in_process(_config())
