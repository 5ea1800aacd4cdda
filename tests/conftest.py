from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

# The test images, kept in the repository (tests/data/README.md says where they come from).
DATASETS = Path(__file__).resolve().parent / "data"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite reads messages in their plain look, whatever stderr is; tests/integration/test_logs.py runs without it.
os.environ.setdefault("BATCHCLF_LOG_FORMAT", "plain")

# The test run's own model cache, set at import so that every CLI subprocess and Dask worker inherits it:
# a test never passes against a converted model left in the user's ~/.cache/batchclf by older code.
# Under pytest-xdist the controller makes it and its workers (started after this import, with its
# environment) share it, so the model is converted once per run, not once per worker: the converter's
# file lock and atomic write make concurrent first uses safe. The controller removes it at exit.
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("BATCHCLF_TEST_CACHE"):
    TEST_CACHE = os.environ["BATCHCLF_TEST_CACHE"]
else:
    TEST_CACHE = tempfile.mkdtemp(prefix="batchclf-test-cache-")
    os.environ["BATCHCLF_TEST_CACHE"] = TEST_CACHE
    atexit.register(shutil.rmtree, TEST_CACHE, ignore_errors=True)
os.environ["BATCHCLF_CACHE"] = TEST_CACHE


def require_datasets(folder: Path = DATASETS) -> Path:
    """The test images. Missing, they fail the tests that need them: a suite that skipped most of itself
    would look like a pass."""
    if not folder.is_dir():
        pytest.fail(f"test images not found at {folder}; they are part of the repository: run the tests from a clone")
    return folder


@pytest.fixture(scope="session")
def datasets() -> Path:
    return require_datasets()


@pytest.fixture(scope="module")
def local_cluster():
    """A two-worker cluster shared by a module's tests that attach with --scheduler."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cluster:
        with Client(cluster) as client:
            yield cluster, client


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m batchclf ARGS``; ``env`` adds to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "batchclf", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )


def save_image(path: Path, size=(64, 48), color=(200, 30, 30), mode="RGB", **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **params)
    return path


S3_SECRET = "fake-secret-Zq81xYvP"  # the secret key given to the S3 server: no output or message may show it


@contextlib.contextmanager
def s3_server():
    """moto's standalone S3 server on a free local port, reached through s3fs like a real endpoint.

    Yields a boto3 client (to set up and inspect buckets behind the code's back) and the
    ``--storage-options`` that reach the server, as a dict.
    """
    # Imported, not skipped when missing: the test extra installs them, and a suite that quietly skipped
    # every bucket test would look like a pass.
    import boto3
    import moto.server as moto_server
    import s3fs  # noqa: F401  (what the code under test reaches the server through)

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="key",
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )
        yield client, {"endpoint_url": endpoint, "key": "key", "secret": S3_SECRET}
    finally:
        server.stop()


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    """Whether a test uses a fixture built once for its module (a model trained, a cluster started, a tree
    scored): such a module runs on one pytest-xdist worker, so that the fixture is still built once."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for definitions in info.name2fixturedefs.values():
        for definition in definitions:
            if definition.scope in ("module", "class", "package"):
                return True
            if definition.scope == "session" and Path(definition.baseid or ".").name.startswith("test_"):
                return True  # a session fixture of one test module (a module that shares it with none)
    return False


MAX_WORKERS = 4  # each worker starts its own processes, clusters and TensorFlow: more would cost memory, not time


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the default in pyproject.toml): one pytest-xdist worker per core, at most ``MAX_WORKERS``.
    The tests start processes and clusters that use every core themselves, so more workers than cores only
    take turns (measured on 2 cores: 10.7-11.7 minutes with two workers, 11.6 with three, 24.1 with none)."""
    from batchclf.machine import available_cores  # affinity and cgroup quota, as the worker plan counts them

    return max(1, min(MAX_WORKERS, available_cores()))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A module that names groups of its own (tests/integration/test_train.py) keeps only those: its other
    # tests build their module fixtures again on whichever worker runs them.
    grouped_by_hand = {item.module.__name__ for item in items if item.get_closest_marker("xdist_group")}
    for item in items:
        if item.module.__name__ not in grouped_by_hand and _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # Largest groups first, single integration tests next, the unit tier last: a group runs on one worker,
    # so one started near the end would leave the other workers idle while it finishes.
    groups = Counter(_group(item) for item in items)

    def order(item: pytest.Item) -> tuple[int, bool]:
        group = _group(item)
        return -groups[group] if group else 0, "unit" in item.path.parts

    items.sort(key=order)


def _group(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    return (marker.args[0] if marker.args else marker.kwargs.get("name")) if marker else None
