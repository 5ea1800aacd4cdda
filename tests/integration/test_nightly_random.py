"""Randomised nightly rounds: after every round of changes the incremental output equals a fresh full
run row for row, and so does a run killed at a random moment and then resumed."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_nightly_rows import DROP_READ_OVERRIDE

from batchclf.errors import EXIT_INCOMPLETE

ROUNDS = 4
NAMES = ["plain", "with space", "caf\u00e9", "back\\slash", os.fsdecode(b"odd\xff"), "x_\\xff", "dash-", "dot.s"]
FOLDERS = ["", "a/", "a/deep/", os.fsdecode(b"b\xe9/"), "c.d/"]


def _command(images: Path, output: Path, *options: str) -> list[str]:
    return [
        *DROP_READ_OVERRIDE,
        sys.executable,
        "-m",
        "batchclf",
        "run",
        str(images),
        str(output),
        "--incremental",
        "--no-progress",
        "--shard-size",
        "4",
        *options,
    ]


def _run(images: Path, output: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(images, output), capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, EXIT_INCOMPLETE), result.stderr
    return result


def _table(path: Path) -> pa.Table:
    return pq.read_table(path).replace_schema_metadata(None)


def _unscored(table: pa.Table) -> pa.Table:
    """Without scored_at: two runs score the same file at different times (kept rows are compared with it)."""
    return table.drop_columns(["scored_at"])


def _assert_same_rows(got: pa.Table, want: pa.Table, what: str) -> None:
    assert got.schema == want.schema, f"{what}: schemas differ"
    got_rows, want_rows = got.to_pylist(), want.to_pylist()
    assert [r["path"] for r in got_rows] == [r["path"] for r in want_rows], f"{what}: other paths"
    for mine, theirs in zip(got_rows, want_rows):
        assert mine == theirs, f"{what}: rows differ"


class Tree:
    """A folder of images that a seeded random generator changes the way a night does."""

    def __init__(self, root: Path, sources: list[Path], rng: random.Random):
        self.root, self.sources, self.rng = root, sources, rng
        self.locked: list[Path] = []  # chmod 0 this round
        self.counter = 0

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file() and p not in self.locked)

    def add(self) -> None:
        folder = self.root / self.rng.choice(FOLDERS)
        folder.mkdir(parents=True, exist_ok=True)
        self.counter += 1
        name = f"{self.rng.choice(NAMES)}{self.counter}{self.rng.choice(['.jpg', '.JPG', '.png'])}"
        shutil.copy(self.rng.choice(self.sources), folder / name)

    def change(self, path: Path) -> None:
        size = path.stat().st_size
        other = self.rng.choice([s for s in self.sources if s.stat().st_size != size])
        shutil.copy(other, path)

    def night(self) -> None:
        for path in self.locked:  # last round's unreadable files and folders are readable again
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.locked = []
        for _ in range(self.rng.randint(2, 5)):
            self.add()
        files = self.files()
        self.rng.shuffle(files)
        for path in files[:2]:
            self.change(path)
        for path in files[2:4]:
            path.unlink()
        for path in files[4:6]:
            path.rename(path.with_name("renamed-" + path.name))
        for path in files[6:7]:
            path.chmod(0)
            self.locked.append(path)
        folders = [p for p in self.root.rglob("*") if p.is_dir() and any(p.iterdir())]
        if folders and self.rng.random() < 0.6:
            folder = self.rng.choice(folders)
            folder.chmod(0)
            self.locked.append(folder)

    def restore(self) -> None:
        for path in self.locked:
            path.chmod(0o755 if path.is_dir() else 0o644)


def _kill_at_random_moment(images: Path, output: Path, rng: random.Random) -> None:
    """SIGKILL the command, here with a worker process of its own, at a random moment of its run (the
    other runs score in-process; a run with a worker process takes 3-6 s here)."""
    command = _command(images, output, "--workers", "1")
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.5, 6.0))
    driver.send_signal(signal.SIGKILL)
    driver.wait()


@pytest.mark.parametrize("seed", [7])
def test_random_nights_equal_full_runs_and_killed_runs_resume(datasets, tmp_path, seed):
    rng = random.Random(seed)
    sources = sorted((datasets / "food_toy_appliance").glob("*.jpg")) + sorted(
        (datasets / "imagenet_objects").glob("*.jpg")
    )
    images = tmp_path / "images"
    images.mkdir()
    tree = Tree(images, sources, rng)
    for _ in range(12):
        tree.add()
    nightly, previous = tmp_path / "nightly.parquet", None
    try:
        _run(images, nightly)
        for night in range(ROUNDS):
            before = tmp_path / f"before-{night}.parquet"
            shutil.copy(nightly, before)
            tree.night()
            incremental = _run(images, nightly)
            full = tmp_path / f"full-{night}.parquet"
            full.unlink(missing_ok=True)
            fresh = _run(images, full)
            assert incremental.returncode == fresh.returncode, (incremental.stderr, fresh.stderr)

            got = _table(nightly)
            checked = got.filter(pc.invert(got["unverified"]))
            _assert_same_rows(_unscored(checked), _unscored(_table(full)), f"night {night}, incremental and full run")
            previous = _table(before)
            kept = got.filter(got["unverified"])  # rows under an unreadable folder: last night's, as they were
            same_paths = previous.filter(pc.is_in(previous["path"], value_set=kept["path"]))
            _assert_same_rows(kept.drop_columns(["unverified"]), same_paths.drop_columns(["unverified"]), "kept rows")

            resumed = tmp_path / f"resumed-{night}.parquet"
            shutil.copy(before, resumed)
            _kill_at_random_moment(images, resumed, rng)
            _run(images, resumed)
            _assert_same_rows(_unscored(_table(resumed)), _unscored(got), f"night {night}, killed and resumed")
    finally:
        tree.restore()
