"""The nightly job at scale: `batchclf run TREE OUT --incremental` at one and ten million files.

For each N: a tree of N hard links to the 200 flowers_small images (1,000 folders), and last night's
output for it, made without scoring N images: one real `batchclf run` on the 200 source images, its
rows replicated to one a file of the tree (path, size and mtime of that file, everything else copied,
the real schema and metadata). Then, each in its own subprocess, timed and with the driver's peak
RSS (psutil, every 20 ms, the driver and its folder-listing helpers summed, see `driver_rss`; and the rusage maximum,
which includes the workers when a cluster starts):
discovery alone, `--incremental` with nothing changed, and `--incremental` after 0.1 % of the files
were added, changed (linked to another image) and deleted, a third each; the incremental counts in
the run's summary are checked against what was done.

    python benchmarks/nightly.py                          # N = 1,000,000 and 10,000,000 (tens of minutes)
    python benchmarks/nightly.py --files 20000            # to check that it works
    python benchmarks/nightly.py --files 1000000 --keep --tmp /scratch

Results: benchmarks/results/nightly-<N>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from throughput import forked_job  # benchmarks/ is on the path when a script there runs

import batchclf.discover as discover
from batchclf import __version__
from batchclf.discover import walk_images
from batchclf.fsutil import change_marks
from batchclf.paths import path_text

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "datasets" / "flowers_small"
RESULTS = REPO / "benchmarks" / "results"
FOLDERS = 1000
BATCH_ROWS = 100_000
POLL_SECONDS = 0.02
METADATA_KEY = b"batchclf"
DISCOVERY = """
import sys, time
from pathlib import Path
import batchclf.discover as discover
started = time.perf_counter()
if sys.argv[2] == "discover_images":
    files = len(discover.discover_images(Path(sys.argv[1]))[1])
else:
    files = sum(len(batch) for batch in discover.list_images(Path(sys.argv[1])).batches)
print(files, time.perf_counter() - started)
"""


class Tree:
    """N hard links to the source images, ``d0000/f000000.jpg`` onwards, in output (path text) order."""

    def __init__(self, root: Path, files: int, sources: list[str]):
        self.root, self.files, self.sources = root, files, sources
        self.suffixes = [os.path.splitext(source)[1].lower() for source in sources]
        self.per_folder = -(-files // FOLDERS)
        self.folders = -(-files // self.per_folder)

    def name(self, index: int) -> str:
        suffix = self.suffixes[index % len(self.sources)]
        return f"d{index // self.per_folder:04d}/f{index % self.per_folder:06d}{suffix}"

    def build(self) -> None:
        source_folder = os.open(SOURCE, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for folder in range(self.folders):
                path = self.root / f"d{folder:04d}"
                path.mkdir()
                target_folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    for index in range(folder * self.per_folder, min(self.files, (folder + 1) * self.per_folder)):
                        name = self.name(index).rsplit("/", 1)[1]
                        source = self.sources[index % len(self.sources)]
                        os.link(source, name, src_dir_fd=source_folder, dst_dir_fd=target_folder)
                finally:
                    os.close(target_folder)
        finally:
            os.close(source_folder)


def _reuse_key(root: Path, output: Path) -> str:
    """The reuse key a run with the benchmark's options computes for this tree (it covers the input root)."""
    from batchclf.config import RunConfig
    from batchclf.models.registry import resolve_model
    from batchclf.plan import reuse_key

    config = RunConfig(input=root, output=output, incremental=True)
    return reuse_key(resolve_model(config.model), config, str(root.resolve()))


