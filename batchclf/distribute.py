"""Where shards run: an embedded LocalCluster sized to the machine, or an existing Dask cluster.

Worker sizing: one worker process per core while memory allows (TensorFlow wants processes, not
threads, and two single-threaded LiteRT interpreters beat one with two threads), each with one Dask
thread; inference and decoding thread pools are set from the worker's share of its host's cores.
On a GPU machine: one worker per visible GPU, each pinned to its GPU with ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

from .errors import UsageError

WORKER_MEMORY_BYTES = 1_500_000_000  # a TensorFlow worker with one model peaks near 1.2 GB


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    inference_threads: int
    decode_threads: int
    gpus: tuple[str, ...] = ()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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


def plan_workers(cores: int, memory_bytes: int, gpus: tuple[str, ...] = (), workers: int | None = None) -> WorkerPlan:
    """How many worker processes, and how many threads each, for one machine."""
    if gpus:  # the GPU does the inference; the worker's cores decode for it
        count = workers or len(gpus)
        share = max(1, cores // count)
        assigned = tuple(gpus[i % len(gpus)] for i in range(count))  # more workers than GPUs: they share
        return WorkerPlan(count, inference_threads=1, decode_threads=max(2, share), gpus=assigned)
    by_memory = max(1, memory_bytes // WORKER_MEMORY_BYTES)
    count = workers or max(1, min(cores, by_memory))
    share = max(1, cores // count)
    return WorkerPlan(count, inference_threads=share, decode_threads=max(1, share))


def threads_for_worker(cores: int, workers_on_host: int) -> tuple[int, int]:
    """Inference and decode threads for a worker sharing its host with ``workers_on_host`` others."""
    share = max(1, cores // max(1, workers_on_host))
    return share, share


def total_memory() -> int:
    import psutil

    return psutil.virtual_memory().total


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    workers: int | None = None,
    dashboard_address: str = ":8787",
    cluster_config: str | os.PathLike | None = None,
    worker_timeout: float = 3600,
) -> Iterator[tuple[object, WorkerPlan | None]]:
    """A Dask client: on SLURM jobs (``cluster_config``), attached to ``scheduler``/``scheduler_file``,
    or on a new LocalCluster."""
    from distributed import Client, LocalCluster

    if cluster_config is not None:  # --cluster slurm: dask-jobqueue submits the workers as SLURM jobs
        with slurm_cluster(cluster_config) as cluster, Client(cluster) as client:
            client.wait_for_workers(1, timeout=worker_timeout)
            yield client, None
        return
    if scheduler or scheduler_file:
        try:
            client = Client(address=scheduler, scheduler_file=scheduler_file, timeout="30s")
        except (OSError, TimeoutError, ValueError) as error:
            where = scheduler or scheduler_file
            raise UsageError(f"cannot reach the Dask scheduler at {where}: {error}") from None
        with client:
            yield client, None
        return
    plan = plan_workers(available_cores(), total_memory(), visible_gpus(), workers)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with contextlib.ExitStack() as stack:
        if plan.gpus:
            cluster = stack.enter_context(_gpu_cluster(plan, dashboard_address))
        else:
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=plan.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=dashboard_address,
                    silence_logs=logging.ERROR,
                )
            )
        client = stack.enter_context(Client(cluster))
        yield client, plan


def gpu_worker_env(plan: WorkerPlan) -> dict[str, dict[str, str]]:
    """Worker name → environment: each worker sees only its own GPU and grows its memory as needed."""
    return {
        f"gpu{index}-{gpu}": {"CUDA_VISIBLE_DEVICES": gpu, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
        for index, gpu in enumerate(plan.gpus)
    }


@contextlib.contextmanager
def _gpu_cluster(plan: WorkerPlan, dashboard_address: str):
    """A scheduler and one nanny per GPU, each worker seeing only its own device."""
    from distributed import Nanny, Scheduler, SpecCluster

    env_by_worker = gpu_worker_env(plan)
    workers = {name: {"cls": Nanny, "options": {"nthreads": 1, "env": env}} for name, env in env_by_worker.items()}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": dashboard_address}}
    with SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR) as cluster:
        yield cluster


def worker_hosts(client) -> dict[str, tuple[int, int]]:
    """For each worker address: (cores on its host, workers on its host)."""
    cores = client.run(available_cores)
    per_host = Counter(urlparse(address).hostname for address in cores)
    return {address: (count, per_host[urlparse(address).hostname]) for address, count in cores.items()}


def submit_shards(client, function: Callable, shards, *args, retries: int = 2, key_prefix: str = "score") -> list:
    """One future per shard, with retries; keys name the shard so the dashboard is readable."""
    return [
        client.submit(function, shard, *args, key=f"{key_prefix}-{shard.name}", retries=retries, pure=False)
        for shard in shards
    ]


def slurm_cluster(config_file: str | os.PathLike):
    """A dask-jobqueue ``SLURMCluster`` set up from a YAML file, asked for its ``batchclf.jobs`` jobs.

    The file holds the usual dask-jobqueue settings under ``jobqueue: slurm:`` (cores, memory,
    walltime, queue, ...; see ``jobs/slurm/jobqueue.yaml``) and how many SLURM jobs to ask for under
    ``batchclf: jobs:``. Each job runs ``processes`` single-threaded workers. Use it as a context
    manager so the jobs are cancelled when the run ends.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise UsageError("--cluster slurm needs dask-jobqueue: pip install 'batchclf[slurm]'") from None
    import yaml

    try:
        with open(config_file, encoding="utf-8") as stream:
            settings = yaml.safe_load(stream) or {}
    except OSError as error:
        raise UsageError(f"cannot read the cluster file {config_file}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{config_file} is not valid YAML: {error}") from None
    slurm = (settings.get("jobqueue") or {}).get("slurm")
    if not isinstance(slurm, dict) or not slurm.get("cores") or not slurm.get("memory"):
        raise UsageError(
            f"{config_file}: give at least jobqueue: slurm: cores and memory (see jobs/slurm/jobqueue.yaml)"
        )
    jobs = int((settings.get("batchclf") or {}).get("jobs", 1))
    if jobs < 1:
        raise UsageError(f"{config_file}: batchclf: jobs must be a positive number, got {jobs}")
    # Keyword arguments, not dask.config: dask-jobqueue reads its config again each time it makes a job.
    options = {key.replace("-", "_"): value for key, value in slurm.items()}
    if "name" in options:  # the config file's "name" is the keyword "job_name"
        options["job_name"] = options.pop("name")
    cluster = SLURMCluster(**options)
    cluster.scale(jobs=jobs)
    return cluster
