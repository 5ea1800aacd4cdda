"""Worker sizing and GPU assignment: pure functions, plus one cluster that pins workers to fake GPUs."""

from __future__ import annotations

import os

import pytest

from batchclf import backends
from batchclf.distribute import (
    WORKER_MEMORY_BYTES,
    WorkerPlan,
    gpu_worker_env,
    plan_workers,
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


def test_balanced_shards_split_evenly_between_two_workers():
    paths = [f"{i:05d}.jpg" for i in range(3000)]
    shards = make_shards("/r", paths, balanced_shard_size(len(paths), 1024))
    sizes = [len(s.paths) for s in shards]
    assert len(shards) >= 16 and sum(sizes) == 3000
    assert sum(sizes[0::2]) / sum(sizes[1::2]) == pytest.approx(1.0, abs=0.1)


@pytest.mark.slow
def test_gpu_cluster_pins_each_worker_to_its_device(monkeypatch):
    """The real SpecCluster, with made-up device ids: each worker process sees only its own."""
    from distributed import Client

    from batchclf.distribute import _gpu_cluster

    plan = WorkerPlan(2, inference_threads=1, decode_threads=2, gpus=("5", "7"))
    with _gpu_cluster(plan, ":0") as cluster, Client(cluster) as client:
        seen = client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")))
    assert sorted(seen.values()) == [("5", "true"), ("7", "true")]
