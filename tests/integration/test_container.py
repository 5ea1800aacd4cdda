"""The container image: `batchclf run` inside it gives the rows it gives outside.

Building the image takes minutes (the dependencies are installed and the built-in model converted),
so these tests run only with BATCHCLF_CONTAINER_TESTS=1. The image is tagged by a hash of its build
context and reused while that context is unchanged: a second run costs only the two scoring runs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import DATASETS, require_datasets, run_cli

from batchclf.writer import read_run_metadata

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "jobs" / "container" / "build-here.sh"
CONTAINERS_CONF = BUILD_SCRIPT.parent / "containers.conf"
DEBIAN_BASE = "localhost/debian-python:bookworm"
DEFAULT_BASE = "python:3.12-slim"
ENABLE = "BATCHCLF_CONTAINER_TESTS"

pytestmark = pytest.mark.skipif(
    os.environ.get(ENABLE) != "1",
    reason=f"builds a container image (minutes): {ENABLE}=1 python -m pytest tests/integration/test_container.py",
)


def context_files() -> list[Path]:
    """The files of the build context: what .containerignore lets in, caches left out."""
    files = [REPO / "Containerfile", REPO / ".containerignore"]
    for line in (REPO / ".containerignore").read_text().splitlines():
        if not line.startswith("!"):
            continue
        admitted = REPO / line[1:].strip().rstrip("/")
        found = [admitted] if admitted.is_file() else sorted(p for p in admitted.rglob("*") if p.is_file())
        files += [p for p in found if "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return files


def context_tag() -> str:
    digest = hashlib.sha256()
    for path in context_files():
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"localhost/batchclf:test-{digest.hexdigest()[:16]}"


def podman_command() -> list[str]:
    """podman with the settings of build-here.sh: runc, and no default ulimits."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman runc)")
    runc = shutil.which("runc") or shutil.which("runc", path="/usr/sbin:/usr/bin")
    if runc is None:
        pytest.skip("runc is not installed (apt-get install runc): build-here.sh runs podman with --runtime runc")
    return ["podman", "--runtime", "runc"]


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF))}
    result = subprocess.run([*podman_command(), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def require_base() -> None:
    """A base the build script can use: present, pullable, or made with debootstrap (as root)."""
    base = os.environ.get("BASE", DEFAULT_BASE)
    if image_exists(base) or image_exists(DEBIAN_BASE):
        return
    if shutil.which("debootstrap", path=f"{os.environ.get('PATH', '')}:/usr/sbin") and os.geteuid() == 0:
        return
    if podman("pull", base, check=False, timeout=300).returncode != 0:
        pytest.skip(f"no base image: {base} cannot be pulled and debootstrap is missing (apt-get install debootstrap)")


@pytest.fixture(scope="module")
def image() -> str:
    tag = context_tag()
    if not image_exists(tag):
        require_base()
        built = subprocess.run(["bash", str(BUILD_SCRIPT), tag], capture_output=True, text=True, timeout=3600)
        assert built.returncode == 0, f"build-here.sh failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
        # The images of earlier contexts are a few GB each: keep only this one.
        listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/batchclf").stdout.split()
        older = [name for name in listed if name.startswith("localhost/batchclf:test-") and name != tag]
        if older:
            podman("rmi", *older, check=False)
    return tag


def rows(output: Path) -> list[tuple]:
    """(path under the run's root, status, label, [(label, score)...]) of every row, by path."""
    table = pq.read_table(output, columns=["path", "status", "label", "topk"]).to_pylist()
    found = []
    for row in table:
        topk = [(entry["label"], entry["score"]) for entry in row["topk"] or []]
        found.append((row["path"], row["status"], row["label"], topk))
    return sorted(found)


def test_the_image_runs_as_a_user_and_starts_with_batchclf(image):
    config = podman("image", "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}", image)
    user, entrypoint = config.stdout.split(" ", 1)
    assert user.split(":")[0] not in ("", "0", "root"), user
    assert entrypoint.strip() == '["batchclf"]'
    version = podman("run", "--rm", "--network", "none", image, "--version")
    from batchclf import __version__

    assert version.stdout.strip() == f"batchclf {__version__}"


def test_run_in_the_container_gives_the_rows_of_a_run_outside(image, tmp_path):
    """The same images, the same rows: paths under the root, labels and top-k scores to 1e-5.

    The container has no network and a read-only root file system: the model must already be in the
    image's cache (a conversion would have to write there), and nothing may be fetched at run time.
    """
    images = require_datasets(DATASETS / "imagenet_objects")
    inside = tmp_path / "inside"
    inside.mkdir()
    inside.chmod(0o777)  # the image's user, not this one, writes there
    result = podman(
        "run", "--rm", "--network", "none", "--read-only",
        "-v", f"{images}:/data/images:ro", "-v", f"{inside}:/data/out",
        image, "run", "/data/images", "/data/out/predictions.parquet", "--no-progress",
        timeout=900,
    )  # fmt: skip
    assert (inside / "predictions.parquet").is_file(), result.stderr
    if os.geteuid() == 0:  # rootful podman: the container's user is the same number here
        assert (inside / "predictions.parquet").stat().st_uid != 0

    outside = run_cli("run", str(images), str(tmp_path / "outside.parquet"), "--no-progress")
    assert outside.returncode == 0, outside.stderr

    # Paths are stored under the run's root, which differs: /data/images inside, the folder here outside.
    assert read_run_metadata(inside / "predictions.parquet")["input_root"] == "/data/images"
    assert read_run_metadata(tmp_path / "outside.parquet")["input_root"] == str(images)
    container_rows, local_rows = rows(inside / "predictions.parquet"), rows(tmp_path / "outside.parquet")
    assert len(container_rows) >= 19 and all(row[1] == "ok" for row in container_rows)
    assert [row[:3] for row in container_rows] == [row[:3] for row in local_rows]
    for ours, theirs in zip(container_rows, local_rows):
        assert [label for label, _ in ours[3]] == [label for label, _ in theirs[3]], ours[0]
        assert [score for _, score in ours[3]] == pytest.approx([score for _, score in theirs[3]], abs=1e-5), ours[0]
