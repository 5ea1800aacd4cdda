"""The sbatch script, for real: a one-node SLURM on this machine runs it over the shared images.

Needs the Debian packages ``slurm-wlm`` and ``munge`` and root; elsewhere the test is skipped and
says what to install.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import DATASETS

from batchclf.writer import read_run_metadata

REPO = Path(__file__).resolve().parents[2]
SBATCH_SCRIPT = REPO / "jobs" / "slurm" / "batchclf.sbatch"
LOCAL_CLUSTER = REPO / "jobs" / "slurm" / "local-cluster.sh"
IMAGES = DATASETS / "imagenet_objects"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.skip(
            f"SLURM is not installed ({', '.join(missing)} missing); "
            "to run this test: apt-get install -y slurm-wlm munge"
        )
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM runs slurmd as root; run this test as root")
    folder = tmp_path_factory.mktemp("slurm")
    environment = {**os.environ, "SLURMCTLD_PORT": str(_free_port()), "SLURMD_PORT": str(_free_port())}
    started = subprocess.run(
        ["bash", str(LOCAL_CLUSTER), "start", str(folder)], env=environment, capture_output=True, text=True, timeout=120
    )
    try:
        assert started.returncode == 0, f"{started.stderr}\n{_logs(folder)}"
        environment = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
        yield folder, environment
    finally:
        subprocess.run(["bash", str(LOCAL_CLUSTER), "stop", str(folder)], timeout=60)


def _logs(folder: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}" for log in folder.glob("*.log"))


def _wait_for_job(job_id: str, environment: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "--noheader", "-j", job_id], env=environment, capture_output=True, text=True)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        if queued.returncode != 0 and "Invalid job id" in queued.stderr:
            return  # already purged from the controller
        time.sleep(1)
    subprocess.run(["scancel", job_id], env=environment)
    pytest.fail(f"SLURM job {job_id} still queued or running after {timeout} s")


def test_sbatch_script_classifies_the_shared_images(slurm, tmp_path):
    folder, environment = slurm
    output = tmp_path / "objects.parquet"
    environment = {**environment, "BATCHCLF_PYTHON": sys.executable, "BATCHCLF_SHARED": str(tmp_path)}
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--chdir={tmp_path}",
            f"--output={tmp_path}/job-%j.log",
            str(SBATCH_SCRIPT),
            str(IMAGES),
            str(output),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    assert job_id.isdigit(), submitted.stdout
    _wait_for_job(job_id, environment, timeout=400)

    log = (tmp_path / f"job-{job_id}.log").read_text(errors="replace")
    assert "batchclf run exited with 0" in log, f"{log[-4000:]}\n{_logs(folder)}"
    assert log.count("Register worker") == 2, "expected the two srun-started Dask workers"
    table = pq.read_table(output)
    expected = sorted(p.name for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(expected) == 19
    assert sorted(table["path"].to_pylist()) == expected
    assert set(table["status"].to_pylist()) == {"ok"}
    assert read_run_metadata(output)["files"] == 19
    assert not list(tmp_path.glob(".batchclf-scheduler-*.json")), "the scheduler file was not cleaned up"
    assert not (tmp_path / "objects.parquet.parts").exists()


def _jobqueue_config(folder: Path, job_name: str, jobs: int) -> Path:
    """A dask-jobqueue file for one-core worker jobs on the local SLURM, logs in ``folder``."""
    config = folder / "jobqueue.yaml"
    config.write_text(
        f"batchclf: {{jobs: {jobs}}}\n"
        f"jobqueue:\n  slurm:\n    name: {job_name}\n    cores: 1\n    processes: 1\n    memory: 2GiB\n"
        f"    python: {sys.executable}\n    walltime: '00:10:00'\n    log-directory: {folder}\n"
        f"    local-directory: {folder}\n    scheduler-options: {{host: 127.0.0.1, dashboard_address: ':0'}}\n"
    )
    return config


def test_jobqueue_slurm_cluster_runs_workers_as_jobs(slurm, tmp_path):
    """``cluster.slurm_cluster``: dask-jobqueue submits the workers as SLURM jobs; a run attaches to them."""
    pytest.importorskip("dask_jobqueue", reason="pip install 'batchclf[slurm]' to test the --cluster slurm path")
    from distributed import Client

    from batchclf.cluster import slurm_cluster

    folder, environment = slurm
    config = _jobqueue_config(tmp_path, "batchclf-test-worker", jobs=2)
    output = tmp_path / "objects.parquet"
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = environment["SLURM_CONF"]  # read by the sbatch dask-jobqueue calls
    try:
        with slurm_cluster(config) as cluster, Client(cluster) as client:
            client.wait_for_workers(2, timeout=180)
            queued = subprocess.run(
                ["squeue", "--noheader", "--format=%j"], env=environment, capture_output=True, text=True
            ).stdout.split()
            assert queued.count("batchclf-test-worker") == 2
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "batchclf",
                    "run",
                    str(IMAGES),
                    str(output),
                    "--scheduler",
                    cluster.scheduler_address,
                    "--incremental",
                    "--no-progress",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
    assert result.returncode == 0, result.stderr[-3000:]
    table = pq.read_table(output)
    assert table.num_rows == 19 and set(table["status"].to_pylist()) == {"ok"}


def test_cluster_slurm_option_runs_the_job_on_jobqueue_workers(slurm, tmp_path):
    """``batchclf run --cluster slurm --cluster-config FILE``: the run submits its own worker jobs."""
    pytest.importorskip("dask_jobqueue", reason="pip install 'batchclf[slurm]' to test the --cluster slurm path")
    _, environment = slurm
    config = _jobqueue_config(tmp_path, "batchclf-cli-worker", jobs=1)
    output = tmp_path / "objects.parquet"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchclf",
            "run",
            str(IMAGES),
            str(output),
            "--cluster",
            "slurm",
            "--cluster-config",
            str(config),
            "--no-progress",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pq.read_table(output)
    assert table.num_rows == 19 and set(table["status"].to_pylist()) == {"ok"}
