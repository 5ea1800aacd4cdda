"""Randomised bad nights: a tree holding special files, hostile names and other formats in disguise,
files replaced in every way a copy tool replaces them, last night's output rewritten or damaged, and
a signal at a random moment. After each night the output equals a clean full run row for row (or the
run was refused with a non-zero exit and last night's output is intact); no process and no lock is
left; and nothing but the output's own names was created, changed or deleted."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

NIGHTS = 2
TIMEOUT = 600
HOSTILE_NAMES = ["-dash", "new\nline", "tab\there", "caf\u00e9", os.fsdecode(b"raw\xff"), "x" * 200, "sp ace", "a\\b"]
DISGUISES = {
    "postscript": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{ } loop\n",
    "pdf": b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n",
    "text": b"not an image at all\n",
    "empty": b"",
}


def _command(images: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "batchclf", "run", str(images), str(output), "--incremental", "--no-progress"]


def _run(images: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [*_command(images, output), "--dashboard-address", "127.0.0.1:0", "--shard-size", "4", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)


def _rows(path: Path) -> list[dict]:
    """The rows, without ``scored_at``: a reused row keeps the time it was first scored, a full run's is new."""
    return pq.read_table(path).replace_schema_metadata(None).drop_columns(["scored_at"]).to_pylist()


def _snapshot(folder: Path, own: set[str]) -> dict:
    """Every entry under ``folder`` but the output's own names: its kind, size, mtime and inode."""
    found = {}
    for entry in folder.rglob("*"):
        if entry.name in own:
            continue
        info = entry.lstat()
        found[entry] = (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino)
    return found


class Tree:
    """Images a seeded generator changes the way a bad night does."""

    def __init__(self, root: Path, sources: list[Path], rng: random.Random):
        self.root, self.sources, self.rng, self.count = root, sources, rng, 0

    def images(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_size)

    def add(self) -> None:
        self.count += 1
        folder = self.root / self.rng.choice(["", "cam0", "cam1/deep"])
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{self.rng.choice(HOSTILE_NAMES)}{self.count}{self.rng.choice(['.jpg', '.png', '.JPG'])}"
        shutil.copy(self.rng.choice(self.sources), folder / name)

    def plant(self) -> None:
        """Special files, and other formats under image names."""
        folder = self.root / "odd"
        folder.mkdir(exist_ok=True)
        self.count += 1
        os.mkfifo(folder / f"pipe{self.count}.jpg")
        (folder / f"zero{self.count}.jpg").symlink_to("/dev/zero")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(folder / f"sock{self.count}.png"))
        kind = self.rng.choice(sorted(DISGUISES))
        (folder / f"{kind}{self.count}.jpg").write_bytes(DISGUISES[kind])

    def replace(self, path: Path) -> None:
        """New content, the way a copy tool writes it: in place with the mtime set back (cp -p), or a
        new file renamed over it with the old mtime (rsync -a), or just new content."""
        info = path.stat()
        other = self.rng.choice([s for s in self.sources if s.read_bytes() != path.read_bytes()])
        how = self.rng.choice(["cp -p", "rsync -a", "plain"])
        if how == "rsync -a":
            partial = path.with_name(".tmp-" + str(self.count))
            shutil.copy(other, partial)
            os.utime(partial, ns=(info.st_atime_ns, info.st_mtime_ns))
            os.replace(partial, path)
        else:
            path.write_bytes(other.read_bytes())
            if how == "cp -p":
                os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))

    def night(self) -> None:
        for _ in range(self.rng.randint(2, 4)):
            self.add()
        self.plant()
        images = self.images()
        self.rng.shuffle(images)
        for path in images[:3]:
            self.replace(path)
        for path in images[3:4]:
            path.unlink()
        for path in images[4:5]:
            path.rename(path.with_name("renamed-" + path.name))


def _damage(output: Path, rng: random.Random) -> str:
    """Last night's output rewritten by another tool (sorted by score), or a page of it damaged."""
    how = rng.choice(["sorted by score", "damaged page", "untouched"])
    if how == "sorted by score":
        table = pq.read_table(output)
        pq.write_table(table.take(pc.sort_indices(table, [("score", "descending")])), output)
    elif how == "damaged page":
        column = pq.read_metadata(output).row_group(0).column(0)
        with open(output, "r+b") as stream:
            stream.seek(column.data_page_offset + column.total_compressed_size // 3)
            stream.write(b"\xff" * max(8, column.total_compressed_size // 3))
    return how


def _signal_at_random(images: Path, output: Path, rng: random.Random) -> int:
    number = rng.choice([signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL])
    process = subprocess.Popen(
        [*_command(images, output), "--dashboard-address", "127.0.0.1:0", "--shard-size", "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(rng.uniform(0.2, 6.0))
    process.send_signal(number)
    process.wait(timeout=TIMEOUT)
    return number


def _processes_of(output: Path) -> list:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if process.pid != os.getpid() and str(output) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmdline)
    return found


def _lock_is_free(output: Path) -> bool:
    lock = output.with_name(output.name + ".lock")
    if not lock.exists():
        return True
    with open(lock, "rb") as stream:
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


def _assert_left_alone(output: Path) -> None:
    """No process of the run is left, and its lock is free (a killed process takes a moment to go)."""
    deadline = time.monotonic() + 30
    while (_processes_of(output) or not _lock_is_free(output)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_of(output), f"processes left: {_processes_of(output)}"
    assert _lock_is_free(output), "the output's lock is still held"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 11])
def test_bad_nights_end_with_a_clean_full_run_or_a_refusal(datasets, tmp_path, seed):
    rng = random.Random(seed)
    sources = sorted((datasets / "food_toy_appliance").glob("*.jpg"))
    images, outputs, clean = tmp_path / "images", tmp_path / "out", tmp_path / "clean"
    for folder in (images, outputs, clean):
        folder.mkdir()
    tree = Tree(images, sources, rng)
    for _ in range(10):
        tree.add()
    output = outputs / "nightly.parquet"
    own = {output.name, output.name + ".lock", output.name + ".parts"}
    first = _run(images, output)
    assert first.returncode == 0, first.stderr
    for night in range(NIGHTS):
        tree.night()
        how = _damage(output, rng)
        before_tree, before_outputs = _snapshot(images, set()), _snapshot(outputs, own)
        number = _signal_at_random(images, output, rng)
        _assert_left_alone(output)
        result = _run(images, output)
        _assert_left_alone(output)
        assert _snapshot(images, set()) == before_tree, "the input was changed"
        assert _snapshot(outputs, own) == before_outputs, "something beside the output was made or changed"
        assert "Traceback" not in result.stderr, result.stderr

        reference = clean / f"night-{night}.parquet"
        full = _run(images, reference)
        assert full.returncode == 0, full.stderr
        assert result.returncode == 0, f"night {night} ({how}, {number.name}): {result.stderr}"
        got, want = _rows(output), _rows(reference)
        assert [r["path"] for r in got] == [r["path"] for r in want], f"night {night}: other paths ({how})"
        assert got == want, f"night {night}: rows differ from a full run ({how}, {number.name})"
        errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in got if r["status"] == "error"}
        assert any(e.startswith("not a regular file: a FIFO") for e in errors.values())
        assert any(e.startswith("not a regular file: a socket") for e in errors.values())
