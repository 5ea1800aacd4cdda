from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"test images not found at {DATASETS}")
    return DATASETS


@pytest.fixture(scope="module")
def local_cluster():
    """A two-worker cluster shared by a module's tests that attach with --scheduler."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield cluster, client


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batchclf", *args], capture_output=True, text=True, timeout=timeout)


def save_image(path: Path, size=(64, 48), color=(200, 30, 30), mode="RGB", **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **params)
    return path
