"""The machine a run has: its cores, memory and GPUs, and the worker plan they give. No Dask here.

Worker sizing: one worker process per core while memory allows (TensorFlow wants processes, not
threads, and two single-threaded LiteRT interpreters beat one with two threads), each with one Dask
thread; inference and decoding thread pools are set from the worker's share of its host's cores.
On a GPU machine whose run infers with TensorFlow: one worker per visible GPU, each pinned to its GPU
with ``CUDA_VISIBLE_DEVICES``, its share of the cores decoding for it.

On a small CPU machine (``IN_PROCESS_MAX_CORES``) whose job ``batchclf run`` supervises, the plan is
one worker in the job's own process instead (``cluster.in_process_cluster``), running
``IN_PROCESS_TASKS`` tasks at a time on one shared model with all the cores' threads.

The probes (``available_cores``, ``total_memory``, ``visible_gpus``, ``tensorflow_gpu_count``) read the
machine; ``plan_workers`` is a pure function of what they read.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from . import supervise

WORKER_MEMORY_BYTES = 1_500_000_000  # a TensorFlow worker with one model peaks near 1.2 GB
IN_PROCESS_MAX_CORES = 4  # past this, one process's GIL would be shared by too many threads (measured on 2)
IN_PROCESS_TASKS = 2  # tasks the in-process worker runs at once, on one shared model


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    inference_threads: int
    decode_threads: int
    gpus: tuple[str, ...] = ()
    in_process: bool = False  # one worker in the job's own process (see the module's docstring)


def available_cores() -> int:
    """Cores this process may use: the CPU affinity and the cgroup CPU quota (a pod limited to 2 CPUs
    on a 64-core node gets 2), as Dask counts them for ``dask.system.CPU_COUNT``, read now."""
    from dask.system import cpu_count

    return cpu_count()


def visible_gpus(environ: dict | None = None, proc_folder: str = "/proc/driver/nvidia/gpus") -> tuple[str, ...]:
    """CUDA device ids a worker may be pinned to, without importing TensorFlow on the driver.

    From ``CUDA_VISIBLE_DEVICES`` when set (CUDA stops at the first invalid entry such as ``-1``);
    else one index per GPU the driver lists in /proc (its entries are PCI addresses, not CUDA ids).
    """
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        ids = []
        for entry in (v.strip() for v in value.split(",")):
            if not entry or entry.startswith("-"):
                break
            ids.append(entry)
        return tuple(ids)
    try:
        return tuple(str(i) for i in range(len(os.listdir(proc_folder))))
    except OSError:
        return ()


def infers_on_gpu(backend: str, quantize: str | None, gpus: tuple[str, ...]) -> bool:
    """Whether ``backend``/``quantize`` put inference on the visible GPUs: only unquantized TensorFlow
    (``auto`` picks it when a GPU is visible); LiteRT and int8 models run on the CPU."""
    return bool(gpus) and backend in ("auto", "tf") and not quantize


def tensorflow_gpu_count() -> int:
    """GPUs TensorFlow can use, asked in a child process so the driver never imports TensorFlow.

    A CPU-only TensorFlow build (no ``batchclf[gpu]``) sees none although the driver lists the GPUs.
    """
    command = [sys.executable, "-c", "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        )
        return int(result.stdout.split()[-1]) if result.returncode == 0 else 0
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return 0


def may_score_in_process(config) -> bool:
    """Whether the run of ``config`` (a ``RunConfig``) may score in a worker thread of its own process,
    watched by ``supervise.py``: only on the embedded cluster with the worker count left to the plan
    (not an attached or SLURM cluster, not ``--workers``), where the job can be watched (Linux).

    ``plan_workers`` then takes the in-process worker or not, from the machine and the backend.
    """
    attached = config.scheduler or config.scheduler_file or config.cluster != "local"
    return not attached and config.workers is None and supervise.can_supervise()


def plan_workers(
    cores: int,
    memory_bytes: int,
    gpus: tuple[str, ...] = (),
    workers: int | None = None,
    backend: str = "auto",
    quantize: str | None = None,
    in_process: bool = False,
) -> WorkerPlan:
    """How many worker processes, and how many threads each, for one machine and the backend that will run.

    ``gpus`` are the devices TensorFlow can use; they shape the plan only when inference runs on them.
    ``in_process`` allows one in-process worker: taken on a CPU machine of at most ``IN_PROCESS_MAX_CORES``
    cores when the worker count is left to the plan and the backend is not TensorFlow (a 1.2 GB
    runtime that belongs in a worker process).
    """
    if infers_on_gpu(backend, quantize, gpus):  # the GPU does the inference; the cores per GPU decode for it
        count = workers or len(gpus)
        share = max(1, cores // count)
        assigned = tuple(gpus[i % len(gpus)] for i in range(count))  # more workers than GPUs: they share
        return WorkerPlan(count, inference_threads=1, decode_threads=max(2, share), gpus=assigned)
    if in_process and workers is None and backend != "tf" and cores <= IN_PROCESS_MAX_CORES:
        return WorkerPlan(1, inference_threads=cores, decode_threads=cores, in_process=True)
    by_memory = max(1, memory_bytes // WORKER_MEMORY_BYTES)
    count = workers or max(1, min(cores, by_memory))
    share = max(1, cores // count)
    return WorkerPlan(count, inference_threads=share, decode_threads=max(1, share))


def machine_plan(
    workers: int | None = None, backend: str = "auto", quantize: str | None = None, in_process: bool = False
) -> WorkerPlan:
    """The plan for this machine: its cores and memory, and its GPUs if the run's inference uses them."""
    gpus = visible_gpus()
    if infers_on_gpu(backend, quantize, gpus) and not tensorflow_gpu_count():
        gpus = ()  # TensorFlow cannot use them: it runs on the CPU, and so does the plan
    return plan_workers(available_cores(), total_memory(), gpus, workers, backend, quantize, in_process)


def threads_for_worker(cores: int, workers_on_host: int) -> tuple[int, int]:
    """Inference and decode threads for a worker sharing its host with ``workers_on_host`` others."""
    share = max(1, cores // max(1, workers_on_host))
    return share, share


def total_memory() -> int:
    import psutil

    return psutil.virtual_memory().total


def gpu_worker_env(plan: WorkerPlan) -> dict[str, dict[str, str]]:
    """Worker name → environment: each worker sees only its own GPU and grows its memory as needed."""
    return {
        f"gpu{index}-{gpu}": {"CUDA_VISIBLE_DEVICES": gpu, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
        for index, gpu in enumerate(plan.gpus)
    }