def build_previous_output(real_output: Path, tree: Tree, output: Path) -> None:
    """Last night's output for ``tree``: the real row of each file's source image, streamed in row groups."""
    real = pq.read_table(real_output)
    row_of = {path: row for row, path in enumerate(real.column("path").to_pylist())}
    source_rows = np.array([row_of[path_text(s)] for s in tree.sources])
    stats = [os.stat(SOURCE / s) for s in tree.sources]
    sizes = np.array([s.st_size for s in stats], dtype=np.int64)
    mtimes = np.array([s.st_mtime_ns // 1000 for s in stats], dtype=np.int64)
    marks = [change_marks(s) for s in stats]  # what the run records beside size and mtime
    inodes = pa.array([inode for inode, _ in marks], pa.int64())
    ctimes = pa.array([ctime for _, ctime in marks], pa.int64())
    source_ok = np.array([status == "ok" for status in real.column("status").to_pylist()])[source_rows]
    copies = tree.files // len(tree.sources) + (np.arange(len(tree.sources)) < tree.files % len(tree.sources))
    ok = int(copies[source_ok].sum())
    metadata = json.loads(real.schema.metadata[METADATA_KEY])
    metadata.update(input_root=str(tree.root.resolve()), files=tree.files, ok=ok, errors=tree.files - ok)
    metadata.update(scored=tree.files, reuse_key=_reuse_key(tree.root, output))
    schema = real.schema.with_metadata({**real.schema.metadata, METADATA_KEY: json.dumps(metadata).encode()})
    with pq.ParquetWriter(output, schema, compression="zstd") as writer:
        for start in range(0, tree.files, BATCH_ROWS):
            indices = np.arange(start, min(tree.files, start + BATCH_ROWS))
            sources = indices % len(tree.sources)
            rows = real.take(pa.array(source_rows[sources]))
            replaced = {
                "path": pa.array([path_text(tree.name(int(i))) for i in indices], pa.string()),
                "bytes": sizes[sources],
                "mtime": mtimes[sources],
                "inode": inodes.take(pa.array(sources)),
                "ctime": ctimes.take(pa.array(sources)),
            }
            for column, values in replaced.items():
                position = schema.get_field_index(column)
                field = schema.field(position)
                values = values.cast(field.type) if isinstance(values, pa.Array) else pa.array(values, field.type)
                rows = rows.set_column(position, field, values)
            writer.write_table(rows)


def change_files(tree: Tree, fraction: float, seed: int = 0) -> dict:
    """Add, change and delete ``fraction`` of the files, a third each; return the counts a run should report."""
    count = round(tree.files * fraction)
    new, changed = count // 3, count // 3
    deleted = count - new - changed
    rng = random.Random(seed)
    picked = rng.sample(range(tree.files), changed + deleted)
    sizes = [os.stat(SOURCE / s).st_size for s in tree.sources]
    for index in picked[:changed]:  # relinked to an image of another size; touching would change every link
        source = index % len(tree.sources)
        other = next(o for o in range(source + 1, source + len(sizes)) if sizes[o % len(sizes)] != sizes[source])
        path = tree.root / tree.name(index)
        path.unlink()
        os.link(SOURCE / tree.sources[other % len(sizes)], path)
    for index in picked[changed:]:
        (tree.root / tree.name(index)).unlink()
    for number in range(new):
        name = f"d{rng.randrange(tree.folders):04d}/n{number:06d}{tree.suffixes[number % len(sizes)]}"
        os.link(SOURCE / tree.sources[number % len(sizes)], tree.root / name)
    reused = tree.files - changed - deleted
    return {"reused": reused, "scored": new + changed, "new": new, "changed": changed, "dropped": deleted}


def _listing_helpers_rss(driver) -> int:
    """The driver's folder-listing helper processes count as the driver (Dask workers do not)."""
    total = 0
    for child in driver.children():
        try:
            if "serve_listings" in " ".join(child.cmdline()):
                total += child.memory_info().rss
        except psutil.Error:
            continue
    return total


def driver_rss(command) -> int:
    """The driver's memory: the process that runs the job, with its listing helpers, at full RSS.

    `batchclf run` runs the job in a child it forked (same command line) and only watches it: that
    watching process then adds its private memory (USS), not the pages it shares with the job.
    """
    job = forked_job(command)
    if job is None:
        return command.memory_info().rss + _listing_helpers_rss(command)
    return job.memory_info().rss + _listing_helpers_rss(job) + command.memory_full_info().uss


def measured(command: list[str], logs: Path) -> dict:
    """Run ``command``; wall time, exit code, peak RSS polled with psutil, and the rusage maximum from wait4."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "w") as stdout, open(logs / "stderr", "w") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        peak, finished = [0], threading.Event()

        def poll() -> None:
            watched = psutil.Process(process.pid)
            while not finished.is_set():
                try:
                    peak[0] = max(peak[0], driver_rss(watched))
                except psutil.Error:
                    return
                finished.wait(POLL_SECONDS)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not every child's so far
        seconds = time.perf_counter() - started
        finished.set()
        poller.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "seconds": round(seconds, 2),
        "exit_code": process.returncode,
        "peak_rss_mb": round(peak[0] / 2**20, 1),
        "rusage_max_rss_mb": round(usage.ru_maxrss / 2**10, 1),
        "stdout": (logs / "stdout").read_text(),
    }
    if process.returncode != 0:
        print(f"{' '.join(command)} failed with exit code {process.returncode}:", file=sys.stderr)
        print((logs / "stderr").read_text(), file=sys.stderr)
    return result


def incremental_run(tree: Tree, output: Path, logs: Path, expected: dict) -> dict:
    summary_file = logs / "summary.json"
    command = [sys.executable, "-m", "batchclf", "run", str(tree.root), str(output), "--incremental", "--no-progress"]
    result = measured([*command, "--summary", str(summary_file)], logs)
    del result["stdout"]
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    counts = summary.get("incremental") or {}
    result["incremental"] = counts
    result["expected"] = expected
    result["counts_as_expected"] = all(counts.get(key) == value for key, value in expected.items())
    if summary.get("shards") != 0:  # a cluster started: its workers are in the rusage maximum too
        result["rusage_max_rss_mb"] = None
    return result


def discovery(tree: Tree, logs: Path, function: str) -> dict:
    result = measured([sys.executable, "-c", DISCOVERY, str(tree.root), function], logs)
    printed = result.pop("stdout").split()
    if result["exit_code"] == 0:
        result.update(files=int(printed[0]), seconds_in_process=round(float(printed[1]), 2))
    return result


def benchmark(files: int, fraction: float, work: Path, real_output: Path, sources: list[str]) -> dict:
    tree = Tree(work / f"tree-{files}", files, sources)
    tree.root.mkdir()
    output = work / f"out-{files}.parquet"
    started = time.perf_counter()
    tree.build()
    tree_seconds = time.perf_counter() - started
    print(f"{files:,} files: tree of hard links built in {tree_seconds:.1f} s", flush=True)
    started = time.perf_counter()
    build_previous_output(real_output, tree, output)
    output_seconds = time.perf_counter() - started
    print(f"{files:,} files: last night's output ({output.stat().st_size / 2**20:.0f} MB) in {output_seconds:.1f} s")
    result = {"files": files, "tree_seconds": round(tree_seconds, 1), "output_seconds": round(output_seconds, 1)}
    functions = ["discover_images", "list_images"] if hasattr(discover, "list_images") else ["discover_images"]
    result["discovery"] = {name: discovery(tree, work / f"logs-{files}/{name}", name) for name in functions}
    unchanged = {"reused": files, "scored": 0, "new": 0, "changed": 0, "dropped": 0}
    result["unchanged"] = incremental_run(tree, output, work / f"logs-{files}/unchanged", unchanged)
    expected = change_files(tree, fraction)
    result["changed_fraction"] = fraction
    result["changed"] = incremental_run(tree, output, work / f"logs-{files}/changed", expected)
    return result


def print_table(result: dict) -> None:
    def mb(value):
        return "-" if value is None else f"{value:,.0f}"

    print(f"\n{str(result['files']) + ' files':<28} wall s   peak RSS MB   rusage MB   exit   counts")
    rows = [(f"discovery ({name})", r) for name, r in result["discovery"].items()]
    rows += [("nothing changed", result["unchanged"]), (f"{result['changed_fraction']:.1%} changed", result["changed"])]
    for label, r in rows:
        counts = "" if "expected" not in r else ("as expected" if r["counts_as_expected"] else "WRONG")
        if counts == "WRONG":
            counts += f": got {r['incremental']}, expected {r['expected']}"
        line = f"{label:<28} {r['seconds']:>6.1f}   {mb(r['peak_rss_mb']):>11}   {mb(r['rusage_max_rss_mb']):>9}"
        print(f"{line}   {r['exit_code']:>4}   {counts}")


def machine() -> dict:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "batchclf": __version__,
        "commit": commit.stdout.strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, nargs="+", action="extend", help="tree sizes (default 1e6 1e7)")
    parser.add_argument("--changed-fraction", type=float, default=0.001, help="share of files added/changed/deleted")
    parser.add_argument("--keep", action="store_true", help="keep the trees and outputs")
    parser.add_argument("--tmp", type=Path, help="folder to build in (default: the system's temporary folder)")
    args = parser.parse_args()
    sizes = args.files or [1_000_000, 10_000_000]
    if min(sizes) < 1:
        parser.error("--files must be positive")
    if not 0 <= args.changed_fraction < 1:
        parser.error("--changed-fraction must be at least 0 and below 1")
    if not SOURCE.is_dir():
        parser.error(f"{SOURCE} is missing; the tree is made of its images")
    if args.tmp and not args.tmp.is_dir():
        parser.error(f"--tmp {args.tmp} is not a folder")
    sources = list(walk_images(SOURCE))
    work = Path(tempfile.mkdtemp(prefix="batchclf-nightly-", dir=args.tmp))
    try:
        real_output = work / "real.parquet"
        real_run = [sys.executable, "-m", "batchclf", "run", str(SOURCE), str(real_output), "--no-progress"]
        if measured(real_run, work / "logs-real")["exit_code"] != 0:
            sys.exit(f"the real run on {SOURCE} failed")
        RESULTS.mkdir(parents=True, exist_ok=True)
        for files in sizes:
            result = {"machine": machine(), **benchmark(files, args.changed_fraction, work, real_output, sources)}
            print_table(result)
            (RESULTS / f"nightly-{files}.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
