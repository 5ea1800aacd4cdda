"""Where shards run: an embedded Dask cluster sized to the machine (``machine.py`` plans it), or an existing one.

On a small CPU machine (``machine.IN_PROCESS_MAX_CORES``) whose job ``batchclf run`` supervises, the
embedded cluster is in-process: the scheduler and one worker live in the job's own process and talk
over ``inproc://``, so no process is started and nothing listens but the dashboard. That worker runs
two tasks at a time (a shard decodes while the one before finishes) on one shared model with all the
cores' inference threads and a decode pool as wide. Measured end to end on 2 cores, it is 30-50 %
faster than worker processes (docs/performance.md); a crash in it is caught by ``supervise.py``.

The embedded cluster of worker processes listens on loopback only and speaks TLS with throw-away
certificates, so no other user of the machine can submit tasks to it. Its workers are child processes in
a session of their own, started as ``python -m distributed.cli.dask_spec``: a Ctrl-C at the terminal
reaches only the driver, and they never import the caller's ``__main__`` (``batchclf.classify()`` works
from a plain script).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

from distributed import SpecCluster
from distributed.deploy.spec import ProcessInterface

from .config import DEFAULT_DASHBOARD_ADDRESS
from .errors import BatchclfError, UsageError
from .machine import (
    IN_PROCESS_TASKS,
    WORKER_MEMORY_BYTES,
    WorkerPlan,
    available_cores,
    gpu_worker_env,
    machine_plan,
    total_memory,
)
from .runlog import forward_warnings
from .store.parquet import answer_arrows_pandas_probe

LOOPBACK = "127.0.0.1"
WORKER_START_TIMEOUT = 120  # seconds for the first worker of the embedded cluster to join
NANNY_STOP_TIMEOUT = 5  # seconds a nanny has to stop its worker cleanly before it is killed
# How long the embedded cluster's tasks wait with no worker alive (each died and its nanny could not start it
# again) before they fail and the run stops, its finished shards kept: a worker restart takes seconds, so
# two minutes without one is a cluster that will not come back. ``distributed.scheduler.no-workers-timeout``
# in the user's Dask config takes precedence.
NO_WORKERS_TIMEOUT = "120s"


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    workers: int | None = None,
    dashboard_address: str | None = DEFAULT_DASHBOARD_ADDRESS,
    cluster_config: str | os.PathLike | None = None,
    worker_timeout: float = 3600,
    backend: str = "auto",
    quantize: str | None = None,
    in_process: bool = False,
    plan: WorkerPlan | None = None,
) -> Iterator[tuple[object, WorkerPlan | None]]:
    """A Dask client: on SLURM jobs (``cluster_config``), attached to ``scheduler``/``scheduler_file``,
    or on a new embedded cluster run to ``plan``, or planned here for ``backend``/``quantize`` (in-process
    if ``in_process`` allows and the plan takes it). ``dashboard_address`` None: no dashboard."""
    from distributed import Client

    if cluster_config is not None:  # --cluster slurm: dask-jobqueue submits the workers as SLURM jobs
        with slurm_cluster(cluster_config) as cluster, Client(cluster) as client:
            client.wait_for_workers(1, timeout=worker_timeout)
            yield client, None
        return
    if scheduler or scheduler_file:
        where = scheduler or scheduler_file
        try:
            # Dask's own connect timeout (distributed.comm.timeouts.connect, 30 s unless configured).
            client = Client(address=scheduler, scheduler_file=scheduler_file)
        except TypeError as error:  # distributed's way of saying a tls:// address got no certificates
            if "TLS" not in str(error):
                raise
            raise UsageError(
                f"the Dask scheduler at {where} speaks TLS and no client certificate is configured; set "
                "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ..._CLIENT__CERT and ..._CLIENT__KEY (see docs/cluster.md)"
            ) from None
        except (OSError, TimeoutError, ValueError) as error:
            raise UsageError(f"cannot reach the Dask scheduler at {where}: {error}") from None
        with client:
            yield client, None
        return
    plan = plan or machine_plan(workers, backend, quantize, in_process)
    cluster_for_plan = in_process_cluster if plan.in_process else embedded_cluster
    with cluster_for_plan(plan, dashboard_address) as cluster, Client(cluster) as client:
        try:
            client.wait_for_workers(1, timeout=WORKER_START_TIMEOUT)
        except TimeoutError:
            raise BatchclfError(
                f"no worker of the embedded cluster started within {WORKER_START_TIMEOUT} s; the messages above say why"
            ) from None
        yield client, plan


def tls_environment(ca: str, cert: str, key: str) -> dict[str, str]:
    """Dask config, as environment variables, that makes every role of a process speak TLS with ``cert``
    and ``key`` and trust ``ca`` (each a file path or PEM text).

    The environment of a process is readable only by its user, unlike its command line.
    """
    prefix = "DASK_DISTRIBUTED__COMM__"
    env = {f"{prefix}REQUIRE_ENCRYPTION": "True", f"{prefix}TLS__CA_FILE": ca}
    for role in ("CLIENT", "SCHEDULER", "WORKER"):
        env[f"{prefix}TLS__{role}__CERT"] = cert
        env[f"{prefix}TLS__{role}__KEY"] = key
    return env


def write_certificates(folder: str | os.PathLike) -> dict[str, str]:
    """A throw-away self-signed certificate and key for one cluster (what ``Security.temporary()`` makes
    in memory), written as ``tls.crt`` and ``tls.key`` to a new ``folder`` that only its owner can read.
    The folder must not exist: one someone else made in a shared place is refused, not trusted.

    Returns the environment that points a client at them. ``jobs/slurm/batchclf.sbatch`` uses it.
    """
    from pathlib import Path

    from distributed.security import Security

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700)
    security = Security.temporary()
    cert, key = folder / "tls.crt", folder / "tls.key"
    for path, text in ((cert, security.tls_ca_file), (key, security.tls_scheduler_key)):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as stream:
            stream.write(text)
    return tls_environment(str(cert), str(cert), str(key))


def dask_setup(worker) -> None:
    """Worker preload: ignore SIGINT, so a Ctrl-C sent to every process (systemd's KillSignal, a
    terminal) stops the run through the driver alone, without a traceback from each worker; send
    warnings to the driver, which says each kind once in the run's log (``runlog``); keep pyarrow from
    importing pandas (``store.parquet.answer_arrows_pandas_probe``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forward_warnings(worker)
    answer_arrows_pandas_probe()


@contextlib.contextmanager
def embedded_cluster(plan: WorkerPlan, dashboard_address: str | None = DEFAULT_DASHBOARD_ADDRESS):
    """A scheduler in this process and ``plan.workers`` nanny processes, on loopback, over TLS.

    On a GPU plan each worker sees only its own device. ``dashboard_address`` None: no dashboard.
    """
    import dask
    from distributed import Scheduler, SpecCluster
    from distributed.security import Security

    security = Security.temporary()
    base_env = {
        **os.environ,
        **tls_environment(security.tls_ca_file, security.tls_worker_cert, security.tls_worker_key),
        "DASK_LOGGING__DISTRIBUTED": "critical",  # a heartbeat lost while closing under load is no error of the run
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }
    names_and_env = gpu_worker_env(plan) if plan.gpus else {f"cpu{i}": {} for i in range(plan.workers)}
    nanny = {
        "nthreads": 1,
        "host": LOOPBACK,
        "dashboard_address": f"{LOOPBACK}:0",
        "memory_limit": max(WORKER_MEMORY_BYTES, total_memory() // max(1, plan.workers)),
        "silence_logs": logging.ERROR,
        "death_timeout": 60,
        "preload": [__name__, *dask.config.get("distributed.worker.preload", [])],  # and the user's own
    }
    workers = {
        name: {"cls": NannyProcess, "options": {"options": nanny, "env": {**base_env, **env}}}
        for name, env in names_and_env.items()
    }
    scheduler_options = {
        "host": LOOPBACK,
        "port": 0,
        "protocol": "tls",
        "security": security,
        **_scheduler_dashboard(dashboard_address),
    }
    no_workers_timeout = dask.config.get("distributed.scheduler.no-workers-timeout", None) or NO_WORKERS_TIMEOUT
    with (
        dask.config.set({"distributed.scheduler.no-workers-timeout": no_workers_timeout}),  # read as it starts
        SpecCluster(
            workers=workers,
            scheduler={"cls": Scheduler, "options": scheduler_options},
            security=security,
            silence_logs=logging.CRITICAL,  # failures reach the run through its futures; log lines are noise
        ) as cluster,
    ):
        _close_http_server(cluster, dashboard_address)
        yield cluster


def _scheduler_dashboard(dashboard_address: str | None) -> dict:
    """The scheduler's dashboard options. Without a dashboard its HTTP server (health and metrics pages)
    still starts, on a free loopback port rather than on 8787, and is closed at once (``_close_http_server``)."""
    if dashboard_address is None:
        return {"dashboard": False, "dashboard_address": f"{LOOPBACK}:0"}
    return {"dashboard": True, "dashboard_address": dashboard_address}


def _close_http_server(cluster, dashboard_address: str | None) -> None:
    """No dashboard: nothing of the scheduler's listens on HTTP either."""
    if dashboard_address is None:
        cluster.scheduler.http_server.stop()
        cluster.scheduler.services.pop("dashboard", None)


# The in-process cluster shares its cores with the scoring: no statistical profiler sampling the worker's
# threads every 10 ms, one look at the process's CPU and memory every 2 s instead of two every 0.5 s, and
# one event-loop latency check a second instead of fifty for each of the scheduler and the worker (measured:
# Dask's event-loop thread took 0.38-0.42 s of CPU in a 12 s run of 1,000 images, 0.14-0.15 s with it).
# A loop blocked longer than ``distributed.admin.tick.limit`` (3 s) is still reported.
IN_PROCESS_DASK_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.system-monitor.disk": False,
    "distributed.admin.tick.interval": "1s",
}


@contextlib.contextmanager
def in_process_cluster(plan: WorkerPlan, dashboard_address: str | None = DEFAULT_DASHBOARD_ADDRESS):
    """A scheduler and one worker in this process, over ``inproc://``: nothing to start, nothing listening
    but the dashboard (and the worker's health page, on loopback). The worker runs ``IN_PROCESS_TASKS``
    tasks at a time; its memory is the job's. Dask's own monitoring is cut down (``IN_PROCESS_DASK_CONFIG``):
    the dashboard's Profile page stays empty."""
    import dask
    from distributed import Scheduler, Worker

    inproc = {"protocol": "inproc://"}
    worker = {
        **inproc,
        "nthreads": IN_PROCESS_TASKS,
        "memory_limit": 0,  # no spilling or pausing: a task's result is one shard's rows
        "dashboard": False,
        "dashboard_address": f"{LOOPBACK}:0",
    }
    with (
        dask.config.set(IN_PROCESS_DASK_CONFIG),
        InProcessCluster(
            dashboard_host=(dashboard_address or "").rpartition(":")[0] or socket.gethostname(),
            workers={"in-process": {"cls": Worker, "options": worker}},
            scheduler={"cls": Scheduler, "options": {**inproc, **_scheduler_dashboard(dashboard_address)}},
            silence_logs=logging.CRITICAL,
        ) as cluster,
    ):
        _close_http_server(cluster, dashboard_address)
        yield cluster


class InProcessCluster(SpecCluster):
    """A ``SpecCluster`` whose dashboard link names the host the dashboard listens on (Dask would take the
    host of the ``inproc://`` address, which the dashboard does not listen on)."""

    def __init__(self, *args, dashboard_host: str, **kwargs):
        self.dashboard_host = dashboard_host
        super().__init__(*args, **kwargs)

    @property
    def dashboard_link(self) -> str:
        from distributed.utils import format_dashboard_link

        port = self.scheduler_info.get("services", {}).get("dashboard")
        return format_dashboard_link(self.dashboard_host, port) if port else ""


class NannyProcess(ProcessInterface):
    """A Dask nanny, and the worker it starts, as a child process in a session of its own."""

    def __init__(self, scheduler: str, name: str, options: dict, env: dict[str, str]) -> None:
        super().__init__(scheduler=scheduler, name=name)
        self.scheduler, self.name, self.options, self.env = scheduler, name, options, env
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        spec = {"cls": "distributed.Nanny", "opts": {**self.options, "name": self.name}}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "distributed.cli.dask_spec",
            self.scheduler,
            "--spec",
            json.dumps(spec),
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        await super().start()

    async def close(self) -> None:
        """Ask the nanny to stop its worker (it tells the scheduler, so nothing logs a broken connection);
        kill its process group if it has not stopped within ``NANNY_STOP_TIMEOUT``."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), NANNY_STOP_TIMEOUT)
            except asyncio.TimeoutError:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # its session: the nanny and the worker it spawned
            await self.process.wait()
        await super().close()


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
