"""Cold start: `batchclf run` on the six example images with an empty model cache, as on a fresh machine.

Each run gets a new, empty ``BATCHCLF_CACHE`` and a new output, as the first run on a machine, in a
fresh container or pod does. Measured per run: the wall time of the whole command, the CPU time of
its process tree (less sensitive to other work on the machine), and the run's own figures from
``--summary`` (the job's seconds; building the model, inference). The median of ``--runs`` is kept.
One more run with ``PYTHONPROFILEIMPORTTIME=1`` and ``BATCHCLF_DEBUG=1`` (every process of the run,
Dask workers included, prints its imports) shows whether TensorFlow or Keras was imported anywhere,
and which imports cost the most.

With ``--baseline REV`` the code of that commit (``git archive``) runs too, alternating with this
checkout's, so that both see the same load:

    python benchmarks/coldstart.py                        # this checkout, 3 runs
    python benchmarks/coldstart.py --baseline 0e80640     # before and after, 3 runs each
    python benchmarks/coldstart.py --runs 5 --workers 1   # worker processes instead of the in-process worker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLES = REPOSITORY / "examples" / "images"
HEAVY = ("tensorflow", "keras")
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)$")


def export(revision: str, folder: Path) -> Path:
    """The package as it was at ``revision``, unpacked beside the runs (no worktree is registered)."""
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", "--format=tar", revision, "batchclf"],
        capture_output=True,
        check=True,
    ).stdout
    target = folder / f"code-{revision}"
    target.mkdir()
    archive_path = folder / "code.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(target, filter="data")
    archive_path.unlink()
    return target


def run_once(code: Path, folder: Path, extra: list[str], profile_imports: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="run-", dir=folder))
    summary = work / "summary.json"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")])),
        "BATCHCLF_CACHE": str(work / "cache"),
    }
    if profile_imports:  # BATCHCLF_DEBUG: stderr stays open while TensorFlow and LiteRT load, so their imports show
        environment.update(PYTHONPROFILEIMPORTTIME="1", BATCHCLF_DEBUG="1")
    command = [sys.executable, "-m", "batchclf", "run", str(EXAMPLES), str(work / "out.parquet")]
    command += ["--no-progress", "--summary", str(summary), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # Run from the run's folder: ``python -m`` puts the working directory first on the path, and this
    # checkout's package must not shadow the baseline's.
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=work)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(summary.read_text())
    timings = report.get("task_seconds") or report.get("timings") or {}  # "timings" in summaries before run ids
    result = {
        "wall_s": round(wall, 2),
        "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 2),
        "job_s": report["seconds"],
        "model_build_s": round(timings.get("build", 0.0), 2),
        "inference_s": round(timings.get("inference", 0.0), 2),
        "ok": report["ok"],
        "cached_files": sorted(p.name for p in (work / "cache" / "litert").glob("*.tflite")),
    }
    if profile_imports:
        result.update(imports(done.stderr))
    return result


def imports(stderr: str) -> dict:
    """Heavy modules imported by any process of the run, and the slowest top-level imports (cumulative)."""
    heavy, top = set(), {}
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if not match:
            continue
        microseconds, indent, name = int(match.group(1)), match.group(2), match.group(3)
        if name in HEAVY:
            heavy.add(name)
        if len(indent) == 1:  # a top-level import of some process: its cumulative time
            top[name] = max(top.get(name, 0), microseconds)
    slowest = sorted(top.items(), key=lambda item: -item[1])[:8]
    return {
        "heavy_imports": sorted(heavy),
        "slowest_imports_s": {name: round(us / 1e6, 2) for name, us in slowest},
    }


def median(runs: list[dict], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each code (default 3)")
    parser.add_argument("--baseline", help="a git revision to run too, alternating with this checkout")
    parser.add_argument("--workers", type=int, help="pass --workers N (worker processes) to every run")
    parser.add_argument("--batch-size", type=int, help="pass --batch-size N to every run")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    extra = ["--workers", str(args.workers)] if args.workers else []
    extra += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    with tempfile.TemporaryDirectory(prefix="batchclf-coldstart-") as temporary:
        folder = Path(temporary)
        codes = {"current": REPOSITORY}
        if args.baseline:
            codes = {f"baseline {args.baseline}": export(args.baseline, folder), **codes}
        runs: dict[str, list[dict]] = {name: [] for name in codes}
        for index in range(args.runs):
            for name, code in codes.items():
                runs[name].append(run_once(code, folder, extra))
                print(f"{name:20} run {index + 1}: {json.dumps(runs[name][-1])}", flush=True)
        results = {
            "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
            "command": f"batchclf run examples/images OUT --no-progress {' '.join(extra)}".strip(),
        }
        for name, code in codes.items():
            probe = run_once(code, folder, extra, profile_imports=True)
            results[name] = {
                "median_wall_s": median(runs[name], "wall_s"),
                "median_cpu_s": median(runs[name], "cpu_s"),
                "median_model_build_s": median(runs[name], "model_build_s"),
                "median_inference_s": median(runs[name], "inference_s"),
                "runs": runs[name],
                "imports": {k: probe[k] for k in ("heavy_imports", "slowest_imports_s")},
            }
            found = results[name]
            print(
                f"{name:20} median wall {found['median_wall_s']:.2f} s, CPU {found['median_cpu_s']:.2f} s, "
                f"model build {found['median_model_build_s']:.2f} s, inference {found['median_inference_s']:.2f} s; "
                f"TensorFlow/Keras imported: {', '.join(probe['heavy_imports']) or 'no'}"
            )
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
