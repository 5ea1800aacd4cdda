"""How long the command line takes to answer before any work: ``--version`` and three usage errors.

Each command runs as a fresh process (what a user or cron pays), several times; the median and the
spread are printed, and whether Dask, TensorFlow or Arrow's compute kernels were imported on the way
(they must not be: a bad argument is refused before the machinery loads).

    python benchmarks/startup.py              # 5 runs of each
    python benchmarks/startup.py --runs 11
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("distributed", "tensorflow", "pyarrow.compute", "keras", "ai_edge_litert")
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['batchclf'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('batchclf', run_name='__main__')\n"
    "except SystemExit as exit:\n"
    "    code = exit.code\n"
    "heavy = [m for m in {heavy!r} if m in sys.modules]\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    "raise SystemExit(code)\n"
)


def commands(folder: Path) -> dict[str, list[str]]:
    images = folder / "images"
    images.mkdir(exist_ok=True)
    output = str(folder / "out.parquet")
    return {
        "--version": ["--version"],
        "run --batch-size 0": ["run", str(images), output, "--batch-size", "0"],
        "run with a missing input": ["run", str(folder / "missing"), output],
        "run --top-k x": ["run", str(images), output, "--top-k", "x"],
    }


def time_command(args: list[str], runs: int) -> dict:
    seconds, heavy, codes = [], set(), set()
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
        codes.add(done.returncode)
        for line in done.stderr.splitlines():
            if line.startswith("HEAVY=") and line[6:]:
                heavy.update(line[6:].split(","))
    return {
        "median_s": round(statistics.median(seconds), 3),
        "min_s": round(min(seconds), 3),
        "max_s": round(max(seconds), 3),
        "exit_codes": sorted(codes),
        "heavy_imports": sorted(heavy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of each command")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="batchclf-startup-") as folder:
        for name, command in commands(Path(folder)).items():
            results[name] = time_command(command, args.runs)
            found = results[name]
            heavy = ", ".join(found["heavy_imports"]) or "none"
            print(
                f"{name:28} median {found['median_s']:.3f} s  (min {found['min_s']:.3f}, max {found['max_s']:.3f}; "
                f"exit {found['exit_codes']}; heavy imports: {heavy})"
            )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
